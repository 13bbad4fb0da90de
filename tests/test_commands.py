"""The conveniences: `imgcls datasets`, TensorBoard logging, export-templates' options from the command line,
an example in every --help, --version, shell completion, and the same flag names across commands."""

import json
import os
import subprocess
import sys

import pytest
import torch
import typer
import yaml
from torchvision.io import ImageReadMode, read_image

from conftest import plain, write_image_folder
from imgcls import __version__
from imgcls import checkpoint as ckpt
from imgcls.cli import app
from imgcls.data.registry import CIFAR10_CLASSES, DIGITS, FASHION_CLASSES, SPECS

EPOCHS = 2


# --- imgcls datasets ----------------------------------------------------------------------------

def datasets_json(cli, *args):
    result = cli("datasets", *args, "--json")
    assert result.exit_code == 0, plain(result.output)
    return {d["name"]: d for d in json.loads(result.stdout)["datasets"]}


def test_datasets_lists_every_named_dataset_with_its_facts(cli, tmp_path):
    got = datasets_json(cli, "--data-dir", tmp_path)
    assert list(got) == list(SPECS)
    assert got["mnist"]["classes"] == list(DIGITS) and got["mnist"]["shape"] == [1, 28, 28]
    assert (got["mnist"]["train"], got["mnist"]["test"]) == (60000, 10000)
    assert got["fashion-mnist"]["classes"] == list(FASHION_CLASSES)
    assert (got["cifar10"]["train"], got["cifar10"]["test"], got["cifar10"]["shape"]) == (50000, 10000, [3, 32, 32])
    assert got["cifar100"]["num_classes"] == 100 and (got["svhn"]["train"], got["svhn"]["test"]) == (73257, 26032)
    assert (got["stl10"]["train"], got["stl10"]["test"], got["stl10"]["shape"]) == (5000, 8000, [3, 96, 96])
    assert got["imagenet"]["num_classes"] == 1000 and got["imagenet"]["shape"] is None
    assert got["imagefolder"]["classes"] is None and got["imagefolder"]["train"] is None
    # an empty data dir holds nothing but the sample inside the package
    assert [name for name, d in got.items() if d["present"]] == ["cifar10-sample"]


def test_datasets_finds_torchvision_files(cli, mnist_root):
    got = datasets_json(cli, "--data-dir", mnist_root)
    assert "MNIST" in got["mnist"]["present"] and "FashionMNIST" in got["fashion-mnist"]["present"]
    assert got["cifar10"]["present"] is None and got["svhn"]["present"] is None


def test_datasets_finds_image_folder_copies(cli, tiny_cifar_session, tmp_path):
    got = datasets_json(cli, "--data-dir", tiny_cifar_session)
    assert "image folder" in got["cifar10"]["present"] and "image folder" in got["imagefolder"]["present"]
    assert got["mnist"]["present"] is None and got["stl10"]["present"] is None  # other classes
    assert got["imagenet"]["present"] is None  # 10 class folders are not ImageNet's 1000
    shapes = write_image_folder(tmp_path / "shapes", {"train": {"circle": [(8, 8)]}, "test": {"circle": [(8, 8)]}})
    got = datasets_json(cli, "--data-dir", shapes)
    assert got["cifar10"]["present"] is None and got["imagefolder"]["present"]
    only_train = write_image_folder(tmp_path / "half", {"train": {"circle": [(8, 8)]}})
    assert datasets_json(cli, "--data-dir", only_train)["imagefolder"]["present"] is None


def test_datasets_default_data_dir_and_table(cli, mnist_root, monkeypatch):
    monkeypatch.setenv("IMGCLS_DATA", str(mnist_root))
    result = cli("datasets")
    assert result.exit_code == 0, plain(result.output)
    text = plain(result.stdout)
    assert str(mnist_root) in text.replace("\n", "")
    for name in ("cifar10-sample", "mnist", "cifar100", "imagefolder", "60,000", "1×28×28", "yes", "no"):
        assert name in text
    assert json.loads(cli("datasets", "--json").stdout)["data_dir"] == str(mnist_root)


# --- TensorBoard --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tb_run(cli, tiny_cifar_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("tb") / "run"
    result = cli("train", "--dataset", "cifar10", "--data-dir", tiny_cifar_session, "--epochs", EPOCHS,
                 "--batch-size", 32, "--device", "cpu", "--out", out, "--tensorboard")
    assert result.exit_code == 0, plain(result.output)
    return out, result


def event_files(folder):
    return sorted(folder.glob("events.out.tfevents.*"))


