"""`imgcls datasets`: the named datasets, what they hold, and whether each is in a data dir.

"Present" follows the order in which data/readers.py looks: the copy inside the package
(cifar10-sample), an image-folder copy DIR/train/<class>/* whose class folders are the dataset's,
then torchvision's own files under DIR. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from imgcls.data.registry import EMBEDDED_ZIP, SPECS, loose_names

# (train, test) image counts of the named datasets as published; test is ImageNet's validation set.
SIZES: dict[str, tuple[int, int]] = {
    "cifar10-sample": (3000, 1000),
    "mnist": (60000, 10000),
    "fashion-mnist": (60000, 10000),
    "cifar10": (50000, 10000),
    "cifar100": (50000, 10000),
    "svhn": (73257, 26032),
    "stl10": (5000, 8000),
    "imagenet": (1281167, 50000),
}
IMAGENET_CLASSES = 1000


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

    def as_dict(self) -> dict:
        return asdict(self)


def _non_empty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _torchvision_files(name: str, folder: str, root: Path) -> str | None:
    """The files torchvision's class reads, when they are there."""
    if name == "svhn":
        return "torchvision .mat files" if (root / "train_32x32.mat").is_file() and (root / "test_32x32.mat").is_file() \
            else None
    if name == "imagenet":
        meta = (root / "meta.bin").is_file() or (root / "ILSVRC2012_devkit_t12.tar.gz").is_file()
        images = (root / "ILSVRC2012_img_train.tar").is_file() or (root / "train").is_dir()
        return "torchvision archives" if meta and images else None
    if folder and _non_empty_dir(root / folder):
        return f"torchvision {folder}/"
    return None


def presence(name: str, root: Path) -> str | None:
    spec = SPECS[name]
    if name == "cifar10-sample":
        return "embedded" if EMBEDDED_ZIP.is_file() else None
    if name == "features":  # one file, never a folder of images
        return f"features file {root.name}" if root.is_file() and root.suffix.lower() in (".npz", ".safetensors") \
            else None
    train = root / "train"
    evaluation = next((root / split for split in ("test", "val") if (root / split).is_dir()), None)
    if train.is_dir() and evaluation is not None:
        folders = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
        if spec.classes is not None:
            matches = sorted(loose_names(folders)) == sorted(loose_names(spec.classes))
        else:  # ImageNet's 1000 class folders, or any classes for imagefolder
            matches = len(folders) == IMAGENET_CLASSES if name == "imagenet" else bool(folders)
        if matches:
            return f"image folder train/, {evaluation.name}/"
    if spec.torchvision_class is None:
        return None
    return _torchvision_files(name, spec.folder, root)


def dataset_infos(root: Path) -> list[DatasetInfo]:
    infos = []
    for name, spec in SPECS.items():
        classes = list(spec.classes) if spec.classes is not None else None
        num_classes = len(classes) if classes is not None else IMAGENET_CLASSES if name == "imagenet" else None
        train, test = SIZES.get(name, (None, None))
        infos.append(DatasetInfo(name, spec.description, num_classes, classes,
                                 list(spec.shape) if spec.shape else None, train, test, presence(name, root)))
    return infos
