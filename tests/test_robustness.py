"""Never trust a file, never lose a run: bad input of every kind ends as one 'error:' line with exit code 2 (the
cases test_cli.py does not already cover), files are written atomically even when the disk fills, and nothing
imgcls loads (checkpoint, config, cache) can run code."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT, TINY_TEST_PER_CLASS, plain, train_tiny_cifar, write_image_folder
from imgcls import checkpoint as ckpt
from imgcls.errors import UserError
from imgcls.files import write_atomic, write_json_atomic, write_text_atomic

SRC = REPO_ROOT / "src"
SMALL = {"train": {"circle": [(8, 8)] * 6, "square": [(8, 8)] * 6}, "test": {"circle": [(8, 8)] * 2,
                                                                          "square": [(8, 8)] * 2}}


def train_folder(cli, root, out, *extra):
    return cli("train", "--dataset", "imagefolder", "--data-dir", root, "--epochs", 1, "--batch-size", 4,
               "--device", "cpu", "--out", out, *extra)


def train_tiny(cli, root, out, *extra):
    return train_tiny_cifar(cli, root, out, *extra, epochs=2)


def no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


# --- option values and config files ---------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["--schedule", "cosin"], ["unknown schedule 'cosin'", "did you mean 'cosine'"]),
    (["--init", "zero"], ["unknown init 'zero'", "did you mean 'zeros'"]),
    (["--normalize", "pixels"], ["unknown normalization 'pixels'", "did you mean 'pixel'"]),
    (["--precision", "fp33"], ["unknown precision 'fp33'", "did you mean 'fp32'"]),
    (["--batch-size", "ful"], ["unknown batch size 'ful'", "did you mean 'full'"]),
    (["--class-weights", "balance"], ["--class-weights", "'balanced'", "not 'balance'"]),
    (["--momentum", "-0.1"], ["--momentum", "[0, 1)"]),
    (["--epochs", "-3"], ["--epochs", "at least 1"]),
    (["--batch-size", "-4"], ["--batch-size", "at least 1"]),
    (["--val-split", "-0.5"], ["--val-split"]),
    (["--val-split", "nan"], ["--val-split"]),
    (["--lr", "nan"], ["--lr"]),
    (["--lr", "inf"], ["--lr", "finite"]),
    (["--weight-decay", "inf"], ["--weight-decay", "finite"]),
    (["--warmup-epochs", "inf"], ["--warmup-epochs", "finite"]),
    (["--init-std", "inf"], ["--init-std", "finite"]),
    (["--class-weights", "1,inf"], ["--class-weights", "finite"]),
    (["--class-weights", "nan,1"], ["--class-weights"]),
    (["--seed", "-1"], ["--seed", "2^32"]),
    (["--seed", str(2 ** 70)], ["--seed", "2^32"]),
    (["--batch-size", "\u00b2"], ["batch size"]),  # '²' passes str.isdigit() but int() refuses it
    (["--patience", "0"], ["--patience"]),
    (["--threads", "0"], ["--threads", "between 1 and 1024"]),
    (["--threads", "100000"], ["--threads", "between 1 and 1024"]),  # it was a segfault
    (["--step-gamma", "0"], ["--step-gamma"]),
    (["--image-size", "0"], ["--image-size"]),
    (["--nesterov", "--momentum", "0"], ["--nesterov"]),
])
def test_bad_option_values_are_user_errors(cli, args, words, assert_user_error, tmp_path):
    assert_user_error(cli("train", *args, "--out", tmp_path / "run"), *words)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe\x00binary\x80\x81", ["not a text file"]),
    (b"optim: [1, 2\n", ["not valid YAML", "line"]),
    (b"- 1\n- 2\n", ["must be a mapping of sections"]),
    (b"optim: 0.1\n", ["section 'optim'", "mapping of keys"]),
    (b"optim:\n  momentum: yes\n", ["optim.momentum", "float"]),
    (b"train:\n  epochs: 2.5\n", ["train.epochs", "int"]),
    (b"optim:\n  lr: .inf\n", ["optim.lr in", "bad.yaml must be a finite number"]),
    (b"data:\n  val_split: .nan\n", ["data.val_split in", "bad.yaml must be between 0 and 1"]),
    # YAML reads 1e999 as text; as a number it is infinite
    (b"optim:\n  lr: 1e999\n", ["optim.lr in", "bad.yaml must be a finite number"]),
    (b"loss:\n  class_weights: [1, two]\n", ["loss.class_weights"]),
    (b"12: {lr: 1}\n", ["unknown config section '12'"]),
])
def test_bad_config_files(cli, tmp_path, content, words, assert_user_error):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert_user_error(cli("train", "--config", path, "--out", tmp_path / "run"), *words)
    assert not (tmp_path / "run").exists()


def test_a_config_file_cannot_run_code(cli, tmp_path, assert_user_error):
    """YAML's python tags would call any function; the loader is yaml.safe_load, which refuses them."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"optim: !!python/object/apply:os.system ['touch {marker}']\n")
    assert_user_error(cli("train", "--config", path, "--out", tmp_path / "run"), "not valid YAML")
    assert not marker.exists()


