"""The command line end to end on small real data: train -> eval -> export-templates, determinism,
config precedence through a saved config.yaml, and every user error ending as one 'error:' line, exit 2."""

import json
import math
import os
from pathlib import Path

import pytest
import torch

from conftest import (MNIST_EPOCHS, TINY_CIFAR_EPOCHS, TINY_TEST_PER_CLASS, TINY_TRAIN_PER_CLASS, plain, read_run,
                      run_python, train_tiny_cifar, write_image_folder)
from imgcls.runs import checkpoint as ckpt
from imgcls.data.registry import CIFAR10_CLASSES, DIGITS
from imgcls.runs.rundir import FIGURE_FILES, LR_SEARCH, METRICS_CSV, REPORT_PAGE, RUN_FILES

SMALL_FOLDER = {
    "train": {"circle": [(8, 8)] * 6, "square": [(8, 8)] * 6, "star": [(8, 8)] * 6},
    "test": {"circle": [(8, 8)] * 2, "square": [(8, 8)] * 2, "star": [(8, 8)] * 2},
}


# --- train -> eval -> export-templates ----------------------------------------------------------

def check_run_folder(out, epochs_wanted, val_count, test_count, classes):
    config, epochs, metrics = read_run(out)
    searched = (LR_SEARCH,) if (out / LR_SEARCH).is_file() else ()  # --lr auto's figure
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(RUN_FILES + FIGURE_FILES
                                                                                          + (REPORT_PAGE, METRICS_CSV)
                                                                                          + searched)
    assert [e["epoch"] for e in epochs] == list(range(1, epochs_wanted + 1))
    assert config["train"]["epochs"] == epochs_wanted and config["output"]["out"] is None  # repeats go elsewhere
    for split, count in (("val", val_count), ("test", test_count)):
        m = metrics[split]
        assert m["count"] == count
        assert 0.0 <= m["top1"] <= m["top5"] <= 1.0
        assert math.isfinite(m["loss"]) and m["loss"] > 0
        assert m["k"] == 5
    assert metrics["classes"] == list(classes)
    assert 1 <= metrics["best_epoch"] <= epochs_wanted
    best = epochs[metrics["best_epoch"] - 1]
    assert best["val_top1"] == pytest.approx(metrics["val"]["top1"], abs=1e-12)
    assert best["val_top1"] == max(e["val_top1"] for e in epochs)
    confusion = metrics["test_detail"]["confusion"]
    assert sum(map(sum, confusion)) == test_count
    assert sum(confusion[i][i] for i in range(len(classes))) / test_count == pytest.approx(metrics["test"]["top1"])
    for name in ("best.safetensors", "last.safetensors"):
        loaded = ckpt.load(out / name)
        assert loaded.classes == list(classes)
    assert ckpt.load(out / "last.safetensors").meta["epoch"] == epochs_wanted
    assert ckpt.load(out / "best.safetensors").meta["epoch"] == metrics["best_epoch"]
    return config, epochs, metrics


def test_mnist_train_writes_a_run_folder_and_learns(mnist_run):
    out, result = mnist_run
    config, epochs, metrics = check_run_folder(out, MNIST_EPOCHS, 60, 10000, DIGITS)
    assert config["data"]["limit"] == 600 and config["optim"]["momentum"] == 0.5 and config["train"]["seed"] == 3
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert metrics["test"]["top1"] > 0.5  # chance is 0.1; two epochs on 540 digits reach about 0.7
    assert ckpt.load(out / "best.safetensors").input_shape == (1, 28, 28)


def test_quiet_prints_one_json_line_with_the_metrics(mnist_run):
    out, result = mnist_run
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    printed = json.loads(lines[0])
    _, _, metrics = read_run(out)
    assert printed["val"] == metrics["val"] and printed["test"] == metrics["test"]
    assert Path(printed["run_dir"]) == out
    assert plain(result.stderr).strip() == ""


def test_tiny_cifar_train_writes_a_run_folder(tiny_cifar_run):
    out, result = tiny_cifar_run
    config, epochs, _ = check_run_folder(out, TINY_CIFAR_EPOCHS, 10 * TINY_TRAIN_PER_CLASS // 10,
                                         10 * TINY_TEST_PER_CLASS, CIFAR10_CLASSES)
    assert config["data"]["dataset"] == "cifar10"
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    # not quiet: the epochs and the summary table are shown
    output = plain(result.output)
    assert "epoch   1" in output and "best epoch" in output and "top-1" in output


@pytest.mark.parametrize("run", ["mnist_run", "tiny_cifar_run"])
def test_eval_reproduces_the_run_metrics(cli, run, request):
    out, _ = request.getfixturevalue(run)
    _, _, metrics = read_run(out)
    for target, split in ((out / "best.safetensors", "test"), (out, "val")):
        result = cli("eval", target, "--split", split, "--device", "cpu", "--json")
        assert result.exit_code == 0, plain(result.output)
        got = json.loads(result.stdout)[split]
        for key in ("top1", "top5", "loss"):
            assert got[key] == pytest.approx(metrics[split][key], abs=1e-6), (split, key)
        assert got["count"] == metrics[split]["count"]


def test_eval_without_json_shows_a_table(cli, tiny_cifar_run):
    out, _ = tiny_cifar_run
    result = cli("eval", out / "best.safetensors", "--device", "cpu", "--per-class")
    assert result.exit_code == 0, plain(result.output)
    _, _, metrics = read_run(out)
    text = plain(result.stdout)
    assert f"{metrics['test']['top1']:.2%}" in text
    assert "per-class top-1" in text and "automobile" in text


def test_eval_on_a_colour_folder_of_a_grey_run_gives_advice_eval_can_follow(cli, mnist_run, tiny_cifar_session,
                                                                            assert_user_error):
    """The readers' advice is for train (--image-size, --dataset imagefolder): eval has neither option."""
    out, _ = mnist_run
    error = assert_user_error(cli("eval", out, "--data-dir", tiny_cifar_session, "--device", "cpu"),
                              "does not hold mnist", "--data-dir", "trained on")
    assert "--image-size" not in error and "--dataset" not in error


