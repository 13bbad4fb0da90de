"""Writing files (files.py): atomically, with the mode open() would give under the umask, and a full disk or a
failing writer leaves the previous file whole with no temporary file; a full disk during training keeps the last
good checkpoint and the run resumes as if it had never failed."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from conftest import run_python, train_image_folder, train_tiny_cifar
from imgcls.runs import checkpoint as ckpt
from imgcls.errors import UserError
from imgcls.files import write_atomic, write_json_atomic, write_text_atomic


def no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


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
        assert_ok(train_image_folder(cli, small_run[0], out))
    finally:
        os.umask(previous)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in out.iterdir()}
    assert set(modes) >= {"best.safetensors", "last.safetensors", "metrics.json", "curves.png"}
    assert set(modes.values()) == {oct(0o664)}, modes


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
    assert_user_error(train_tiny_cifar(cli, tiny_cifar_session, out, epochs=3), "cannot write", "last.safetensors",
                      "No space left on device")
    monkeypatch.undo()
    assert ckpt.load(out / "last.safetensors").meta["epoch"] == 1
    assert ckpt.load(out / "best.safetensors").meta["epoch"] in (1, 2)
    assert no_temporary_files(out) and not (out / "metrics.json").exists()

    assert_ok(cli("train", "--resume", out, "--quiet"))
    whole = tmp_path / "whole"
    assert_ok(train_tiny_cifar(cli, tiny_cifar_session, whole, "--quiet", epochs=3))
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
            "from imgcls.runs import checkpoint as ckpt\n"
            "from imgcls.errors import UserError\n"
            "saved = ckpt.load(Path(sys.argv[1]))\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (len(Path(sys.argv[1]).read_bytes()) // 2,) * 2)\n"
            "try:\n"
            "    ckpt.save(Path(sys.argv[1]), saved)\n"
            "except UserError as error:\n"
            "    print(error)\n")
    done = run_python("-c", code, target)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "cannot write" in done.stdout and "last.safetensors" in done.stdout and "left as it was" in done.stdout
    assert target.read_bytes() == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