# --- data ------------------------------------------------------------------------------------------

def test_a_truncated_jpeg_stops_the_run_and_is_named(cli, tiny_cifar, tmp_path, assert_user_error, assert_ok):
    victim = tiny_cifar / "train" / "dog" / sorted(p.name for p in (tiny_cifar / "train" / "dog").iterdir())[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    error = assert_user_error(train_tiny(cli, tiny_cifar, tmp_path / "a"), "cannot read image", victim.name,
                              "truncated", "--skip-bad-images")
    assert ".cpp" not in error  # torchvision's source location is no use to the user
    assert not (tmp_path / "a").exists()


def test_skip_bad_images_reports_how_many(cli, tiny_cifar, tmp_path, assert_ok):
    for i, victim in enumerate(sorted((tiny_cifar / "train" / "cat").iterdir())[:2]):
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 3] if i == 0 else b"")
    (tiny_cifar / "test" / "ship" / "garbage.jpg").write_bytes(b"\x89PNG not really")
    result = train_tiny(cli, tiny_cifar, tmp_path / "b", "--skip-bad-images")
    assert_ok(result)
    assert "3 unreadable images skipped" in " ".join(plain(result.output).split())
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["test"]["count"] == 10 * TINY_TEST_PER_CLASS
    # --limit keeps the count (it was lost when --limit drew its sample)
    result = train_tiny(cli, tiny_cifar, tmp_path / "c", "--skip-bad-images", "--limit", 100)
    assert_ok(result)
    assert "3 unreadable images skipped" in " ".join(plain(result.output).split())


