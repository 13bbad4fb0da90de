"""The run folder: an --out that cannot be one is refused, a folder that is not a run is left alone (and --overwrite
keeps what imgcls did not write), a folder in use by another imgcls process is refused naming it, and the temporary
files of a killed writer are removed by the next report or run."""

import shutil
import subprocess
from pathlib import Path

from conftest import start_python, train_image_folder


def test_out_below_a_file(cli, small_run, tmp_path, assert_user_error):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(train_image_folder(cli, small_run[0], blocker / "run"), "is a file, not a folder", "--out")
    assert_user_error(train_image_folder(cli, small_run[0], blocker), "is a file, not a folder", "--out")


def test_out_that_cannot_be_created(cli, small_run, tmp_path, assert_user_error):
    error = assert_user_error(train_image_folder(cli, small_run[0], "/proc/imgcls-run"), "/proc/imgcls-run", "--out")
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
    code = ("import sys; from pathlib import Path; from imgcls.rundir import RunDir\n"
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
