"""The decoded-dataset cache: decode a split once, memory-map it on every later run.

Each entry is a folder named by a hash of everything that decides its contents: the dataset,
the split, the image size, and the identity (path, size, modification time) of every source
file, so a changed source is decoded again. An entry is built under a temporary name and
renamed into place only when complete, so a half-written entry is never read; an entry whose
files do not match its own metadata is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from imgcls.data.readers import DecodedSplit

CACHE_FORMAT = 1


@dataclass
class CacheEntry:
    path: Path
    meta: dict

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir())


def fingerprint(paths: list[Path]) -> list[list]:
    """(path, size, mtime) of every file under the given paths; missing paths count as missing."""
    found = []
    for root in paths:
        if root.is_file():
            stat = root.stat()
            found.append([str(root.resolve()), stat.st_size, stat.st_mtime_ns])
        elif root.is_dir():
            _fingerprint_folder(os.path.abspath(root), found)
    return found


def _fingerprint_folder(folder: str, found: list[list]) -> None:
    # scandir's entries carry their type, so only files cost a stat (60,000 CIFAR files: about 0.25 s)
    with os.scandir(folder) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    for entry in entries:
        if entry.is_dir():
            _fingerprint_folder(entry.path, found)
        else:
            stat = entry.stat()
            found.append([entry.path, stat.st_size, stat.st_mtime_ns])


def cache_key(identity: dict) -> str:
    text = json.dumps({"format": CACHE_FORMAT, **identity}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def load_or_build(cache_dir: Path, identity: dict, build: Callable[[], DecodedSplit]) -> tuple[DecodedSplit, bool]:
    """The cached split for this identity, decoding it with `build` first when absent. Returns (split, was_cached)."""
    entry_dir = cache_dir / cache_key(identity)
    cached = _read_entry(entry_dir)
    if cached is not None:
        return cached, True
    split = build()
    _write_entry(entry_dir, identity, split)
    return split, False


def _read_entry(entry_dir: Path) -> DecodedSplit | None:
    try:
        meta = json.loads((entry_dir / "meta.json").read_text())
        images = np.load(entry_dir / "images.npy", mmap_mode="r")
        labels = np.load(entry_dir / "labels.npy")
        shape, classes, skipped = meta["shape"], meta["classes"], meta["skipped"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if list(images.shape) != shape or len(labels) != shape[0] or images.dtype != np.uint8:
        return None
    # The memory map is read-only; torch warns about that but never writes through it.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(images)
    return DecodedSplit(tensor, torch.from_numpy(labels.astype(np.int64)), classes, skipped)


def _write_entry(entry_dir: Path, identity: dict, split: DecodedSplit) -> None:
    entry_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry_dir.name}.", dir=entry_dir.parent))
    try:
        np.save(staging / "images.npy", split.images.numpy())
        np.save(staging / "labels.npy", split.labels.numpy())
        meta = {"shape": list(split.images.shape), "classes": split.classes, "skipped": split.skipped,
                "identity": {k: v for k, v in identity.items() if k != "source"}}
        (staging / "meta.json").write_text(json.dumps(meta))
        for name in ("images.npy", "labels.npy", "meta.json"):
            with open(staging / name, "rb") as f:
                os.fsync(f.fileno())
        shutil.rmtree(entry_dir, ignore_errors=True)  # a damaged entry of the same key
        os.rename(staging, entry_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def list_entries(cache_dir: Path) -> list[CacheEntry]:
    entries = []
    for path in sorted(cache_dir.glob("*")) if cache_dir.is_dir() else []:
        if path.is_dir() and not path.name.startswith("."):
            try:
                entries.append(CacheEntry(path, json.loads((path / "meta.json").read_text())))
            except (OSError, ValueError):
                entries.append(CacheEntry(path, {}))
    return entries


def clear(cache_dir: Path) -> int:
    """Remove every entry (and leftover staging folders); returns how many entries went."""
    count = 0
    for path in cache_dir.glob("*") if cache_dir.is_dir() else []:
        if path.is_dir():
            count += not path.name.startswith(".")
            shutil.rmtree(path, ignore_errors=True)
    return count