def test_images_in_every_format_image_folder_lists_are_read(cli, tmp_path, assert_ok):
    """ImageFolder lists BMP, TIFF, PPM and PGM, which torchvision.io cannot decode; 16-bit PNGs and animated GIFs
    (under an image extension) must not break the stacking of the batch either."""
    root = write_image_folder(tmp_path / "data", SMALL)
    rng = np.random.default_rng(0)
    colour = lambda: Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))  # noqa: E731
    colour().save(root / "train" / "circle" / "a.bmp")
    colour().save(root / "train" / "circle" / "b.tiff")
    colour().save(root / "train" / "circle" / "c.ppm")
    colour().convert("L").save(root / "train" / "square" / "d.pgm")
    Image.fromarray(rng.integers(0, 65536, (8, 8), dtype=np.uint16)).save(root / "train" / "square" / "e.png")
    frames = [colour() for _ in range(3)]
    frames[0].save(root / "train" / "square" / "f.png", format="GIF", save_all=True, append_images=frames[1:])
    colour().convert("CMYK").save(root / "test" / "square" / "g.jpg")
    colour().save(root / "test" / "circle" / "h.webp")
    assert_ok(train_folder(cli, root, tmp_path / "run", "--quiet"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["val"]["count"], metrics["test"]["count"]) == (2, 6)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_an_image_size_too_large_for_memory_is_refused_before_decoding(cli, dataset, data_root, cifar_jpeg, tmp_path,
                                                                       assert_user_error):
    """MNIST resizes torchvision's array in chunks, CIFAR-10 (an image folder) image by image: both are checked."""
    data_dir = data_root if dataset == "mnist" else cifar_jpeg
    text = assert_user_error(cli("train", "--dataset", dataset, "--data-dir", data_dir, "--image-size", 30000,
                                 "--out", tmp_path / "run"), "--image-size 30000", "GB", "smaller --image-size")
    assert "60000 images" in text or "50000 images" in text
    assert not (tmp_path / "run").exists()


def test_a_data_dir_with_the_wrong_layout(cli, tmp_path, assert_user_error):
    root = write_image_folder(tmp_path / "flat", SMALL)
    for image in list((root / "train").rglob("*.png")):
        image.rename(root / "train" / f"{image.parent.name}-{image.name}")
    for folder in ("circle", "square"):
        (root / "train" / folder).rmdir()
    assert_user_error(train_folder(cli, root, tmp_path / "run"), "find any class folder", "train")
    assert not (tmp_path / "run").exists()


def test_a_named_dataset_folder_with_the_wrong_image_size(cli, tmp_path, assert_user_error):
    from imgcls.data.registry import CIFAR10_CLASSES

    layout = {split: {name: [(16, 16)] * 2 for name in CIFAR10_CLASSES} for split in ("train", "test")}
    root = write_image_folder(tmp_path / "data", layout)
    assert_user_error(cli("train", "--dataset", "cifar10", "--data-dir", root, "--out", tmp_path / "run"),
                      "does not hold cifar10", "(3, 16, 16)", "--image-size")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_mnist_files(cli, data_root, tmp_path, damage, fresh_cache, assert_user_error):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for source in (data_root / "MNIST" / "raw").iterdir():
        if source.name.endswith(".gz"):
            continue
        data = source.read_bytes()
        if source.name == "train-images-idx3-ubyte":
            data = {"truncated": data[: len(data) // 2], "garbage": b"garbage" * 10, "empty": b""}[damage]
        (raw / source.name).write_bytes(data)
    assert_user_error(cli("train", "--dataset", "mnist", "--data-dir", tmp_path / "data", "--out", tmp_path / "run"),
                      "mnist", "cannot be read", "damaged")
    assert not (tmp_path / "run").exists()


def test_download_without_a_network(cli, tmp_path, monkeypatch, assert_user_error):
    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for dataset in ("mnist", "cifar10"):
        assert_user_error(cli("train", "--dataset", dataset, "--data-dir", tmp_path / dataset, "--download",
                              "--out", tmp_path / "run"), f"could not download {dataset}", "--data-dir")
    assert not (tmp_path / "run").exists()


def test_a_pickled_cache_entry_is_never_unpickled(cli, tmp_path, fresh_cache, assert_ok):
    """The decoded cache is read with numpy's allow_pickle=False: an entry whose arrays were swapped for pickled
    objects is ignored and rebuilt, and the pickle never runs."""
    root = write_image_folder(tmp_path / "data", SMALL)
    assert_ok(train_folder(cli, root, tmp_path / "first", "--quiet"))
    marker = tmp_path / "ran"
    entries = [p for p in fresh_cache.iterdir() if p.is_dir() and (p / "labels.npy").exists()]
    assert entries
    for entry in entries:
        evil = np.empty(1, dtype=object)
        evil[0] = RunsCode(marker)
        np.save(entry / "labels.npy", evil, allow_pickle=True)
    assert_ok(train_folder(cli, root, tmp_path / "second", "--quiet"))
    assert not marker.exists()
    assert json.loads((tmp_path / "first" / "metrics.json").read_text())["test"] == \
        json.loads((tmp_path / "second" / "metrics.json").read_text())["test"]


# --- checkpoints -------------------------------------------------------------------------------------

class RunsCode:
    """Unpickling this creates `marker`: what a malicious pickle could do with any code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def small_run(cli, tmp_path_factory):
    root = write_image_folder(tmp_path_factory.mktemp("small") / "data", SMALL)
    out = tmp_path_factory.mktemp("runs") / "small"
    result = train_folder(cli, root, out, "--quiet")
    assert result.exit_code == 0, plain(result.output)
    return root, out


def test_the_pickle_payload_is_live(tmp_path):
    """Precondition for the next test: unpickling the payload does run code."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(RunsCode(marker)))
    assert marker.exists()


@pytest.mark.parametrize("where", ["best.safetensors", "model.pt", "model.pth"])
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
@pytest.mark.parametrize("command", ["eval", "export-templates"])
def test_a_pickle_where_a_checkpoint_is_expected_is_refused_and_runs_nothing(cli, small_run, tmp_path, where, how,
                                                                             command, assert_user_error):
    marker = tmp_path / "ran"
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "epochs.jsonl", "metrics.json"):
        (run / name).write_bytes((small_run[1] / name).read_bytes())
    payload = {"weight": RunsCode(marker), "bias": torch.zeros(2)}
    if how == "pickle":
        (run / where).write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, run / where)
    target = run if where == "best.safetensors" else run / where
    extra = ["--device", "cpu"] if command == "eval" else ["--out", tmp_path / "tpl"]
    assert_user_error(cli(command, target, *extra), "not a readable imgcls checkpoint")
    assert not marker.exists()


def rewrite(source: Path, target: Path, meta_change=None, metadata_change=None, tensor_change=None) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), "pt") as f:
        metadata, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(metadata["meta"])
    if meta_change:
        meta_change(meta)
    metadata["meta"] = json.dumps(meta)
    if metadata_change:
        metadata_change(metadata)
    if tensor_change:
        tensor_change(tensors)
    save_file(tensors, str(target), metadata=metadata)
    return target


