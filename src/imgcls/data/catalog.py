"""`imgcls datasets`: the named datasets, what they hold, and whether each is in a data dir (looked for in the
order readers.py looks). Does not import torch."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path

from imgcls.data.published import check_files, has_own_files
from imgcls.data.registry import FEATURES_SUFFIXES, SPECS, DatasetSpec, loose_names


@dataclass
class DatasetInfo:
    name: str
    description: str
    num_classes: int | None  # None: read from the data
    classes: list[str] | None
    shape: list[int] | None  # (C, H, W); None: depends on the data or --image-size
    train: int | None
    test: int | None
    present: str | None  # where: "embedded", "image folder train/, test/", "torchvision MNIST/"...; None: absent
    damaged: str | None = None  # "PATH (why)": the files are there but their reader cannot open them
    superclasses: dict[str, list[str]] | None = None  # CIFAR-100's 20: name -> its fine classes

    def as_dict(self) -> dict:
        return asdict(self)


def _image_folder(spec: DatasetSpec, root: Path) -> str | None:
    """An image-folder copy DIR/train/<class>/*, DIR/test|val/<class>/* whose class folders are the dataset's."""
    train = root / "train"
    evaluation = next((root / split for split in ("test", "val") if (root / split).is_dir()), None)
    if not train.is_dir() or evaluation is None:
        return None
    folders = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    if spec.classes is not None:
        matches = sorted(loose_names(folders)) == sorted(loose_names(spec.classes))
    else:  # as many class folders as the dataset has classes (ImageNet's 1000), or any for imagefolder
        matches = len(folders) == spec.class_count if spec.class_count else bool(folders)
    return f"image folder train/, {evaluation.name}/" if matches else None


def presence(name: str, root: Path) -> tuple[str | None, str | None]:
    """(where the dataset is, or None; what is damaged or incomplete, or None), in the order data/readers.py
    looks."""
    spec = SPECS[name]
    if spec.embedded is not None:
        return ("embedded" if spec.embedded.is_file() else None), None
    if spec.features_file:  # one file, never a folder of images
        is_features = root.is_file() and root.suffix.lower() in FEATURES_SUFFIXES
        return (f"features file {root.name}" if is_features else None), None
    if spec.torchvision_class is None or not has_own_files(spec, root):
        return _image_folder(spec, root), None
    check = check_files(spec, root)
    if check.damaged is not None:
        return None, check.damaged
    tops = dict.fromkeys(_top_name(path, root) for path in check.found)
    lacking = spec.needs_module and importlib.util.find_spec(spec.needs_module) is None
    needs = f" (reading it needs {spec.needs_module}: pip install {spec.needs_module})" if lacking else ""
    return f"torchvision {', '.join(tops)}{needs}", None


def _top_name(path: Path, root: Path) -> str:
    """MNIST/ for MNIST/raw/..., train_32x32.mat for itself."""
    parts = path.relative_to(root).parts
    return parts[0] + ("/" if len(parts) > 1 or path.is_dir() else "")


def dataset_infos(root: Path) -> list[DatasetInfo]:
    infos = []
    for name, spec in SPECS.items():
        infos.append(DatasetInfo(name, spec.description, spec.num_classes, spec.classes and list(spec.classes),
                                 spec.shape and list(spec.shape), *(spec.sizes or (None, None)), *presence(name, root),
                                 {coarse: list(fine) for coarse, fine in spec.superclasses.items()} or None))
    return infos
