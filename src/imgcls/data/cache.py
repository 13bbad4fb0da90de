"""The decoded-dataset cache: decode a split once, memory-map it on every later run.

An entry is named by a hash of what decides its contents (the source files' identity included), built in a
staging folder and renamed into place when whole, and checked against its CRC-32s on every read: a damaged
entry is decoded again, with a note. Only what imgcls made is ever listed or removed."""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import re
import secrets
import shutil
import sys
import warnings
import zipfile
import zlib
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from imgcls.data.readers import walk_files
from imgcls.data.types import DecodedSplit
from imgcls.errors import UserError
from imgcls.files import host_name, on_read_only_file_system, process_alive, write_atomic

CACHE_FORMAT = 1
ENTRY_FILES = ("meta.json", "images.npy", "labels.npy")
ENTRY_NAME = re.compile(r"[0-9a-f]{24}")
STAGING_NAME = re.compile(r"\.(?P<key>[0-9a-f]{24})\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.building")


@dataclass
class CacheEntry:
    path: Path
    meta: dict

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir())


def fingerprint(paths: list[Path]) -> list[list]:
    """(path, size, mtime, ctime) of every file under the given paths; missing paths count as missing."""
    found = []
    for root in paths:
        files = [str(root.resolve())] if root.is_file() else walk_files(os.path.abspath(root)) if root.is_dir() else []
        for path in files:
            try:
                status = os.stat(path)
                found.append([path, status.st_size, status.st_mtime_ns, status.st_ctime_ns])
            except OSError:  # a symlink to nothing: the reader says so, if it is an image
                found.append([path, None, None, None])
    return found


def _settings_text(settings: dict) -> str:
    return json.dumps({"format": CACHE_FORMAT, **settings}, sort_keys=True)


def cache_key(identity: dict) -> str:
    return hashlib.sha256(_settings_text(identity).encode()).hexdigest()[:24]


def load_or_derive(entry_dir: Path | None, settings: dict,
                   derive: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The tensors `derive` computes from the entry's data and `settings`: read from the entry when it holds them
    for these settings with their CRC-32, else computed (and kept there when it can be written)."""
    if entry_dir is None:
        return derive()
    text = _settings_text(settings)
    path = entry_dir / f"derived-{hashlib.sha256(text.encode()).hexdigest()[:16]}.npz"
    found = _read_derived(path, text)
    if found is not None:
        return found
    values = derive()
    arrays = {name: value.numpy() for name, value in values.items()}

    def save(temporary: Path) -> None:
        with open(temporary, "wb") as file:  # np.savez on a path adds .npz
            np.savez(file, settings=np.array(text), crc32=np.array(_values_crc(arrays), dtype=np.int64), **arrays)

    if (entry_dir / "meta.json").is_file():
        with suppress(UserError, OSError):  # a cache that cannot be written (read-only, shared): computed next time
            write_atomic(path, save)
    return values


def _read_derived(path: Path, settings: str) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            if "settings" not in stored.files or str(stored["settings"]) != settings:
                return None
            values = {name: stored[name] for name in stored.files if name not in ("settings", "crc32")}
            if "crc32" not in stored.files or int(stored["crc32"]) != _values_crc(values):
                note(f"{path} is damaged (its values do not match their CRC-32); computing them again")
                return None
            return {name: torch.from_numpy(value) for name, value in values.items()}
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile):
        return None


def _values_crc(values: dict[str, np.ndarray]) -> int:
    crc = 0
    for name in sorted(values):
        crc = zlib.crc32(f"{name}{values[name].dtype.str}{values[name].shape}".encode(), crc)
        crc = zlib.crc32(np.ascontiguousarray(values[name]).tobytes(), crc)
    return crc


def note(text: str) -> None:
    """One line on stderr about the cache (a damaged entry set right), whatever the command."""
    print(f"note: {text}", file=sys.stderr)


def file_crc(path: Path) -> int:
    """CRC-32 of a file's bytes, read through a memory map (no copy; a warm entry's pages are mapped anyway).
    Callers make sure it is a regular file (a FIFO would wait for a writer)."""
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            return 0
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return zlib.crc32(view)


def _meta_crc(meta: dict) -> int:
    return zlib.crc32(json.dumps({k: v for k, v in meta.items() if k != "crc32"}, sort_keys=True).encode())


def load_or_build(cache_dir: Path, identity: dict, build: Callable[[], DecodedSplit]) -> tuple[DecodedSplit, bool]:
    """The cached split for this identity, decoding it with `build` first when absent. Returns (split, was_cached)."""
    entry_dir = cache_dir / cache_key(identity)
    if entry_dir.is_symlink() or (entry_dir.exists() and not entry_dir.is_dir()):
        raise UserError(f"the decoded-dataset cache entry {entry_dir} is not a folder, as imgcls makes its entries; "
                        f"delete it, or set IMGCLS_CACHE to another folder")
    cached = _read_entry(entry_dir)
    if isinstance(cached, str):
        note(f"the decoded-dataset cache entry {entry_dir} is damaged ({cached}); decoding the split again")
    elif cached is not None:
        return cached, True
    _make_cache_dir(cache_dir)  # before decoding: a cache that cannot be written is said at once
    split = build()
    with cache_write_errors(cache_dir):
        remove_stale_staging(cache_dir)
        winner = _write_entry(entry_dir, identity, split)
    return (split if winner is None else winner), False


def _make_cache_dir(cache_dir: Path) -> None:
    with cache_write_errors(cache_dir):
        cache_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(cache_dir, os.W_OK | os.X_OK):
            raise OSError(errno.EROFS if on_read_only_file_system(cache_dir) else errno.EACCES, "not writable")


WRITE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                errno.EROFS: "it is on a read-only file system", errno.ENOTDIR: "it is a file, not a folder",
                errno.EEXIST: "it is a file, not a folder", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied"}


@contextmanager
def cache_write_errors(cache_dir: Path):
    """An OSError while writing the cache (full disk, read-only file system, a file in the way) becomes one
    UserError that says what is wrong and how to get past it."""
    try:
        yield
    except OSError as error:
        reason = WRITE_ERRORS.get(error.errno) or error.strerror or str(error)
        fix = "free some space, or " if error.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise UserError(f"cannot write the decoded-dataset cache at {cache_dir} ({reason}); {fix}set IMGCLS_CACHE "
                        f"to a writable folder") from None


def _read_entry(entry_dir: Path) -> DecodedSplit | str | None:
    """The entry's split; None when there is no entry, or why it cannot be used (a damaged one)."""
    if not (entry_dir / "meta.json").exists():
        return None
    odd = next((name for name in ENTRY_FILES if not (entry_dir / name).is_file()), None)
    if odd is not None:  # a folder or FIFO in a file's place: never opened (a FIFO would wait for a writer)
        return f"{odd} is not a file"
    try:
        meta = json.loads((entry_dir / "meta.json").read_text())
        crc = meta.get("crc32")
        if crc is None:
            return "it has no checksums: an older imgcls made it"
        if crc.get("meta") != _meta_crc(meta):
            return "meta.json does not match its CRC-32"
        for name in ("images.npy", "labels.npy"):
            if file_crc(entry_dir / name) != crc.get(name):
                return f"{name} does not match its CRC-32"
        images = np.load(entry_dir / "images.npy", mmap_mode="r")
        labels = np.load(entry_dir / "labels.npy")
        shape, classes, skipped = meta["shape"], meta["classes"], meta["skipped"]
        passed_over = meta.get("passed_over", 0)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"it cannot be read: {type(error).__name__}"
    if list(images.shape) != shape or len(labels) != shape[0] or images.dtype != np.uint8:
        return "its arrays do not match its meta.json"
    with warnings.catch_warnings():  # the memory map is read-only: torch warns, but never writes through it
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(images)
    return DecodedSplit(tensor, torch.from_numpy(labels.astype(np.int64)), classes, skipped, passed_over)