def test_a_checkpoint_from_a_newer_format_version(cli, small_run, tmp_path, assert_user_error):
    path = rewrite(small_run[1] / "best.safetensors", tmp_path / "new.safetensors",
                   metadata_change=lambda m: m.update(imgcls_format="99"))
    for command, extra in (("eval", ["--device", "cpu"]), ("export-templates", ["--out", tmp_path / "tpl"])):
        assert_user_error(cli(command, path, *extra), "newer imgcls", "format 99", "upgrade")


@pytest.mark.parametrize("name, change, words", [
    ("no-config", {"meta": lambda m: m.pop("config")}, ["no 'config'"]),
    ("no-dataset", {"meta": lambda m: m.pop("dataset")}, ["no 'dataset'"]),
    ("seed-text", {"meta": lambda m: m.update(seed="x")}, ["'seed'"]),
    ("unknown-dataset", {"meta": lambda m: m["config"]["data"].update(dataset="nope")}, ["config", "nope"]),
    ("dataset-number", {"meta": lambda m: m["config"]["data"].update(dataset=5)}, ["data.dataset"]),
    ("unknown-loss", {"meta": lambda m: m["config"]["loss"].update(loss="hinge")}, ["loss"]),
    ("class-weights", {"meta": lambda m: m["config"]["loss"].update(class_weights=[1, 2, 3])}, ["3 class weights"]),
    ("shape-floats", {"meta": lambda m: m.update(input_shape=[3.0, 8.0, 8.0])}, ["input_shape"]),
    ("classes-text", {"meta": lambda m: m.update(classes="ab")}, ["'classes'"]),
    ("meta-list", {"metadata": lambda m: m.update(meta="[1, 2]")}, ["not a JSON object"]),
    ("meta-not-json", {"metadata": lambda m: m.update(meta="{oops")}, ["damaged"]),
    ("meta-deep", {"metadata": lambda m: m.update(meta="[" * 100000 + "]" * 100000)}, ["damaged"]),
    ("format-odd", {"metadata": lambda m: m.update(imgcls_format="\u00b2")}, ["format version"]),
    ("format-negative", {"metadata": lambda m: m.update(imgcls_format="-1")}, ["format version"]),
    ("bias-shape", {"tensors": lambda t: t.update(bias=torch.zeros(3))}, ["bias (3,)"]),
    ("no-bias", {"tensors": lambda t: t.pop("bias")}, ["no 'bias'"]),
    ("weight-int", {"tensors": lambda t: t.update(weight=t["weight"].to(torch.int32))}, ["weight", "floating"]),
    ("weight-nan", {"tensors": lambda t: t.update(weight=t["weight"] * float("nan"))}, ["weight", "finite"]),
    ("std-zero", {"tensors": lambda t: t.update({"norm.std": torch.zeros_like(t["norm.std"])})}, ["norm.std"]),
    ("weight-float8", {"tensors": lambda t: t.update(weight=t["weight"].to(torch.float8_e4m3fn))},
     ["weight", "floating-point type"]),
    ("format-5000-digits", {"metadata": lambda m: m.update(imgcls_format="1" * 5000)}, ["format version"]),
    ("two-channels", {"meta": lambda m: m.update(input_shape=[2, 8, 8]),
                      "tensors": lambda t: t.update(weight=t["weight"][:, :128].contiguous())}, ["2 channels"]),
    ("four-channels", {"meta": lambda m: m.update(input_shape=[4, 8, 8]),
                       "tensors": lambda t: t.update(weight=torch.cat([t["weight"], t["weight"][:, :64]], 1))},
     ["4 channels"]),
])
@pytest.mark.parametrize("command", ["eval", "export-templates", "predict"])
def test_damaged_checkpoint_metadata_and_tensors(cli, small_run, tmp_path, name, change, words, command,
                                                 assert_user_error):
    path = rewrite(small_run[1] / "best.safetensors", tmp_path / f"{name}.safetensors", change.get("meta"),
                   change.get("metadata"), change.get("tensors"))
    extra = {"eval": ["--device", "cpu"], "export-templates": ["--out", tmp_path / "tpl"],
             "predict": [small_run[0], "--device", "cpu"]}[command]
    assert_user_error(cli(command, path, *extra), path.name, "damaged imgcls checkpoint", *words)
    assert not (tmp_path / "tpl").exists()