def test_eval_json_has_the_shape_of_metrics_json_and_keeps_per_class(cli, tiny_cifar_run):
    out, _ = tiny_cifar_run
    _, _, metrics = read_run(out)
    got = json.loads(cli("eval", out, "--split", "test", "--device", "cpu", "--json", "--per-class").stdout)
    assert got["classes"] == metrics["classes"] and got["test"] == metrics["test"]
    assert got["test_detail"] == metrics["test_detail"]
    assert "test_detail" not in json.loads(cli("eval", out, "--device", "cpu", "--json").stdout)


def test_eval_json_is_strict_json_when_the_loss_is_not_finite(cli, tiny_cifar_run, tmp_path):
    """Weights large enough that the scores overflow: the loss is NaN, which JSON cannot hold."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    out, _ = tiny_cifar_run
    with safe_open(str(out / "best.safetensors"), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["weight"] = tensors["weight"].sign() * 3e38
    huge = tmp_path / "huge.safetensors"
    save_file(tensors, str(huge), metadata=metadata)
    result = cli("eval", huge, "--device", "cpu", "--json")
    assert result.exit_code == 0, plain(result.output)
    got = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert got["test"]["loss"] is None and "test.loss" in got["null_because"]
    assert 0 <= got["test"]["top1"] <= 1


# --- names and paths holding brackets are shown as written, never read as rich markup ----------------

BRACKETED = "cat [domestic]"  # as markup, "[domestic]" is a style tag and vanishes


@pytest.fixture(scope="module")
def bracketed_run(cli, tmp_path_factory):
    """A run on an image folder with a class named BRACKETED, data and run folder under paths holding '[/x]'
    (as markup, a closing tag that matches nothing: a MarkupError)."""
    base = tmp_path_factory.mktemp("brackets")
    layout = {split: {BRACKETED if name == "circle" else name: sizes for name, sizes in classes.items()}
              for split, classes in SMALL_FOLDER.items()}
    data = write_image_folder(base / "data [/x]", layout)
    out = base / "run [/x]"
    # nn.Linear's init: one epoch on random pixels from zeros leaves every probability at 33.3%, and the predict
    # table's widths (what fits in 80 columns) with them
    result = cli("train", "--dataset", "imagefolder", "--data-dir", data, "--epochs", 1, "--device", "cpu",
                 "--init", "default", "--out", out)
    return data, out, result


def test_train_shows_a_run_folder_with_brackets_as_written(bracketed_run, assert_ok):
    _, out, result = bracketed_run
    assert_ok(result)
    assert f"run folder: {out}" in " ".join(plain(result.stderr).split())


def test_eval_per_class_shows_a_bracketed_class_name(cli, bracketed_run, assert_ok):
    _, out, _ = bracketed_run
    result = cli("eval", out, "--device", "cpu", "--per-class")
    assert_ok(result)
    rows = [line for line in plain(result.stdout).splitlines() if "cat" in line]
    assert len(rows) == 1 and BRACKETED in rows[0]


def test_predict_table_shows_bracketed_classes_and_paths(cli, bracketed_run, assert_ok):
    data, out, _ = bracketed_run
    (data / "test" / "bad.png").write_bytes(b"not an image")
    result = cli("predict", out, data / "test", "--top-k", 3, "--device", "cpu", "--skip-bad-images")
    assert_ok(result)
    table = plain(result.stdout)
    assert table.count(BRACKETED) == 6  # each of the 6 images lists all 3 classes
    assert f"skipped {data / 'test' / 'bad.png'}: cannot read it" in " ".join(plain(result.stderr).split())


def test_export_templates_and_datasets_show_paths_with_brackets(cli, bracketed_run, tmp_path, assert_ok):
    _, out, _ = bracketed_run
    templates = tmp_path / "tpl [/x]"
    result = cli("export-templates", out, "--out", templates)
    assert_ok(result)
    assert f"wrote 4 PNGs to {templates}" in " ".join(plain(result.stdout).split())
    result = cli("datasets", "--data-dir", tmp_path / "data [/x]")
    assert_ok(result)
    assert "[/x]" in plain(result.stdout)


def test_report_on_a_config_yaml_alias_bomb_is_one_error_line(cli, tiny_cifar_run, tmp_path, assert_user_error):
    """A run folder's config.yaml is read by the same bounded loader as --config: no hang, no gigabytes."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_cifar_run[0], run)
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]"
                                                     for i in range(8)]
    (run / "config.yaml").write_text("\n".join(levels) + "\n")
    assert_user_error(cli("report", run, "--no-figures"), "config.yaml", "the run folder is damaged")


def _huge_count(run):
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps(metrics).replace(f'"count": {metrics["test"]["count"]}',
                                                                  '"count": 1' + "0" * 5000, 1))


def _accuracy_above_one(run):
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["test"]["top1"] = 2.5
    (run / "metrics.json").write_text(json.dumps(metrics))


def _nan_accuracy(run):
    (run / "metrics.json").write_text((run / "metrics.json").read_text().replace('"top1": ', '"top1": NaN, "x": ', 1))


def _epochs_a_folder(run):
    (run / "epochs.jsonl").unlink()
    (run / "epochs.jsonl").mkdir()


def _metrics_a_folder(run):
    (run / "metrics.json").unlink()
    (run / "metrics.json").mkdir()


