"""The run folder (rundir.py) owns its files: their names, the default folder's name, and reading back what a run
wrote, each file checked, a damaged one refused in one line that names it."""

import json
import re
import time
from pathlib import Path

import pytest

from imgcls.errors import UserError
from imgcls.rundir import FIGURE_FILES, OWN_FILES, OWN_FOLDERS, REPORT_PAGE, RUN_FILES, RunDir

EPOCH = {"epoch": 1, "train_loss": 2.0, "train_top1": 0.25, "val_loss": 1.5, "val_top1": 0.5, "val_top5": 0.75,
         "lr": 0.1, "seconds": 1.5, "lr_last": 0.05}
SPLIT = {"loss": 1.25, "top1": 0.5, "top5": 1.0, "k": 2, "count": 4}
METRICS = {"best_epoch": 1, "val": SPLIT, "test": SPLIT, "classes": ["cat", "dog"],
           "test_detail": {"per_class": [0.5, 0.5], "confusion": [[1, 1], [1, 1]]}}


def one_line_error(call) -> str:
    with pytest.raises(UserError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.fixture
def run(tmp_path) -> RunDir:
    """A run folder written by RunDir's own writers."""
    run = RunDir(tmp_path / "run")
    run.start()
    run.write_config({"optim": {"lr": 0.5}, "output": {"out": "somewhere"}})
    run.write_epochs([EPOCH, {**EPOCH, "epoch": 2, "images_per_s": 10.0}])
    run.write_metrics(METRICS)
    return run


def test_what_the_writers_write_the_readers_read_back(run):
    assert run.read_epochs() == [EPOCH, {**EPOCH, "epoch": 2, "images_per_s": 10.0}]
    assert run.read_metrics() == METRICS
    assert run.read_config() == {"optim": {"lr": 0.5}, "output": {"out": None}}  # a repeat goes to a new folder
    assert run.read_diverged() is None
    run.mark_diverged("the loss became nan\n\n")
    assert run.read_diverged() == "the loss became nan"
    header, first, second = run.metrics_csv.read_text().splitlines()
    assert header == ",".join([*EPOCH, "images_per_s"]) and first.endswith(",") and second.endswith(",10.0")


def test_class_names_rename_the_metrics_classes(run, tmp_path):
    names = tmp_path / "classes.txt"
    names.write_text("a cat\na dog\n")
    assert run.read_metrics(names)["classes"] == ["a cat", "a dog"]
    assert run.read_metrics()["classes"] == ["cat", "dog"]  # the file itself is left as it was


@pytest.mark.parametrize("content, words", [
    ("{not json", ["metrics.json", "not valid JSON", "damaged"]),
    (b"\xff\xfe", ["metrics.json", "not valid JSON", "damaged"]),
    ('{"best_epoch": 1}', ["metrics.json", "lacks 'val'", "damaged"]),
    ("[]", ["metrics.json", "is a list, not a JSON object", "damaged"]),
])
def test_a_damaged_metrics_file_is_one_line_that_names_it(run, content, words):
    if isinstance(content, bytes):
        run.metrics.write_bytes(content)
    else:
        run.metrics.write_text(content)
    message = one_line_error(run.read_metrics)
    assert all(word in message for word in words), message


@pytest.mark.parametrize("content, words", [
    ("{not json\n", ["epochs.jsonl", "not one JSON object a line", "damaged"]),
    (json.dumps({**EPOCH, "val_top1": "high"}) + "\n", ["epochs.jsonl", "line 1: 'val_top1' is text", "damaged"]),
])
def test_a_damaged_epochs_file_is_one_line_that_names_it(run, content, words):
    run.epochs.write_text(content)
    message = one_line_error(run.read_epochs)
    assert all(word in message for word in words), message


def test_config_yaml_missing_or_damaged(run, tmp_path):
    run.config.write_text("optim: [unclosed\n")
    message = one_line_error(run.read_config)
    assert "config.yaml" in message and "not valid YAML" in message and "the run folder is damaged" in message
    run.config.unlink()
    assert "not a run folder (no config.yaml)" in one_line_error(run.read_config)
    assert "does not exist" in one_line_error(lambda: RunDir.existing(tmp_path / "nowhere"))
    assert RunDir.existing(run.path) == run


def test_every_file_it_names_is_one_a_new_run_replaces(run):
    """A new run in the folder clears imgcls's own files: a file RunDir names but OWN_FILES left out would outlive
    the run it belongs to."""
    named = [getattr(run, name) for name, value in vars(RunDir).items() if isinstance(value, property)]
    assert len(named) == 12
    assert all(path.parent == run.path and path.name in (*OWN_FILES, *OWN_FOLDERS) for path in named)
    assert {path.name for path in named} >= {*RUN_FILES, *FIGURE_FILES, REPORT_PAGE}


def test_the_default_folder_is_named_after_the_dataset_and_the_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = time.strftime("%Y%m%d-%H%M%S")
    run = RunDir.for_new_run(None, "mnist", overwrite=False)
    after = time.strftime("%Y%m%d-%H%M%S")
    assert run.path.parent == Path("runs") and not run.path.exists()  # nothing is made yet
    stamp = re.fullmatch(r"mnist-(\d{8}-\d{6})", run.path.name)
    assert stamp and before <= stamp[1] <= after


def test_two_runs_in_one_second_get_two_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda pattern: "20261202-193000")
    names = []
    for _ in range(3):
        run = RunDir.for_new_run(None, "cifar10", overwrite=False)
        run.start()
        names.append(run.path.name)
    assert names == ["cifar10-20261202-193000", "cifar10-20261202-193000-2", "cifar10-20261202-193000-3"]
    assert RunDir.for_new_run("given", "cifar10", overwrite=False).path.name == "given"  # --out wins