def test_a_checkpoint_config_with_keys_from_a_later_imgcls_still_loads(small_run, tmp_path):
    path = rewrite(small_run[1] / "best.safetensors", tmp_path / "later.safetensors",
                   lambda m: (m["config"]["train"].update(future_key=1), m["config"].update(future_section={})))
    assert ckpt.load(path).meta["config"]["train"]["epochs"] == 1


def test_eval_on_data_of_another_input_shape(cli, small_run, tmp_path, assert_user_error):
    other = write_image_folder(tmp_path / "other", {split: {name: [(6, 6)] * len(sizes) for name, sizes in
                                                            classes.items()} for split, classes in SMALL.items()})
    assert_user_error(cli("eval", small_run[1], "--data-dir", other, "--device", "cpu"),
                      "checkpoint was trained on imagefolder", "(3, 8, 8)", "(3, 6, 6)", "--data-dir")


# --- the run folder ----------------------------------------------------------------------------------

def test_out_below_a_file(cli, small_run, tmp_path, assert_user_error):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(train_folder(cli, small_run[0], blocker / "run"), "is a file, not a folder", "--out")
    assert_user_error(train_folder(cli, small_run[0], blocker), "is a file, not a folder", "--out")


def test_out_that_cannot_be_created(cli, small_run, tmp_path, assert_user_error):
    error = assert_user_error(train_folder(cli, small_run[0], "/proc/imgcls-run"), "/proc/imgcls-run", "--out")
    assert "cannot create" in error or "not writable" in error


def test_a_folder_that_is_not_a_run_is_refused_and_overwrite_keeps_what_imgcls_did_not_write(cli, small_run, tmp_path,
                                                                                           assert_user_error,
                                                                                           assert_ok):
    mine = tmp_path / "mine"
    users = {"notes.txt": b"my notes", "templates/a.png": b"my picture", "tensorboard/events": b"my log",
             "curves.png": b"my curves"}
    for name, content in users.items():
        (mine / name).parent.mkdir(parents=True, exist_ok=True)
        (mine / name).write_bytes(content)
    assert_user_error(train_folder(cli, small_run[0], mine), "not empty and not a run folder", "notes.txt",
                      "--overwrite")
    assert all((mine / name).read_bytes() == content for name, content in users.items())  # nothing touched
    (tmp_path / "empty").mkdir()
    assert_ok(train_folder(cli, small_run[0], tmp_path / "empty"))
    assert_ok(train_folder(cli, small_run[0], mine, "--overwrite"))
    assert (mine / "metrics.json").is_file() and (mine / "curves.png").read_bytes() != b"my curves"
    for name in ("notes.txt", "templates/a.png", "tensorboard/events"):
        assert (mine / name).read_bytes() == users[name], f"{name} of the user's was lost"
    # In a run folder, a new run replaces the old run's files (templates/ exported there too) and keeps the rest.
    assert_ok(train_folder(cli, small_run[0], mine, "--overwrite", "--epochs", 2))
    assert (mine / "notes.txt").read_bytes() == b"my notes" and not (mine / "templates").exists()
    assert len((mine / "epochs.jsonl").read_text().splitlines()) == 2


