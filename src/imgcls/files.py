"""Atomic writes: a temporary file beside the target, fsynced, renamed over it; a crash, Ctrl-C, SIGKILL or a full
disk leaves the old file or the new one, whole. A temporary's name holds its writer's host and pid, so the next run
removes only those a killed writer left."""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import socket
import stat
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from imgcls.errors import UserError

# Failures the user can fix (free space, choose a writable folder): a clear message, not a traceback.
ENVIRONMENT_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
# .<target name>.<host>.<pid>.<random hex>.tmp
TEMPORARY_NAME = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


def host_name() -> str:
    """This machine's short name, as one dot-free word (a run folder may be shared between machines)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"


def check_output_file(option: str, path: Path, example: str) -> None:
    """A file a command will write: not a folder (nor a device or FIFO), in a folder that exists and can be written."""
    if path.is_dir():
        raise UserError(f"{option} {printable(path)} is a folder; give a file name such as {printable(path / example)}")
    if path.exists() and not path.is_file():
        raise UserError(f"{option} {printable(path)} is {_kind(path)}, not a file; give a file name such as "
                        f"{printable(path.parent / example)}")
    if not path.parent.is_dir() and _nearest(path.parent).is_dir():
        raise UserError(f"{option} {printable(path)}: the folder {printable(path.parent)} does not exist; create it "
                        f"first")
    check_writable(option, path, _nearest(path.parent))


def make_output_folder(option: str, path: Path) -> None:
    """The folder a command will write files into, made (with its parents) if absent; anything in the way (a
    file, a read-only or special file system) is one UserError."""
    if path.exists() and not path.is_dir():
        what = "a file" if path.is_file() else _kind(path)
        raise UserError(f"{option} {printable(path)} is {what}, not a folder; give a folder name (it is made if "
                        f"absent)")
    check_writable(option, path)
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


def check_writable(option: str, path: Path, existing: Path | None = None) -> None:
    """`existing`, where `path` goes (by default the path or its nearest existing folder), is a folder one can
    write in."""
    existing = existing or _nearest(path)
    if not existing.is_dir():
        raise UserError(f"{option} {printable(path)}: {printable(existing)} is a file, not a folder; choose a path in "
                        f"a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = os.strerror(errno.EROFS) if on_read_only_file_system(existing) else "permission denied"
        raise UserError(f"{option} {printable(path)}: cannot write in {printable(existing)} ({why}); choose a "
                        f"writable folder")


def on_read_only_file_system(path: Path) -> bool:
    with suppress(AttributeError, OSError):
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    return False


def move(source: Path, target: Path) -> None:
    """os.replace, with a full disk or a read-only folder one error line (target is left as it was)."""
    try:
        os.replace(source, target)
    except OSError as error:
        raise _not_written(target, error) from None


def _not_written(path: Path, error: OSError) -> Exception:
    """A full disk or a read-only folder as one line that says the earlier file is whole; other errors as they are."""
    if error.errno not in ENVIRONMENT_ERRORS:
        return error
    return UserError(f"cannot write {printable(path)} ({os.strerror(error.errno)}); any earlier {printable(path.name)} "
                     f"is left as it was: free some space or choose a writable folder, then try again")


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(temporary_path), then move the finished file to `path`."""
    temporary = path.parent / f".{path.name}.{host_name()}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        if path.exists() and not path.is_file():  # renaming over a device or FIFO would replace it
            raise UserError(f"cannot write {printable(path)}: it is {_kind(path)}, not a file; choose a file name")
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0666 less the umask, as open()
    except OSError as error:  # no file can be made there at all (a folder one cannot create files in)
        raise UserError(f"cannot write {printable(path)}: no file can be made in {printable(path.parent)} "
                        f"({os.strerror(error.errno) if error.errno else error}); choose a writable folder") from None
    try:
        write(temporary)
        with suppress(FileNotFoundError, PermissionError):  # a replaced file keeps its mode (where there are modes)
            shutil.copymode(path, temporary)
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as error:
        raise _not_written(path, error) from None
    finally:
        temporary.unlink(missing_ok=True)
    with suppress(OSError):  # the rename itself survives a power cut, where a folder can be opened
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporary files in `folder` whose writer, a process on this machine, is dead (killed part-way
    through a write); a live writer's, another machine's and anyone else's files stay."""
    with suppress(OSError):
        for entry in os.scandir(folder):
            match = TEMPORARY_NAME.match(entry.name)
            if match and match["host"] == host_name() and not process_alive(int(match["pid"])):
                Path(entry.path).unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether a process of this machine still runs: a temporary file or build it owns is still in use."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        pass  # another user's process: alive, or not ours to judge
    return True


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