def _nested_too_deep(run):
    (run / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize("damage, words", [(_huge_count, "metrics.json"), (_accuracy_above_one, "top1"),
                                           (_nan_accuracy, "top1"), (_epochs_a_folder, "epochs.jsonl"),
                                           (_metrics_a_folder, "is a folder"), (_nested_too_deep, "metrics.json")])
def test_report_and_compare_refuse_a_damaged_record_in_one_line(cli, tiny_cifar_run, tmp_path, assert_user_error,
                                                                damage, words):
    """An integer too long to read, an accuracy outside [0, 1] or NaN, a folder in a file's place: one line."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_cifar_run[0], run)
    damage(run)
    assert_user_error(cli("report", run, "--no-figures"), words, "damaged")
    assert_user_error(cli("compare", run, tiny_cifar_run[0], "--figure", tmp_path / "c.png"), words, "damaged")


def test_an_error_about_a_path_with_brackets_shows_the_path(cli, tmp_path, assert_user_error):
    missing = tmp_path / "a [/x] b" / "best.safetensors"
    assert_user_error(cli("eval", missing), str(missing), "does not exist")


def test_report_shows_bracketed_names_and_paths(cli, bracketed_run, assert_ok):
    _, out, _ = bracketed_run
    result = cli("report", out, "--no-figures")
    assert_ok(result)
    assert str(out) in plain(result.stdout) and BRACKETED in plain(result.stdout)


# --- determinism and config precedence ----------------------------------------------------------

def without_timing(epochs):
    return [{k: v for k, v in e.items() if k not in ("seconds", "images_per_s")} for e in epochs]


def test_the_same_seed_gives_the_same_run(cli, tiny_cifar_run, tiny_cifar_session, tmp_path, assert_ok):
    first, _ = tiny_cifar_run
    assert_ok(train_tiny_cifar(cli, tiny_cifar_session, tmp_path / "again"))
    assert_ok(train_tiny_cifar(cli, tiny_cifar_session, tmp_path / "other", "--seed", 1))
    _, epochs_a, metrics_a = read_run(first)
    _, epochs_b, metrics_b = read_run(tmp_path / "again")
    _, epochs_c, metrics_c = read_run(tmp_path / "other")
    assert metrics_a == metrics_b
    assert without_timing(epochs_a) == without_timing(epochs_b)
    a, b = ckpt.load(first / "last.safetensors"), ckpt.load(tmp_path / "again" / "last.safetensors")
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert without_timing(epochs_a) != without_timing(epochs_c)
    assert not torch.equal(a.weight, ckpt.load(tmp_path / "other" / "last.safetensors").weight)


def test_train_config_of_a_run_repeats_it_in_a_new_folder(cli, tiny_cifar_session, tmp_path, monkeypatch, assert_ok):
    """The README: `imgcls train --config RUN/config.yaml` repeats the run; the run itself stays as it was."""
    monkeypatch.chdir(tmp_path)
    original = tmp_path / "original"
    assert_ok(train_tiny_cifar(cli, tiny_cifar_session, original, epochs=1))
    before = {p.name: p.read_bytes() for p in original.iterdir()}
    repeat = cli("train", "--config", original / "config.yaml", "--quiet")
    assert_ok(repeat)
    again = Path(json.loads(repeat.stdout)["run_dir"])
    assert again.parent == Path("runs") and again.name.startswith("cifar10-")
    assert {p.name: p.read_bytes() for p in original.iterdir()} == before  # untouched
    for name in ("best.safetensors", "last.safetensors"):
        a, b = ckpt.load(original / name), ckpt.load(again / name)
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert (again / "config.yaml").read_bytes() == before["config.yaml"]


def test_best_checkpoint_is_the_best_epoch_and_patience_stops(cli, tiny_cifar_session, tmp_path, assert_ok):
    """A rate high enough that the validation loss bottoms out early: best.safetensors must be that epoch."""
    out = tmp_path / "run"
    assert_ok(cli("train", "--dataset", "cifar10", "--data-dir", tiny_cifar_session, "--epochs", 8, "--batch-size", 32,
                  "--lr", 0.05, "--schedule", "constant", "--weight-decay", 0, "--patience", 2, "--no-refit",
                  "--device", "cpu", "--out", out, "--quiet", "--init", "default"))  # the rate suits nn.Linear's init
    _, epochs, metrics = read_run(out)
    best = metrics["best_epoch"]
    rule = min(epochs, key=lambda e: e["val_loss"])  # the lowest validation loss; first of equals wins
    assert best == rule["epoch"]
    assert best < len(epochs), "precondition: this run's best epoch should not be its last; change --lr"
    # stopped early: exactly `patience` epochs without a lower validation loss after the best
    assert len(epochs) == best + 2 < 8
    assert all(e["val_loss"] >= rule["val_loss"] * (1 - 1e-4) for e in epochs[best:])
    result = cli("eval", out / "best.safetensors", "--split", "val", "--device", "cpu", "--json")
    assert result.exit_code == 0, plain(result.output)
    assert json.loads(result.stdout)["val"]["top1"] == pytest.approx(epochs[best - 1]["val_top1"], abs=1e-9)
    last = cli("eval", out / "last.safetensors", "--split", "val", "--device", "cpu", "--json")
    assert json.loads(last.stdout)["val"]["loss"] == pytest.approx(epochs[-1]["val_loss"], rel=1e-6)
    assert ckpt.load(out / "best.safetensors").meta["epoch"] == best
    assert ckpt.load(out / "last.safetensors").meta["epoch"] == len(epochs)


def test_a_run_diverging_in_its_first_epoch_says_no_checkpoint_was_kept(cli, tiny_cifar_session, tmp_path,
                                                                          assert_user_error, assert_ok):
    out = tmp_path / "run"
    diverged = assert_user_error(train_tiny_cifar(cli, tiny_cifar_session, out, "--lr", 1e30), "diverged", "lower --lr",
                                 "no checkpoint was kept", "--overwrite")
    assert "last good checkpoints" not in diverged
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]
    refused = assert_user_error(train_tiny_cifar(cli, tiny_cifar_session, out), "already holds a run", "--overwrite")
    assert "--resume" not in refused  # nothing to resume
    assert_ok(train_tiny_cifar(cli, tiny_cifar_session, out, "--overwrite"))


def test_overwrite_replaces_a_run(cli, tiny_cifar_session, tmp_path, assert_user_error, assert_ok):
    out = tmp_path / "run"
    assert_ok(train_tiny_cifar(cli, tiny_cifar_session, out))
    refused = assert_user_error(train_tiny_cifar(cli, tiny_cifar_session, out, "--epochs", 1), "already holds a run",
                                "--overwrite")
    assert "--resume" not in refused  # a finished run cannot be resumed: no such advice
    assert len(read_run(out)[1]) == TINY_CIFAR_EPOCHS  # the refused run touched nothing
    assert_ok(train_tiny_cifar(cli, tiny_cifar_session, out, "--epochs", 1, "--overwrite"))
    assert len(read_run(out)[1]) == 1
    assert (out / "curves.png").is_file()
    # A replacing run that fails in its first epoch leaves only its own config: no figure of the old run.
    assert_user_error(train_tiny_cifar(cli, tiny_cifar_session, out, "--lr", 1e30, "--overwrite"), "diverged")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("where, words, then", [
    ("imgcls.training.train.prepare_once", ["interrupted before training began", "nothing was written",
                                   "run the same command again"], None),
    ("imgcls.training.engine.Engine.finish", ["training finished and checkpoints are whole", "final test evaluation",
                             "imgcls train --resume"], "resume"),
    ("imgcls.report.figures.write_run_figures", ["the run is finished", "interrupted while drawing figures",
                                          "imgcls report"], "report"),
])
def test_ctrl_c_outside_the_training_loop_says_where_the_run_stands(cli, tiny_cifar_session, tmp_path, monkeypatch,
                                                                    where, words, then, assert_ok):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr(where, ctrl_c)
    result = train_tiny_cifar(cli, tiny_cifar_session, out, epochs=1)
    monkeypatch.undo()
    stderr = " ".join(plain(result.stderr).split())
    assert result.exit_code == 130 and "Traceback" not in plain(result.output), plain(result.output)
    for word in words:
        assert word in stderr, stderr
    assert str(out) in stderr or then is None
    if then is None:
        assert not out.exists()
        assert_ok(train_tiny_cifar(cli, tiny_cifar_session, out, epochs=1))  # "the same command again" works
    elif then == "resume":
        assert not (out / "metrics.json").exists()
        assert_ok(cli("train", "--resume", out, "--quiet"))
        assert (out / "metrics.json").is_file() and (out / "curves.png").is_file()
    else:
        assert (out / "metrics.json").is_file() and not (out / "curves.png").exists()
        assert_ok(cli("report", out))
        assert all((out / name).is_file() for name in FIGURE_FILES)
    assert not (out / ".imgcls.lock").exists()


def test_a_diverged_run_is_never_offered_resume_but_a_lower_lr(cli, tiny_cifar_session, tmp_path, monkeypatch,
                                                                  assert_user_error):
    """The validation loss becomes NaN after epoch 2 (as a too-high --lr makes it): epoch 1's checkpoints stay,
    and every later message says how to go on: a new run with a lower --lr, since resuming repeats the NaN."""
    from imgcls.linear.stacked import Stack

    real_evaluate, calls = Stack.evaluate, []

    def evaluate(*args, **kwargs):
        metrics = real_evaluate(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            metrics[0].loss = math.nan
        return metrics

    out = tmp_path / "run"
    monkeypatch.setattr(Stack, "evaluate", evaluate)
    assert_user_error(train_tiny_cifar(cli, tiny_cifar_session, out, epochs=3), "diverged", "lower --lr")
    monkeypatch.undo()
    assert (out / "last.safetensors").is_file() and "diverged" in (out / "diverged.txt").read_text()
    report = " ".join(plain(cli("report", out, "--no-figures").stdout).split())
    assert "diverged" in report and "lower --lr" in report and "--resume" not in report
    assert f"--config {out / 'config.yaml'} --lr 0.0005" in report  # a tenth of the run's 0.005
    refused = assert_user_error(train_tiny_cifar(cli, tiny_cifar_session, out), "already holds a run that diverged",
                                "lower --lr", "--overwrite")
    assert "--resume" not in refused
    assert_user_error(cli("train", "--resume", out), "diverged", "lower --lr")
    as_json = json.loads(cli("report", out, "--json", "--no-figures").stdout)
    assert "diverged" in as_json["diverged"] and "--lr 0.0005" in as_json["retry"]


def test_report_and_predict_with_file_names_that_are_not_utf8(cli, tiny_cifar_run, cifar_jpeg, tmp_path, assert_ok):
    import shutil

    run = tmp_path / os.fsdecode(b"caf\xe9-run")  # Latin-1 bytes: not UTF-8
    shutil.copytree(tiny_cifar_run[0], run)
    report = cli("report", run, "--no-figures")  # (the figures need checkpoint.load to read such a path)
    assert_ok(report)
    assert "caf\ufffd-run" in plain(report.stdout) and "per-class test top-1" in plain(report.stdout)
    assert json.loads(cli("report", run, "--json", "--no-figures").stdout)["run_dir"] == str(run)
    photos = tmp_path / "photos"
    photos.mkdir()
    source = sorted((cifar_jpeg / "test" / "cat").glob("*.jpg"))[0]
    shutil.copy(source, photos / os.fsdecode(b"caf\xe9.jpg"))
    csv_file = tmp_path / os.fsdecode(b"pr\xe9dictions.csv")
    result = cli("predict", tiny_cifar_run[0], photos, "--csv", csv_file, "--top-k", 2)
    assert_ok(result)
    assert "caf\ufffd.jpg" in plain(result.stdout)
    rows = open(csv_file, "rb").read().splitlines()  # the file's name as the file system has it, byte for byte
    assert rows[0] == b"image,class_1,probability_1,class_2,probability_2" and len(rows) == 2
    assert rows[1].startswith(bytes(photos) + b"/caf\xe9.jpg,")


def test_skip_bad_images(cli, tiny_cifar, tmp_path, assert_user_error, assert_ok):
    (tiny_cifar / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg at all")
    assert_user_error(train_tiny_cifar(cli, tiny_cifar, tmp_path / "a"), "cannot read image", "broken.jpg",
                      "--skip-bad-images")
    assert_ok(train_tiny_cifar(cli, tiny_cifar, tmp_path / "b", "--skip-bad-images", "--epochs", 1))
    _, _, metrics = read_run(tmp_path / "b")
    assert metrics["test"]["count"] == 10 * TINY_TEST_PER_CLASS


def test_mixed_sizes_train_with_image_size(cli, tmp_path, assert_ok):
    layout = {"train": {"a": [(8, 8)] * 4 + [(12, 10)] * 2, "b": [(8, 8), (16, 16)] * 3},
              "test": {"a": [(9, 9)] * 2, "b": [(8, 8)] * 2}}
    root = write_image_folder(tmp_path / "data", layout)
    assert_ok(cli("train", "--dataset", "imagefolder", "--data-dir", root, "--image-size", 6, "--epochs", 1,
                  "--out", tmp_path / "run", "--quiet"))
    loaded = ckpt.load(tmp_path / "run" / "best.safetensors")
    assert loaded.input_shape == (3, 6, 6) and loaded.classes == ["a", "b"]


# --- user errors --------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a GPU")
def test_cuda_without_a_gpu(cli, tmp_path, assert_user_error):
    assert_user_error(cli("train", "--device", "cuda", "--out", tmp_path / "run"), "--device cuda", "no usable CUDA")
    assert not (tmp_path / "run").exists()


def test_missing_mnist(cli, tmp_path, assert_user_error):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(cli("train", "--dataset", "mnist", "--data-dir", empty, "--out", tmp_path / "run"),
                      "mnist not found", str(empty), "--data-dir")


def test_missing_image_folder(cli, tmp_path, assert_user_error):
    assert_user_error(cli("train", "--dataset", "imagefolder", "--data-dir", tmp_path / "nowhere", "--out",
                          tmp_path / "run"), "does not exist", "--data-dir")
    assert not (tmp_path / "run").exists()


def folder_error(cli, tmp_path, layout, *extra):
    root = write_image_folder(tmp_path / "data", layout)
    return cli("train", "--dataset", "imagefolder", "--data-dir", root, "--epochs", 1, "--out", tmp_path / "run",
               *extra)


def test_empty_class_folder(cli, tmp_path, assert_user_error):
    layout = {"train": {"a": [(8, 8)] * 4, "b": []}, "test": {"a": [(8, 8)], "b": [(8, 8)]}}
    assert_user_error(folder_error(cli, tmp_path, layout), "at least one image")


def test_missing_test_split(cli, tmp_path, assert_user_error):
    assert_user_error(folder_error(cli, tmp_path, {"train": SMALL_FOLDER["train"]}), "no test/ or val/ folder")


def test_val_folder_stands_in_for_test(cli, tmp_path, assert_ok):
    assert_ok(folder_error(cli, tmp_path, {"train": SMALL_FOLDER["train"], "val": SMALL_FOLDER["test"]}, "--quiet"))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["count"] == 6


def test_train_and_test_classes_differ(cli, tmp_path, assert_user_error):
    layout = {"train": SMALL_FOLDER["train"], "test": {"circle": [(8, 8)], "square": [(8, 8)], "moon": [(8, 8)]}}
    assert_user_error(folder_error(cli, tmp_path, layout), "classes differ", "star", "moon")


def test_images_of_different_sizes(cli, tmp_path, assert_user_error):
    layout = {"train": {"a": [(8, 8)] * 3 + [(10, 12)], "b": [(8, 8)] * 4}, "test": {"a": [(8, 8)], "b": [(8, 8)]}}
    assert_user_error(folder_error(cli, tmp_path, layout), "differ in size", "12 wide, 10 high", "--image-size")


def test_too_few_training_images(cli, tmp_path, assert_user_error):
    layout = {"train": {"a": [(8, 8)] * 2, "b": [(8, 8)]}, "test": {"a": [(8, 8)], "b": [(8, 8)]}}
    assert_user_error(folder_error(cli, tmp_path, layout), "too few")


def test_named_dataset_folder_with_other_classes(cli, tmp_path, assert_user_error):
    root = write_image_folder(tmp_path / "data", {
        "train": {"cat": [(32, 32)] * 3, "dog": [(32, 32)] * 3}, "test": {"cat": [(32, 32)], "dog": [(32, 32)]}})
    assert_user_error(cli("train", "--dataset", "cifar10", "--data-dir", root, "--out", tmp_path / "run"),
                      "does not hold cifar10", "--dataset imagefolder")


def test_class_weights_of_the_wrong_length(cli, tiny_cifar_session, tmp_path, assert_user_error):
    assert_user_error(train_tiny_cifar(cli, tiny_cifar_session, tmp_path / "run", "--class-weights", "1,2"),
                      "--class-weights has 2 numbers", "10 classes")


def test_a_run_refused_for_bad_class_weights_can_be_repeated_in_the_same_folder(cli, tiny_cifar_session, tmp_path,
                                                                               assert_ok):
    out = tmp_path / "run"
    assert train_tiny_cifar(cli, tiny_cifar_session, out, "--class-weights", "1,2").exit_code == 2
    assert_ok(train_tiny_cifar(cli, tiny_cifar_session, out, "--epochs", 1))


def test_a_limit_too_small_for_a_validation_split_is_a_user_error(cli, mnist_root, tmp_path, assert_user_error):
    assert_user_error(cli("train", "--dataset", "mnist", "--data-dir", mnist_root, "--limit", 10, "--epochs", 1,
                          "--device", "cpu", "--out", tmp_path / "run"), "--limit")


# --- checkpoint errors --------------------------------------------------------------------------

@pytest.fixture
def bad_checkpoints(tmp_path, tiny_cifar_run):
    out, _ = tiny_cifar_run
    real = (out / "best.safetensors").read_bytes()
    random_bytes = tmp_path / "random.safetensors"
    random_bytes.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8,
                                           generator=torch.Generator().manual_seed(0)).numpy().tobytes())
    truncated = tmp_path / "half.safetensors"
    truncated.write_bytes(real[: len(real) // 2])
    return {"missing": (tmp_path / "nope.safetensors", ["does not exist"]),
            "random": (random_bytes, ["not a readable imgcls checkpoint"]),
            "truncated": (truncated, ["not a readable imgcls checkpoint", "truncated"]),
            "folder-without-run": (tmp_path, ["does not exist", "best.safetensors"])}


@pytest.mark.parametrize("kind", ["missing", "random", "truncated", "folder-without-run"])
@pytest.mark.parametrize("command", ["eval", "export-templates"])
def test_bad_checkpoints_are_user_errors(cli, bad_checkpoints, kind, command, tmp_path, assert_user_error):
    path, words = bad_checkpoints[kind]
    extra = ["--out", tmp_path / "tpl"] if command == "export-templates" else ["--device", "cpu"]
    assert_user_error(cli(command, path, *extra), str(path.name), *words)
    assert not (tmp_path / "tpl").exists()


def test_a_safetensors_file_that_is_not_an_imgcls_checkpoint(cli, tmp_path, assert_user_error):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    assert_user_error(cli("eval", path), "not an imgcls checkpoint")


def test_eval_against_data_with_other_classes(cli, tmp_path, assert_user_error, assert_ok):
    first = write_image_folder(tmp_path / "first", SMALL_FOLDER)
    assert_ok(cli("train", "--dataset", "imagefolder", "--data-dir", first, "--epochs", 1, "--out", tmp_path / "run",
                  "--quiet"))
    other = write_image_folder(tmp_path / "other", {
        split: {"x" + name: sizes for name, sizes in classes.items()} for split, classes in SMALL_FOLDER.items()})
    assert_user_error(cli("eval", tmp_path / "run", "--data-dir", other, "--device", "cpu"),
                      "checkpoint was trained on imagefolder", "its class 0 is 'xcircle'", "checkpoint's is 'circle'",
                      "--data-dir")


@pytest.mark.parametrize("args, words", [
    (["eval", "{ckpt}", "--split", "training"], ["unknown split 'training'", "did you mean 'train'"]),
    (["export-templates", "{ckpt}", "--out", "{tmp}", "--size", "0"], ["--size", "at least 1"]),
    (["export-templates", "{ckpt}", "--out", "{tmp}", "--size", "1000000"], ["--size 1000000", "memory",
                                                                             "smaller --size"]),
    (["export-templates", "{ckpt}", "--out", "{tmp}", "--scale", "global"], ["unknown scale 'global'"]),
])
def test_bad_eval_and_export_options(cli, tiny_cifar_run, tmp_path, args, words, assert_user_error):
    out, _ = tiny_cifar_run
    filled = [a.format(ckpt=out / "best.safetensors", tmp=tmp_path / "tpl") for a in args]
    assert_user_error(cli(*filled), *words)


def test_eval_with_an_unknown_device(cli, tiny_cifar_run, assert_user_error):
    out, _ = tiny_cifar_run
    assert_user_error(cli("eval", out, "--device", "tpu"), "unknown device")


# --- the module entry point, in a real process ----------------------------------------------------

@pytest.mark.parametrize("world", [None, "1", "2"])
def test_the_process_exits_with_its_output_flushed_but_without_finalizing(world):
    """distributed.exit_process: the exit code and the flushed output, but no interpreter finalization (a second
    of tearing down torch here; under torchrun, gloo's threads could abort the process)."""
    code = ("import atexit, os, sys\nfrom imgcls import distributed\n"
            "atexit.register(lambda: print('finalized'))\n"
            + (f"os.environ['WORLD_SIZE'] = {world!r}\n" if world else "")
            + "print('done', end='')\nprint('and', end='', file=sys.stderr)\ndistributed.exit_process(3)")
    done = run_python("-c", code)
    assert done.returncode == 3, done.stderr
    assert (done.stdout, done.stderr) == ("done", "and")


def test_under_a_profiler_or_with_children_running_the_process_exits_normally():
    """cProfile and coverage write their data while Python finalizes, and multiprocessing ends its children."""
    code = ("import atexit, multiprocessing, sys, time\nfrom imgcls import distributed\n"
            "atexit.register(lambda: print('finalized'))\n{}\ndistributed.exit_process(3)")
    profiled = run_python("-c", code.format("sys.setprofile(lambda *args: None)"))
    children = run_python("-c", code.format("multiprocessing.Process(target=time.sleep, args=(60,), daemon=True)"
                                            ".start()"), timeout=30)
    assert [done.returncode for done in (profiled, children)] == [3, 3], profiled.stderr + children.stderr
    assert profiled.stdout == children.stdout == "finalized\n"


def test_python_m_imgcls_user_error_exits_2_without_traceback(tmp_path):
    done = run_python("-m", "imgcls", "train", "--lr", "0", "--out", tmp_path / "run")
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and "--lr" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr + done.stdout


def test_python_m_imgcls_bad_checkpoint_exits_2_without_traceback(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00" * 100)
    done = run_python("-m", "imgcls", "eval", path)
    assert done.returncode == 2 and done.stderr.startswith("error:") and "junk.safetensors" in done.stderr
    assert "Traceback" not in done.stderr


def test_python_m_imgcls_eval_matches_the_run(mnist_run):
    out, _ = mnist_run
    done = run_python("-m", "imgcls", "eval", out / "best.safetensors", "--device", "cpu", "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)["test"]
    expected = json.loads((out / "metrics.json").read_text())["test"]
    assert got["top1"] == pytest.approx(expected["top1"], abs=1e-6)
    assert got["loss"] == pytest.approx(expected["loss"], abs=1e-6)


# --- the terminal: progress bar, epoch lines, tables that fit, metrics.csv, --print-config

def _terminal(width: int = 80):
    import io

    from rich.console import Console

    text = io.StringIO()
    return Console(file=text, width=width, force_terminal=True, color_system=None), text


def test_progress_bar_shows_no_nan_before_the_first_step_and_has_an_eta():
    from imgcls.report.report import Reporter

    console, text = _terminal()
    reporter = Reporter(console=console)
    reporter.epoch_start(0, 10)
    reporter.progress.refresh()
    first = plain(text.getvalue())
    reporter.step(1, 2.5, 100.0, images=32)
    reporter.progress.refresh()
    reporter.close()
    assert "epoch 1" in first and "nan" not in first.lower()
    assert "eta" in first
    assert "loss 2.5000" in plain(text.getvalue())


def test_progress_bar_speed_is_recent_not_cumulative():
    from imgcls.report.report import RECENT_SECONDS, RecentRate

    rate = RecentRate()
    start = rate.started
    assert rate.add(100, now=start + 10) == pytest.approx(10.0)  # a slow start
    recent = rate.add(6100, now=start + 10 + RECENT_SECONDS + 1)  # then 1000 images a second
    assert recent == pytest.approx(1000.0)  # the cumulative rate would be 6100 / 16 = 381


@pytest.mark.parametrize("record", [
    dict(epoch=7, train_loss=1.2345678, train_top1=0.4123, val_loss=1.5555, val_top1=0.4012, val_top5=0.8912,
         seconds=12.34),
    dict(epoch=42, train_loss=9.87654, train_top1=0.0123, val_loss=10.98765, val_top1=0.0099, val_top5=0.05,
         seconds=1234.5),
    dict(epoch=999, train_loss=12345.678, train_top1=1.0, val_loss=99999.5, val_top1=1.0, val_top5=1.0,
         seconds=99999.9),
])
def test_epoch_line_fits_80_columns_and_holds_every_number(record):
    from imgcls.report.report import epoch_line, loss_text

    line = epoch_line(record, improved=True)
    assert len(line) <= 80, line
    for number in (f"{record['epoch']}", loss_text(record['train_loss']), f"{record['train_top1']:.2%}",
                   loss_text(record['val_loss']), f"{record['val_top1']:.2%}", f"{record['val_top5']:.2%}",
                   f"{record['seconds']:.1f}s"):
        assert number in line
    assert line.endswith(" *")


@pytest.mark.parametrize("width", [60, 80, 120])
def test_report_epochs_table_fits_the_width_and_never_cuts_a_number(width):
    from imgcls.report.runreport import epochs_table

    record = dict(epoch=12, train_loss=1.23456, train_top1=0.41234, val_loss=1.5555, val_top1=0.40123,
                  val_top5=0.891, lr=0.0012345, lr_last=0.001, seconds=123.45)
    console, text = _terminal(width)
    console.print(epochs_table([record], 12, width))
    shown = plain(text.getvalue())
    assert max(len(line) for line in shown.splitlines()) <= width
    assert "…" not in shown
    for number in ("12 *", "1.2346", "41.23%", "1.5555", "40.12%", "89.10%"):
        assert number in shown
    if width >= 120:
        assert "0.00123" in shown and "123.45" in shown and "not shown" not in shown
    else:
        assert "not shown at" in shown


def test_sweep_table_at_80_columns_keeps_every_option_and_loss_whole():
    """Points that differ only in weight decay, one of them diverged with a huge loss: every key=value and the loss
    whole, lines of at most 80 characters."""
    from imgcls.report.report import sweep_table

    def record(point, decay, val, loss, diverged=False):
        return {"point": point, "options": {"weight_decay": decay, "lr": 0.005}, "val_top1": val, "val_loss": loss,
                "test_top1": val, "best_epoch": 3, "epochs_run": 5, "diverged": diverged}

    records = [record(0, 0.0003, 0.41, 1.7), record(1, 0.03, 0.40, 1.71), record(2, 3.0, 0.1, 1061806524.0, True)]
    console, text = _terminal(80)
    console.print(sweep_table(records, best=0))
    shown = plain(text.getvalue())
    assert max(len(line) for line in shown.splitlines()) <= 80, shown
    for whole in ("weight_decay=0.0003", "weight_decay=0.03", "weight_decay=3.0", "lr=0.005", "1.0618e+09",
                  "chosen", "diverged", "41.00%"):
        assert whole in shown, shown
    assert "…" not in shown


def test_metrics_csv_holds_the_epochs_records(tiny_cifar_run):
    import csv

    out, _ = tiny_cifar_run
    records = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(records) == TINY_CIFAR_EPOCHS
    for row, record in zip(rows, records):
        assert list(row) == list(record)
        assert {key: float(value) for key, value in row.items()} == pytest.approx(record)


# --- readable class names: words.txt / classes.txt beside the class folders, --class-names

ID_FOLDER = {split: {f"n0{i}": [(8, 8)] * count for i in range(3)} for split, count in (("train", 6), ("test", 2))}
WORDS = "n00\tgoldfish, Carassius auratus\nn01\tcrane\nn02\tcrane\nn99\tnot a class here\n"
READABLE = ["goldfish", "crane (n01)", "crane (n02)"]  # ImageNet has two cranes: the ids keep them apart


def train_id_folder(cli, root, out):
    return cli("train", "--dataset", "imagefolder", "--data-dir", root, "--epochs", 1, "--device", "cpu",
               "--batch-size", 6, "--out", out)


def test_a_words_file_beside_the_class_folders_names_the_classes(cli, tmp_path, assert_ok):
    root = write_image_folder(tmp_path / "data", ID_FOLDER)
    (root / "words.txt").write_text(WORDS)
    assert_ok(train_id_folder(cli, root, tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["classes"] == READABLE
    assert ckpt.load(tmp_path / "run" / "best.safetensors").classes == READABLE
    report = cli("report", tmp_path / "run", "--no-figures")
    assert_ok(report)
    assert "goldfish" in plain(report.stdout) and "n00" not in plain(report.stdout)


def test_class_names_option_relabels_reports_figures_and_templates(cli, tmp_path, assert_ok, assert_user_error):
    root = write_image_folder(tmp_path / "data", ID_FOLDER)
    assert_ok(train_id_folder(cli, root, tmp_path / "run"))  # no names file: the ids
    names = tmp_path / "classes.txt"
    names.write_text("goldfish\ncrane\nheron\n")
    report = cli("report", tmp_path / "run", "--json", "--class-names", names)
    assert_ok(report)
    assert list(json.loads(report.stdout)["per_class"]) == ["goldfish", "crane", "heron"]
    assert_ok(cli("export-templates", tmp_path / "run", "--out", tmp_path / "tpl", "--class-names", names))
    assert {p.name for p in (tmp_path / "tpl").iterdir()} == {"goldfish.png", "crane.png", "heron.png",
                                                               "templates.png"}
    assert "--class-names" in plain(cli("report", "--help").output)
    names.write_text("goldfish\ncrane\n")
    assert_user_error(cli("report", tmp_path / "run", "--class-names", names), "names 2 classes", "3")
    assert_user_error(cli("export-templates", tmp_path / "run", "--out", tmp_path / "t", "--class-names",
                          tmp_path / "nowhere.txt"), "does not exist")
    (tmp_path / "words.txt").write_text("n00\tgoldfish\n")
    assert_user_error(cli("report", tmp_path / "run", "--class-names", tmp_path / "words.txt"),
                      "does not name 2 of the 3 classes")


def test_a_words_file_that_misses_classes_is_refused_when_training(cli, tmp_path, assert_user_error):
    root = write_image_folder(tmp_path / "data", ID_FOLDER)
    (root / "train" / "classes.txt").write_text("goldfish\n")
    assert_user_error(train_id_folder(cli, root, tmp_path / "run"), "classes.txt", "names 1 classes", "3")


def test_progress_bar_says_epoch_n_of_m_and_the_whole_run_s_eta_in_80_columns():
    import time

    from imgcls.report.report import Reporter

    console, text = _terminal()
    reporter = Reporter(console=console)
    reporter.epoch_start(2, 352, epochs=100)
    reporter.step(100, 2.5, 100.0, images=12800)
    time.sleep(0.05)
    reporter.step(200, 2.25, 1000.0, images=25600)
    reporter.progress.refresh()
    reporter.close()
    shown = plain(text.getvalue())
    assert "epoch 3/100" in shown and "200/352" in shown and "run ≤ " in shown and "eta" in shown
    assert "…" not in shown and max(len(line) for line in shown.splitlines()) <= 80, shown


def test_notes_wrap_between_words_on_a_terminal_and_stay_whole_in_a_pipe():
    import io

    from rich.console import Console

    from imgcls.report.report import EPOCH_LEGEND, Reporter

    console, text = _terminal()
    Reporter(console=console).note(EPOCH_LEGEND)  # 85 characters
    lines = plain(text.getvalue()).splitlines()
    assert len(lines) == 2 and max(len(line) for line in lines) <= 80
    assert " ".join(line.strip() for line in lines) == EPOCH_LEGEND  # cut between words, none split
    piped = io.StringIO()
    Reporter(console=Console(file=piped, width=80, color_system=None)).note(EPOCH_LEGEND)
    assert piped.getvalue() == EPOCH_LEGEND + "\n"


def test_a_three_class_run_names_its_top_k_top_3_never_top_5(cli, assert_ok, image_folder, tmp_path):
    """With fewer than 5 classes top-k is top-3: the epoch lines, the tables, metrics.json, `report` and `eval` say
    so (a run folder of older imgcls, with `top5` keys, still reads)."""
    three = {split: {name: [(8, 8)] * count for name in ("ant", "bee", "cow")}
             for split, count in (("train", 8), ("test", 3))}
    root = image_folder(tmp_path / "data", three)
    out = tmp_path / "run"
    result = cli("train", "--dataset", "imagefolder", "--data-dir", root, "--epochs", 2, "--batch-size", 4, "--lr",
                 0.01, "--device", "cpu", "--out", out)
    assert_ok(result)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["k"] == 3 and "top3" in metrics["test"] and "top5" not in metrics["test"]
    shown = [plain(result.output), plain(cli("report", out, "--no-figures").output),
             plain(cli("eval", out, "--device", "cpu").output), (out / "report.html").read_text()]
    for text in shown:
        assert "top-3" in text and "top-5" not in text and "top5" not in text
    # an older run folder: metrics.json's top-k was `top5` whatever k was
    metrics["test"]["top5"] = metrics["test"].pop("top3")
    metrics["val"]["top5"] = metrics["val"].pop("top3")
    (out / "metrics.json").write_text(json.dumps(metrics))
    older = plain(cli("report", out, "--no-figures").output)
    assert "top-3" in older and "top-5" not in older


def test_report_marks_changed_options_in_plain_text_and_shows_precision_recall_f1(cli, assert_ok, tiny_cifar_run,
                                                                                   monkeypatch):
    """Bold is lost in a log: a `*` marks what differs from the defaults. Precision, recall and F1 are in the
    terminal too (`report`, `eval --per-class`), not only in report.html."""
    monkeypatch.setenv("COLUMNS", "120")
    out, _ = tiny_cifar_run
    result = cli("report", out, "--no-figures")
    assert_ok(result)
    lines = plain(result.stdout).splitlines()
    assert "config (*: not the default)" in plain(result.stdout)
    assert any("*" in line and "optim.lr" in line and "0.005" in line for line in lines)  # given: changed
    assert any("optim.momentum" in line and "*" not in line for line in lines)  # the default
    metrics = json.loads((out / "metrics.json").read_text())
    from imgcls.report.htmlreport import per_class_scores

    scores = per_class_scores(metrics["test_detail"]["confusion"])
    for shown in (plain(result.stdout), plain(cli("eval", out, "--device", "cpu", "--per-class").stdout)):
        assert "precision" in shown and "F1" in shown
        row = next(line for line in shown.splitlines() if "airplane" in line)
        assert f"{scores[0]['precision']:.2%}" in row and f"{scores[0]['f1']:.3f}" in row


def test_report_on_a_read_only_run_folder_still_prints_and_notes_the_figures(cli, small_run, monkeypatch):
    """The figures cannot be redrawn in a read-only run folder: the report is printed all the same, with one
    note line, and exit code 0."""
    import errno

    run = small_run[1]
    real_open = os.open

    def read_only(path, *args, **kw):
        if Path(path).parent == run and str(path).endswith(".tmp"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", read_only)
    result = cli("report", run)
    assert result.exit_code == 0, plain(result.output)
    assert "top-1" in plain(result.stdout).lower()
    notes = [line for line in plain(result.stderr).splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "figures were not redrawn" in notes[0] and str(run) in notes[0], result.stderr
    assert "Traceback" not in result.output


def test_a_ctrl_c_while_report_redraws_says_the_files_are_whole(cli, small_run, monkeypatch):
    """`imgcls report` rewrites the run's figures: a Ctrl-C then says that each file is whole (redrawn or as it
    was) and how to draw them again, not that nothing was written."""
    from imgcls.report import figures

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(figures, "write_run_figures", interrupted)
    result = cli("report", small_run[1], "--html")
    last = plain(result.stderr).strip().splitlines()[-1]
    assert result.exit_code == 130 and "Traceback" not in result.output, result.output
    assert "each file" in last and "is whole" in last and f"imgcls report {small_run[1]} --html" in last, last


def test_report_of_a_sweep_folder_points_to_its_best_run_and_table(cli, tmp_path, assert_user_error):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.yaml").write_text("grid: {}\n")
    assert_user_error(cli("report", sweep), "is a sweep folder", str(sweep / "best"), str(sweep / "sweep.csv"))