def hold_run_folder(folder: Path) -> subprocess.Popen:
    """Another process that holds `folder` as a run does, until its stdin closes."""
    code = ("import sys; from pathlib import Path; from imgcls.rundir import RunDir\n"
            "with RunDir(Path(sys.argv[1])).locked():\n    print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get(
                                  "PYTHONPATH", "")])}, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_run_folder_in_use_by_another_process_is_refused_naming_it(cli, small_run, tmp_path, assert_user_error,
                                                                      assert_ok):
    root, finished = small_run
    out = tmp_path / "run"
    holder = hold_run_folder(out)
    try:
        assert_user_error(train_folder(cli, root, out), "in use by another imgcls process", f"pid {holder.pid}")
        assert sorted(p.name for p in out.iterdir()) == [".imgcls.lock"]  # the refused run wrote nothing
    finally:
        holder.stdin.close()
        holder.wait(30)
    assert not out.exists()  # the holder made the folder, wrote nothing, and removed it again
    assert_ok(train_folder(cli, root, out))
    assert not (out / ".imgcls.lock").exists()
    # --resume too: an interrupted run being resumed cannot be resumed a second time alongside
    interrupted = tmp_path / "interrupted"
    shutil.copytree(finished, interrupted)
    (interrupted / "metrics.json").unlink()
    holder = hold_run_folder(interrupted)
    try:
        assert_user_error(cli("train", "--resume", interrupted), "in use", f"pid {holder.pid}")
    finally:
        holder.stdin.close()
        holder.wait(30)
    assert_ok(cli("train", "--resume", interrupted, "--quiet"))


@pytest.mark.parametrize("umask, existing, expected", [(0o002, None, 0o664), (0o022, None, 0o644),
                                                        (0o077, None, 0o600), (0o077, 0o664, 0o664),
                                                        (0o022, 0o640, 0o640)])
def test_a_written_file_gets_the_mode_open_would_give_it(tmp_path, umask, existing, expected):
    path = tmp_path / "predictions.csv"
    if existing is not None:
        path.write_text("old")
        path.chmod(existing)
    previous = os.umask(umask)
    try:
        write_text_atomic(path, "new")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == expected and path.read_text() == "new"


def test_a_run_folder_is_written_with_the_umask_s_modes(cli, small_run, tmp_path, assert_ok):
    """A shared --out (umask 002): every file, the checkpoints too, is group-writable as the umask says."""
    out = tmp_path / "shared"
    previous = os.umask(0o002)
    try:
        assert_ok(train_folder(cli, small_run[0], out))
    finally:
        os.umask(previous)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in out.iterdir()}
    assert set(modes) >= {"best.safetensors", "last.safetensors", "metrics.json", "curves.png"}
    assert set(modes.values()) == {oct(0o664)}, modes


def start_writer(folder: Path) -> subprocess.Popen:
    """A process part-way through writing folder/curves.png (atomically), waiting there."""
    code = ("import sys, time; from pathlib import Path; from imgcls.files import write_atomic\n"
            "def slow(temporary):\n    temporary.write_bytes(b'half a png'); print('writing', flush=True); "
            "time.sleep(120)\n"
            "write_atomic(Path(sys.argv[1]) / 'curves.png', slow)")
    writer = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get(
                                  "PYTHONPATH", "")])})
    assert writer.stdout.readline().strip() == "writing"
    return writer


def test_temporary_files_of_a_killed_writer_are_removed_at_the_next_report_and_run(cli, small_run, tmp_path,
                                                                                  assert_ok):
    root, finished = small_run
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    killed, alive = start_writer(run), None
    try:
        killed.kill()  # kill -9: no finally runs, its temporary file stays
        killed.wait(30)
        stale = list(run.glob(".curves.png.*.tmp"))
        assert len(stale) == 1 and str(killed.pid) in stale[0].name
        alive = start_writer(run)
        assert_ok(cli("report", run))
        left = list(run.glob(".curves.png.*.tmp"))
        assert len(left) == 1 and str(alive.pid) in left[0].name  # a live writer's file is its own business
    finally:
        if alive is not None:
            alive.kill()
            alive.wait(30)
    assert len(list(run.glob(".*.tmp"))) == 1
    (run / "metrics.json").unlink()
    assert_ok(cli("train", "--resume", run, "--quiet"))  # and a run (here resumed) removes it
    assert not list(run.glob(".*.tmp"))


# --- atomic writes -----------------------------------------------------------------------------------

@pytest.fixture
def previous(tmp_path) -> Path:
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"good": True})
    return path


