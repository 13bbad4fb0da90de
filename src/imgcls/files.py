"""Atomic file writes: a temporary file beside the target, flushed and fsynced, then renamed.

A crash, Ctrl-C or a full disk at any moment leaves either the old file or the new one, whole. The
temporary file's name holds the host and process id of its writer, so that the next run can remove the
ones a killed process left (and only those). A written file gets the mode open() would give it: a new
file 0666 less the umask, a replaced file keeps its own.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from imgcls.errors import UserError

# Failures the user can fix (free space, choose a writable folder): a clear message, not a traceback.
ENVIRONMENT_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
# .<target name>.<host>.<pid>.<mkstemp's random part>.tmp
TEMPORARY_NAME = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


def _host() -> str:
    """This machine's short name, as one dot-free word (a run folder may be shared between machines)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"


def check_output_file(option: str, path: Path, example: str) -> None:
    """A file a command will write: not a folder (nor a device or FIFO), in a folder that exists and can be
    written."""
    if path.is_dir():
        raise UserError(f"{option} {printable(path)} is a folder; give a file name such as {printable(path / example)}")
    if path.exists() and not path.is_file():
        raise UserError(f"{option} {printable(path)} is {_kind(path)}, not a file; give a file name such as "
                        f"{printable(path.parent / example)}")
    if not path.parent.is_dir() and _nearest(path.parent).is_dir():
        raise UserError(f"{option} {printable(path)}: the folder {printable(path.parent)} does not exist; create it "
                        f"first")
    _check_writable(option, path, _nearest(path.parent))


def make_output_folder(option: str, path: Path) -> None:
    """The folder a command will write files into, made (with its parents) if absent; anything in the way (a
    file, a read-only or special file system) is one UserError."""
    if path.exists() and not path.is_dir():
        what = "a file" if path.is_file() else _kind(path)
        raise UserError(f"{option} {printable(path)} is {what}, not a folder; give a folder name (it is made if "
                        f"absent)")
    _check_writable(option, path, _nearest(path))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{option} {printable(path)}: the folder cannot be made ({error.strerror or error}); choose "
                        f"a writable folder") from None


def _kind(path: Path) -> str:
    mode = path.stat().st_mode
    return "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
        "a socket" if stat.S_ISSOCK(mode) else "a device"


def _nearest(path: Path) -> Path:
    """The path itself, or its nearest ancestor, that exists."""
    return next((parent for parent in (path, *path.parents) if parent.exists()), Path("."))


def _check_writable(option: str, path: Path, existing: Path) -> None:
    """`existing`, where `path` goes (or the nearest existing folder above it), is a folder one can write in."""
    if not existing.is_dir():
        raise UserError(f"{option} {printable(path)}: {printable(existing)} is a file, not a folder; choose a path in "
                        f"a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = os.strerror(errno.EROFS) if on_read_only_file_system(existing) else "permission denied"
        raise UserError(f"{option} {printable(path)}: cannot write in {printable(existing)} ({why}); choose a "
                        f"writable folder")


def on_read_only_file_system(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (AttributeError, OSError):
        return False


def move(source: Path, target: Path) -> None:
    """os.replace, with a full disk or a read-only folder one error line (target is left as it was)."""
    try:
        os.replace(source, target)
    except OSError as error:
        if error.errno not in ENVIRONMENT_ERRORS:
            raise
        raise UserError(f"cannot write {printable(target)} ({os.strerror(error.errno)}); it is left as it was: free "
                        f"some space or choose a writable folder, then try again") from None


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(temporary_path), then move the finished file to `path`."""
    temporary = None
    try:
        if path.exists() and not path.is_file():  # renaming over a device or FIFO would replace it
            raise UserError(f"cannot write {printable(path)}: it is {_kind(path)}, not a file; choose a file name")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.{_host()}.{os.getpid()}.", suffix=".tmp",
                                         dir=path.parent)
        os.close(fd)
        mode = _mode_for(path)
        write(Path(temporary))
        _set_mode(temporary, mode)
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
        temporary = None
        _fsync_folder(path.parent)  # the rename itself survives a power cut
    except OSError as error:
        if temporary is None:  # no file could be made there at all (a folder one cannot create files in)
            raise UserError(f"cannot write {printable(path)}: no file can be made in {printable(path.parent)} "
                            f"({os.strerror(error.errno) if error.errno else error}); choose a writable folder") \
                from None
        if error.errno not in ENVIRONMENT_ERRORS:
            raise
        raise UserError(f"cannot write {printable(path)} ({os.strerror(error.errno)}); any earlier "
                        f"{printable(path.name)} is left as it was: free some space or choose a writable folder, "
                        f"then try again") from None
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


def _mode_for(path: Path) -> int:
    """What open(path, "w") would leave: an existing file's mode, else 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def _set_mode(temporary: str, mode: int) -> None:
    """mkstemp made the file 0600 (and safetensors' writer does), which the rename would keep."""
    try:
        os.chmod(temporary, mode)
    except PermissionError:
        pass  # a file system without modes (some network mounts): the private 0600 is the safe side


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (os.umask can only set it)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files in `folder` whose writer, a process on this machine, is dead (killed
    part-way through a write); a live writer's, another machine's and anyone else's files stay."""
    removed = []
    try:
        candidates = [entry for entry in os.scandir(folder) if entry.name.endswith(".tmp") and entry.is_file()]
    except OSError:
        return removed
    for entry in candidates:
        match = TEMPORARY_NAME.match(entry.name)
        if match and match["host"] == _host() and not _alive(int(match["pid"])):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process: alive, or not ours to judge
    return True


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some systems cannot open a folder; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def printable(value) -> str:
    """A path, name or text as any terminal can show it: bytes that are not UTF-8 (which os.fsdecode keeps as
    surrogates, and an encoder refuses) become U+FFFD."""
    text = os.fsdecode(value) if isinstance(value, (bytes, os.PathLike)) else str(value)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that stand for no byte (JSON can hold them)
        raw = text.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


def write_text_atomic(path: Path, text: str, errors: str = "strict") -> None:
    """errors="surrogateescape" writes file names that are not UTF-8 as their own bytes."""
    write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8", errors=errors))


def write_json_atomic(path: Path, value) -> None:
    write_text_atomic(path, json.dumps(value, indent=2) + "\n")
