"""Atomic file writes: a temporary file beside the target, flushed and fsynced, then renamed.

A crash, Ctrl-C or a full disk at any moment leaves either the old file or the new one, whole.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from imgcls.errors import UserError


# Failures the user can fix (free space, choose a writable folder): a clear message, not a traceback.
ENVIRONMENT_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(temporary_path), then move the finished file to `path`."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(Path(temporary))
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
        temporary = None
        _fsync_folder(path.parent)  # the rename itself survives a power cut
    except OSError as error:
        if error.errno not in ENVIRONMENT_ERRORS:
            raise
        raise UserError(f"cannot write {path} ({os.strerror(error.errno)}); any earlier {path.name} is left as it "
                        f"was: free some space or choose a writable folder, then try again") from None
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


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


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda temporary: temporary.write_text(text))


def write_json_atomic(path: Path, value) -> None:
    write_text_atomic(path, json.dumps(value, indent=2) + "\n")