@pytest.mark.parametrize("failure", [RuntimeError("bug"), KeyboardInterrupt()])
def test_a_writer_that_fails_half_way_leaves_the_previous_file_whole(previous, failure):
    def half_then_fail(temporary: Path) -> None:
        temporary.write_text('{"good": fal')
        raise failure

    with pytest.raises(type(failure)):
        write_atomic(previous, half_then_fail)
    assert json.loads(previous.read_text()) == {"good": True}
    assert no_temporary_files(previous.parent)


@pytest.mark.parametrize("call", ["replace", "fsync"])
def test_a_full_disk_is_a_user_error_and_leaves_the_previous_file_whole(previous, monkeypatch, call):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(f"imgcls.files.os.{call}", full)
    with pytest.raises(UserError, match="No space left on device") as raised:
        write_text_atomic(previous, '{"good": false}')
    monkeypatch.undo()
    assert "metrics.json" in str(raised.value) and "left as it was" in str(raised.value)
    assert json.loads(previous.read_text()) == {"good": True}
    assert no_temporary_files(previous.parent)


def test_an_unexpected_os_error_keeps_its_traceback_and_still_cleans_up(previous, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr("imgcls.files.os.replace", broken)
    with pytest.raises(OSError, match="I/O error"):
        write_text_atomic(previous, "{}")
    monkeypatch.undo()
    assert json.loads(previous.read_text()) == {"good": True}
    assert no_temporary_files(previous.parent)


def test_a_full_disk_during_training_keeps_the_last_good_checkpoint_and_the_run_resumes(cli, tiny_cifar_session,
                                                                                        tmp_path, monkeypatch,
                                                                                        assert_user_error, assert_ok):
    """The disk fills while the second epoch's last.safetensors is written: a clear error, the first epoch's
    checkpoint whole, no temporary file; --resume then ends exactly as a run that never failed."""
    real_replace = os.replace
    writes = {"last.safetensors": 0}

    def replace(source, target):
        if Path(target).name == "last.safetensors":
            writes["last.safetensors"] += 1
            if writes["last.safetensors"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(source, target)

    out = tmp_path / "run"
    monkeypatch.setattr("imgcls.files.os.replace", replace)
    assert_user_error(train_tiny(cli, tiny_cifar_session, out, "--epochs", 3), "cannot write", "last.safetensors",
                      "No space left on device")
    monkeypatch.undo()
    assert ckpt.load(out / "last.safetensors").meta["epoch"] == 1
    assert ckpt.load(out / "best.safetensors").meta["epoch"] in (1, 2)
    assert no_temporary_files(out) and not (out / "metrics.json").exists()

    assert_ok(cli("train", "--resume", out, "--quiet"))
    whole = tmp_path / "whole"
    assert_ok(train_tiny(cli, tiny_cifar_session, whole, "--epochs", 3, "--quiet"))
    for name in ("best.safetensors", "last.safetensors"):
        a, b = ckpt.load(whole / name), ckpt.load(out / name)
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}  # noqa
                          for line in (path / "epochs.jsonl").read_text().splitlines()]
    assert strip(whole) == strip(out)
    metrics = [json.loads((path / "metrics.json").read_text()) for path in (whole, out)]
    assert metrics[0]["test"] == metrics[1]["test"] and metrics[0]["val"] == metrics[1]["val"]


def test_a_checkpoint_that_does_not_fit_on_the_disk_is_one_clear_error(small_run, tmp_path):
    """A real write failure, not a simulated one: the file-size limit makes the kernel refuse the write (EFBIG),
    as a full disk would (ENOSPC); the checkpoint that was there stays whole."""
    target = tmp_path / "last.safetensors"
    shutil.copy(small_run[1] / "last.safetensors", target)
    before = target.read_bytes()
    code = ("import resource, signal, sys\n"
            "from pathlib import Path\n"
            "from imgcls import checkpoint as ckpt\n"
            "from imgcls.errors import UserError\n"
            "saved = ckpt.load(Path(sys.argv[1]))\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (len(Path(sys.argv[1]).read_bytes()) // 2,) * 2)\n"
            "try:\n"
            "    ckpt.save(Path(sys.argv[1]), saved)\n"
            "except UserError as error:\n"
            "    print(error)\n")
    done = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "cannot write" in done.stdout and "last.safetensors" in done.stdout and "left as it was" in done.stdout
    assert target.read_bytes() == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
