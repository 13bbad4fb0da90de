"""The run folder (rundir.py) owns its files: their names, the default folder's name, and reading back what a run
wrote, each file checked, a damaged one refused in one line that names it. An --out that cannot be one is refused, a
folder that is not a run is left alone (and --overwrite keeps what imgcls did not write), a folder in use by another
imgcls process is refused naming it, and the temporary files of a killed writer are removed by the next report or run."""

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import start_python, train_image_folder
from imgcls.errors import UserError
from imgcls.runs.rundir import FIGURE_FILES, OWN_FILES, OWN_FOLDERS, REPORT_PAGE, RUN_FILES, RunDir

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
    # keys an older run lacks are checked when they are there (the fuzz test found a list in lr_last)
    (json.dumps({**EPOCH, "lr_last": []}) + "\n", ["epochs.jsonl", "line 1: 'lr_last' is", "damaged"]),
    (json.dumps({**EPOCH, "images_per_s": "fast"}) + "\n", ["epochs.jsonl", "'images_per_s' is text", "damaged"]),
])
def test_a_damaged_epochs_file_is_one_line_that_names_it(run, content, words):
    run.epochs.write_text(content)
    message = one_line_error(run.read_epochs)
    assert all(word in message for word in words), message


def test_keys_an_older_run_lacks_may_be_missing_or_null(run):
    old = {key: value for key, value in EPOCH.items() if key != "lr_last"}
    run.epochs.write_text(json.dumps(old) + "\n" + json.dumps({**EPOCH, "lr_last": None, "epoch": 2}) + "\n")
    assert [record["epoch"] for record in run.read_epochs()] == [1, 2]


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
    assert len(named) == 15
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


def test_out_below_a_file(cli, small_run, tmp_path, assert_user_error):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(train_image_folder(cli, small_run[0], blocker / "run"), "is a file, not a folder", "--out")
    assert_user_error(train_image_folder(cli, small_run[0], blocker), "is a file, not a folder", "--out")


def test_out_that_cannot_be_created(cli, small_run, tmp_path, assert_user_error):
    error = assert_user_error(train_image_folder(cli, small_run[0], "/proc/imgcls-run"), "/proc/imgcls-run", "--out")
    assert "cannot create" in error or "cannot write in" in error


def test_a_folder_that_is_not_a_run_is_refused_and_overwrite_keeps_what_imgcls_did_not_write(cli, small_run, tmp_path,
                                                                                           assert_user_error,
                                                                                           assert_ok):
    mine = tmp_path / "mine"
    users = {"notes.txt": b"my notes", "templates/a.png": b"my picture", "tensorboard/events": b"my log",
             "curves.png": b"my curves"}
    for name, content in users.items():
        (mine / name).parent.mkdir(parents=True, exist_ok=True)
        (mine / name).write_bytes(content)
    assert_user_error(train_image_folder(cli, small_run[0], mine), "not empty and not a run folder", "notes.txt",
                      "--overwrite")
    assert all((mine / name).read_bytes() == content for name, content in users.items())  # nothing touched
    (tmp_path / "empty").mkdir()
    assert_ok(train_image_folder(cli, small_run[0], tmp_path / "empty"))
    assert_ok(train_image_folder(cli, small_run[0], mine, "--overwrite"))
    assert (mine / "metrics.json").is_file() and (mine / "curves.png").read_bytes() != b"my curves"
    for name in ("notes.txt", "templates/a.png", "tensorboard/events"):
        assert (mine / name).read_bytes() == users[name], f"{name} of the user's was lost"
    # In a run folder, a new run replaces the old run's files (templates/ exported there too) and keeps the rest.
    assert_ok(train_image_folder(cli, small_run[0], mine, "--overwrite", "--epochs", 2))
    assert (mine / "notes.txt").read_bytes() == b"my notes" and not (mine / "templates").exists()
    assert len((mine / "epochs.jsonl").read_text().splitlines()) == 2


def hold_run_folder(folder: Path) -> subprocess.Popen:
    """Another process that holds `folder` as a run does, until its stdin closes."""
    code = ("import sys; from pathlib import Path; from imgcls.runs.rundir import RunDir\n"
            "with RunDir(Path(sys.argv[1])).locked():\n    print('locked', flush=True); sys.stdin.read()")
    holder = start_python("-c", code, folder, stdin=subprocess.PIPE, stderr=None)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_run_folder_in_use_by_another_process_is_refused_naming_it(cli, small_run, tmp_path, assert_user_error,
                                                                      assert_ok):
    root, finished = small_run
    out = tmp_path / "run"
    holder = hold_run_folder(out)
    try:
        assert_user_error(train_image_folder(cli, root, out), "in use by another imgcls process", f"pid {holder.pid}")
        assert sorted(p.name for p in out.iterdir()) == [".imgcls.lock"]  # the refused run wrote nothing
    finally:
        holder.stdin.close()
        holder.wait(30)
    assert not out.exists()  # the holder made the folder, wrote nothing, and removed it again
    assert_ok(train_image_folder(cli, root, out))
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


def start_writer(folder: Path) -> subprocess.Popen:
    """A process part-way through writing folder/curves.png (atomically), waiting there."""
    code = ("import sys, time; from pathlib import Path; from imgcls.files import write_atomic\n"
            "def slow(temporary):\n    temporary.write_bytes(b'half a png'); print('writing', flush=True); "
            "time.sleep(120)\n"
            "write_atomic(Path(sys.argv[1]) / 'curves.png', slow)")
    writer = start_python("-c", code, folder, stderr=None)
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