def _write_entry(entry_dir: Path, identity: dict, split: DecodedSplit) -> DecodedSplit | None:
    """Write the entry; returns another process's entry when that one was renamed into place first."""
    staging = entry_dir.parent / f".{entry_dir.name}.{host_name()}.{os.getpid()}.{secrets.token_hex(4)}.building"
    staging.mkdir()  # not mkdtemp, whose 0700 ignores the umask
    try:
        np.save(staging / "images.npy", split.images.numpy())
        np.save(staging / "labels.npy", split.labels.numpy())
        meta = {"format": CACHE_FORMAT, "shape": list(split.images.shape), "classes": split.classes,
                "skipped": split.skipped, "passed_over": split.passed_over,
                "identity": {k: v for k, v in identity.items() if k != "source"}}
        meta["crc32"] = {name: file_crc(staging / name) for name in ("images.npy", "labels.npy")}
        meta["crc32"]["meta"] = _meta_crc(meta)
        (staging / "meta.json").write_text(json.dumps(meta))
        for name in ENTRY_FILES:
            with open(staging / name, "rb") as f:
                os.fsync(f.fileno())
        return _publish(staging, entry_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when renamed


def _publish(staging: Path, entry_dir: Path) -> DecodedSplit | None:
    for _ in range(3):
        try:
            os.rename(staging, entry_dir)
            return None
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        winner = _read_entry(entry_dir)  # another process's complete entry, or a damaged one of the same key
        if isinstance(winner, DecodedSplit):
            return winner
        shutil.rmtree(entry_dir, ignore_errors=True)
    return None  # damaged again each time: leave this split uncached


def _entry_meta(path: Path) -> dict | None:
    """The metadata of an entry imgcls made; None for anything else in the folder."""
    if not ENTRY_NAME.fullmatch(path.name) or path.is_symlink() or not path.is_dir():
        return None
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and {"shape", "classes", "identity"} <= meta.keys() else None


def staging_folders(cache_dir: Path) -> list[Path]:
    """imgcls's staging folders in the cache: builds in progress, or left by a process that was killed."""
    if not cache_dir.is_dir():
        return []
    return sorted(path for path in cache_dir.iterdir()
                  if STAGING_NAME.fullmatch(path.name) and path.is_dir() and not path.is_symlink())


def builder_alive(staging: Path) -> bool:
    """Whether the process that made this staging folder may still be building it. One on another host
    (a shared cache folder) cannot be asked, so it counts as alive."""
    match = STAGING_NAME.fullmatch(staging.name)
    return match["host"] != host_name() or process_alive(int(match["pid"]))


def remove_stale_staging(cache_dir: Path) -> list[Path]:
    """Remove the staging folders of processes that are gone; returns them."""
    stale = [path for path in staging_folders(cache_dir) if not builder_alive(path)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def list_entries(cache_dir: Path) -> list[CacheEntry]:
    paths = sorted(cache_dir.iterdir()) if cache_dir.is_dir() else []
    return [CacheEntry(path, meta) for path in paths if (meta := _entry_meta(path)) is not None]


def clear(cache_dir: Path) -> tuple[int, int]:
    """Remove imgcls's entries and the staging folders of builds that are gone, nothing else in the folder;
    returns (entries, staging folders) removed."""
    entries = list_entries(cache_dir)
    for entry in entries:
        shutil.rmtree(entry.path, ignore_errors=True)
    return len(entries), len(remove_stale_staging(cache_dir))