def read_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_event_files_hold_the_scalars_and_templates(tb_run):
    out, result = tb_run
    assert len(event_files(out / "tensorboard")) == 1
    events = read_events(out / "tensorboard")
    tags = events.Tags()
    for tag in ("loss/train", "loss/val", "top1/train", "top1/val", "topk/val", "lr", "test/top1", "test/loss"):
        assert tag in tags["scalars"], tag
    assert {"templates/each", "templates/grid"} <= set(tags["images"])
    epochs = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    for tag, key in (("loss/train", "train_loss"), ("top1/val", "val_top1")):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([e[key] for e in epochs], rel=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert events.Scalars("test/top1")[0].value == pytest.approx(metrics["test"]["top1"], rel=1e-6)
    tiles, = events.Images("templates/each")  # the templates, enlarged to 128 pixels and tiled
    assert tiles.step == metrics["best_epoch"] and tiles.width % 128 == 0 and tiles.height % 128 == 0
    assert tiles.width * tiles.height >= 10 * 128 * 128
    grid, = events.Images("templates/grid")
    assert (grid.width, grid.height) == (1600, 210)  # templates.png
    assert "tensorboard --logdir" in plain(result.output)
    assert yaml.safe_load((out / "config.yaml").read_text())["output"]["tensorboard"] is True


def test_tensorboard_overwrite_starts_a_fresh_log_and_default_out(cli, tiny_cifar_session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ("train", "--dataset", "cifar10", "--data-dir", tiny_cifar_session, "--epochs", 1, "--device", "cpu",
            "--tensorboard", "--quiet")
    result = cli(*args)
    assert result.exit_code == 0, plain(result.output)
    run_dir = tmp_path / json.loads(result.stdout)["run_dir"]
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("cifar10-")
    assert len(event_files(run_dir / "tensorboard")) == 1
    again = cli(*args, "--out", run_dir, "--overwrite")
    assert again.exit_code == 0, plain(again.output)
    assert len(event_files(run_dir / "tensorboard")) == 1
    assert [e.step for e in read_events(run_dir / "tensorboard").Scalars("loss/train")] == [1]


def test_tensorboard_missing_is_a_user_error_before_anything_is_written(cli, tiny_cifar_session, tmp_path,
                                                                       monkeypatch, assert_user_error):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails, as when not installed
    result = cli("train", "--dataset", "cifar10", "--data-dir", tiny_cifar_session, "--epochs", 1, "--out",
                 tmp_path / "run", "--tensorboard")
    error = assert_user_error(result, "--tensorboard needs the tensorboard package")
    assert "pip install 'imgcls[tensorboard]'" in error
    assert not (tmp_path / "run").exists()


# --- export-templates' options ------------------------------------------------------------------

def test_export_templates_shared_scale(cli, tb_run, tmp_path):
    out, _ = tb_run
    result = cli("export-templates", out, "--out", tmp_path / "tpl", "--scale", "shared", "--size", 32,
                 "--space", "input", "--clip", 0)  # W itself, its full range
    assert result.exit_code == 0, plain(result.output)
    weights = ckpt.load(out / "best.safetensors").weight
    low, high = weights.min(), weights.max()
    images = [read_image(str(tmp_path / "tpl" / f"{name}.png"), mode=ImageReadMode.UNCHANGED)
              for name in CIFAR10_CLASSES]
    for index, image in enumerate(images):
        expected = ((weights[index] - low) / (high - low) * 255).round().to(torch.uint8).reshape(3, 32, 32)
        assert torch.equal(image, expected)
    # one range for all: only the templates holding the extremes reach 0 and 255
    assert min(int(i.min()) for i in images) == 0 and max(int(i.max()) for i in images) == 255
    assert sum(int(i.min()) == 0 and int(i.max()) == 255 for i in images) < len(images)


def test_export_templates_grid_only_and_size(cli, tb_run, tmp_path):
    from PIL import Image

    from imgcls.templates import GRID_DPI, grid_figsize

    out, _ = tb_run
    result = cli("export-templates", out, "--out", tmp_path / "grid", "--grid-only")
    assert result.exit_code == 0, plain(result.output)
    assert [p.name for p in (tmp_path / "grid").iterdir()] == ["templates.png"]
    with Image.open(tmp_path / "grid" / "templates.png") as grid:
        assert grid.size == tuple(round(side * GRID_DPI) for side in grid_figsize(10))
    assert cli("export-templates", out, "--out", tmp_path / "big", "--size", 96).exit_code == 0
    assert read_image(str(tmp_path / "big" / "cat.png")).shape == (3, 96, 96)


# --- help, version, completion, flag names ------------------------------------------------------

def command_paths(command=None, prefix=()):
    command = command or typer.main.get_command(app)
    for name, sub in getattr(command, "commands", {}).items():
        yield prefix + (name,)
        yield from command_paths(sub, prefix + (name,))


def test_every_command_is_listed():
    assert {" ".join(p) for p in command_paths()} == {
        "train", "eval", "export-templates", "export", "report", "compare", "predict", "datasets", "gradcheck", "cache",
        "cache info", "cache clear"}


@pytest.mark.parametrize("path", [" ".join(p) for p in command_paths()])
def test_every_help_has_an_example(cli, path):
    result = cli(*path.split(), "--help")
    assert result.exit_code == 0, plain(result.output)
    text = " ".join(plain(result.stdout).split())
    assert f"Example: imgcls {path}" in text


def test_root_help_has_an_example_and_completion(cli):
    text = " ".join(plain(cli("--help").stdout).split())
    assert "Example: imgcls" in text and "--install-completion" in text and "--show-completion" in text


def run_imgcls(*args, env=None):
    return subprocess.run([sys.executable, "-m", "imgcls", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "NO_COLOR": "1", **(env or {})})


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"imgcls {__version__}"


def test_new_commands_answer_help_and_datasets_without_torch(tmp_path):
    """Like train's and eval's, the help of the new commands answers without importing torch; so does datasets."""
    argvs = [[name, "--help"] for name in ("report", "predict", "datasets", "gradcheck")]
    argvs.append(["datasets", "--data-dir", str(tmp_path), "--json"])
    code = ("import sys\nfrom imgcls.cli import app\nfor argv in %r:\n    try:\n        app(argv, prog_name='imgcls')\n"
            "    except SystemExit as e:\n        assert not e.code, (argv, e.code)\n"
            "print('torch' in sys.modules)" % argvs)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_COLOR": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_shell_completion_completes_commands_and_flags():
    done = run_imgcls(env={"_IMGCLS_COMPLETE": "complete_bash", "COMP_WORDS": "imgcls pre", "COMP_CWORD": "1"})
    assert done.returncode == 0 and done.stdout.split() == ["predict"], done.stderr
    done = run_imgcls(env={"_IMGCLS_COMPLETE": "complete_bash", "COMP_WORDS": "imgcls predict --to",
                           "COMP_CWORD": "2"})
    assert done.stdout.split() == ["--top-k"], done.stderr
    # The shell named outright (typer's own switch makes --show-completion take it): detecting it reads the parent
    # processes, and a runner detached from any shell has none there
    script = run_imgcls("--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert script.returncode == 0 and "_IMGCLS_COMPLETE" in script.stdout


def options_by_command():
    """command path -> {long option name: click parameter}"""
    table = {}
    root = typer.main.get_command(app)
    for path in command_paths():
        command = root
        for name in path:
            command = command.commands[name]
        if getattr(command, "commands", None):
            continue
        table[" ".join(path)] = {opt: param for param in command.params for opt in param.opts + param.secondary_opts
                                 if opt.startswith("--")}
    return table


def test_flag_names_are_consistent_across_commands():
    table = options_by_command()
    every = {opt for options in table.values() for opt in options}
    assert all(opt == opt.lower() and "_" not in opt for opt in every), sorted(every)
    synonyms = {"--output", "--outdir", "--output-dir", "--as-json", "--topk", "--k", "--datadir", "--dev", "--n",
                "--checkpoint", "--ckpt", "--image-dir", "--skip-bad", "--seed-value"}
    assert not every & synonyms, every & synonyms
    # one name, one meaning: an option several commands take is a flag in all of them or in none
    for opt in every:
        kinds = {options[opt].is_flag for options in table.values() if opt in options}
        assert len(kinds) == 1, opt
    for command in ("eval", "predict", "datasets", "report", "gradcheck"):
        assert "--json" in table[command], command
    for command in ("train", "eval", "predict"):
        assert "--device" in table[command], command
    for command in ("train", "eval", "datasets"):
        assert "--data-dir" in table[command], command
    assert "--skip-bad-images" in table["train"] and "--skip-bad-images" in table["predict"]
    assert "--out" in table["train"] and "--out" in table["export-templates"]
    assert {"--loss", "--batch-size", "--seed"} <= set(table["train"]) & set(table["gradcheck"])
