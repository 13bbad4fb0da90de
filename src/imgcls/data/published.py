"""A named dataset's published files under a data dir: where each is (or what torchvision unpacked it into),
and whether they are whole. Does not import torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgcls.data.formats import Damaged
from imgcls.data.registry import DatasetSpec


@dataclass
class FileCheck:
    """What `check_files` found of a dataset's torchvision files."""

    found: list[Path]  # each file, or what torchvision unpacked it into
    damaged: str | None  # "PATH (why)": the first file that fails its check, or the first missing one


def check_files(spec: DatasetSpec, root: Path) -> FileCheck:
    """Whether torchvision's class can open the dataset's files, by a cheap look at each (headers, sizes,
    archive listings), not a full decode. Files are in the layout spec.files gives."""
    paths = {name: resolved_path(spec, root, name) for name in spec.files}
    found = [path for path in paths.values() if path is not None]
    missing = [name for name, path in paths.items() if path is None]
    if found and missing:
        return FileCheck(found, f"{root / missing[0]} (missing; {len(found)} of the {len(spec.files)} files are there)")
    try:
        if found and spec.check_format is not None:
            spec.check_format(found)
    except Damaged as error:
        return FileCheck(found, str(error))
    except OSError as error:
        return FileCheck(found, f"{error.filename or found[0]} ({error.strerror or error})")
    return FileCheck(found, None)


def resolved_path(spec: DatasetSpec, root: Path, name: str) -> Path | None:
    """One of the dataset's files, or what torchvision unpacked it into; None when neither is there."""
    return next((root / candidate for candidate in (name, spec.unpacked_as.get(name))
                 if candidate and (root / candidate).exists()), None)


def has_own_files(spec: DatasetSpec, root: Path) -> bool:
    """Whether any of the dataset's own files is in the data dir (not counting the train/ and val/ folders that
    torchvision's ImageNet unpacks its archives into, which look like an image folder): then they are what is
    read, rather than an image folder."""
    folders = ("train", "val", "test")
    return any((root / name).exists() for name in (*spec.files, *spec.unpacked_as.values()) if name not in folders)
