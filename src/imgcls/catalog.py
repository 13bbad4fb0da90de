"""`imgcls datasets`: the named datasets, what they hold, and whether each is in a data dir.

"Present" follows the order in which data/readers.py looks: the copy inside the package
(cifar10-sample), torchvision's own files under DIR when any of them is there, else an image-folder
copy DIR/train/<class>/* whose class folders are the dataset's. Torchvision's files count as present
only when a cheap look at each (headers, sizes, archive listings: check_files) finds them whole;
else the dataset is "damaged or incomplete", with the file named. Nothing here imports torch.
"""

from __future__ import annotations

import importlib.util
import math
import struct
import tarfile
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from imgcls.data.registry import EMBEDDED_ZIP, SPECS, DatasetSpec, loose_names

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
    damaged: str | None = None  # "PATH (why)": the files are there but their reader cannot open them
    superclasses: dict[str, list[str]] | None = None  # CIFAR-100's 20: name -> its fine classes

    def as_dict(self) -> dict:
        return asdict(self)


class Damaged(Exception):
    """A dataset file that its reader could not open: which file, and why (for one line of a message)."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path} ({why})")
        self.path, self.why = path, why


@dataclass
class FileCheck:
    """What `check_files` found of a dataset's torchvision files."""

    found: list[Path]  # each file, or what torchvision unpacked it into
    missing: list[str]  # relative to the data dir
    damaged: str | None  # "PATH (why)": the first file that fails its check, or the first missing one


def check_files(spec: DatasetSpec, root: Path) -> FileCheck:
    """Whether torchvision's class can open the dataset's files, by a cheap look at each (headers, sizes,
    archive listings), not a full decode. Files are in the layout spec.files gives."""
    paths = {name: resolved_path(spec, root, name) for name in spec.files}
    found = [path for path in paths.values() if path is not None]
    missing = [name for name, path in paths.items() if path is None]
    damaged = None
    if found and missing:
        damaged = f"{root / missing[0]} (missing; {len(found)} of the {len(spec.files)} files are there)"
    elif found:
        try:
            FORMAT_CHECKS[spec.file_format](found)
        except Damaged as error:
            damaged = str(error)
        except OSError as error:
            damaged = f"{error.filename or found[0]} ({error.strerror or error})"
    return FileCheck(found, missing, damaged)


def resolved_path(spec: DatasetSpec, root: Path, name: str) -> Path | None:
    """One of the dataset's files, or what torchvision unpacked it into; None when neither is there."""
    return next((root / candidate for candidate in (name, spec.unpacked_as.get(name))
                 if candidate and (root / candidate).exists()), None)


def _read_header(path: Path, size: int) -> bytes:
    if not path.is_file():
        raise Damaged(path, "not a file")
    with open(path, "rb") as file:
        return file.read(size)


def _idx_count(path: Path, kind: int, item_bytes: int) -> int:
    """The item count of an idx file (MNIST's format: 0, 0, type 0x08 = uint8, number of dimensions, then each
    dimension as a big-endian int32), checked against the file's size."""
    header = _read_header(path, 4)
    if len(header) < 4 or header[:3] != b"\0\0\x08" or header[3] != kind:
        raise Damaged(path, f"not an idx file of {kind} dimensions (its first bytes are {header.hex() or 'none'})")
    dims = struct.unpack(f">{kind}I", _read_header(path, 4 + 4 * kind)[4:].ljust(4 * kind, b"\0"))
    expected = 4 + 4 * kind + math.prod(dims)
    if math.prod(dims[1:]) != item_bytes or path.stat().st_size != expected:
        raise Damaged(path, f"{path.stat().st_size:,} bytes where its header, {' x '.join(map(str, dims))}, "
                            f"needs {expected:,} bytes of {item_bytes} per item")
    return dims[0]


def _check_idx(paths: list[Path]) -> None:
    for images, labels in zip(paths[::2], paths[1::2]):  # images, labels; train, then t10k
        count, label_count = _idx_count(images, 3, 28 * 28), _idx_count(labels, 1, 1)
        if count != label_count:
            raise Damaged(labels, f"{label_count:,} labels for the {count:,} images of {images.name}")


def _check_pickle(paths: list[Path]) -> None:
    # CIFAR's files are pickles of protocol 2: PROTO (0x80) first, STOP (".") last; a cut-off copy lacks the STOP
    for path in paths:
        first = _read_header(path, 2)
        if not first:
            raise Damaged(path, "empty")
        with open(path, "rb") as file:
            file.seek(-1, 2)
            last = file.read(1)
        if first[0] != 0x80 or last != b".":
            raise Damaged(path, "not a whole pickle file: it does not start with a protocol mark and end with a STOP")


def _check_mat(paths: list[Path]) -> None:
    """SVHN's MATLAB files: their variable headers alone (scipy's whosmat skips the data), X 32x32x3xN and y with
    N labels. A file cut short fails on the header after X."""
    try:
        from scipy.io import whosmat
    except ImportError:  # not checked here: presence() and the reader say scipy is missing
        return
    for path in paths:
        try:
            variables = {name: shape for name, shape, _ in whosmat(str(path))}
        except Exception as error:  # noqa: BLE001 -- scipy fails in many ways on a damaged file
            raise Damaged(path, f"not a readable MATLAB file: {_first_line(error)}") from None
        x, y = variables.get("X"), variables.get("y")
        if x is None or y is None or tuple(x[:3]) != (32, 32, 3) or len(x) != 4 or math.prod(y) != x[3]:
            raise Damaged(path, f"its variables are {variables or 'none'}, not X 32x32x3xN and y of N labels")


def _first_line(error: BaseException) -> str:
    return (str(error).strip() or type(error).__name__).splitlines()[0].rstrip(":")


STL_IMAGE_BYTES = 3 * 96 * 96


def _check_stl(paths: list[Path]) -> None:
    """STL-10's binaries: X is N images of 3x96x96 bytes, y one byte per image, each 1..10."""
    named = {path.name: path for path in paths}
    for images in (path for path in paths if path.name.endswith("_X.bin")):
        size = images.stat().st_size
        if size == 0 or size % STL_IMAGE_BYTES:
            raise Damaged(images, f"{size:,} bytes, not a whole number of 96x96x3 images")
        labels = named.get(images.name.replace("_X.bin", "_y.bin"))  # unlabeled_X.bin has none
        if labels is not None:
            values, count = labels.read_bytes(), size // STL_IMAGE_BYTES  # a few kB
            if len(values) != count or not 1 <= min(values, default=1) <= max(values, default=1) <= 10:
                raise Damaged(labels, f"{len(values):,} bytes where {count:,} labels in 1..10 are expected for the "
                                      f"images of {images.name}")


def _check_imagenet(paths: list[Path]) -> None:
    """ILSVRC-2012's archives (a listing of their first members), or what torchvision unpacked them into."""
    for path in paths:
        if path.is_dir():  # train/ or val/: class folders of images, as torchvision leaves them
            if not any(inner.is_dir() and any(inner.iterdir()) for inner in path.iterdir()):
                raise Damaged(path, "no class folder with images in it")
        elif path.name == "meta.bin":  # torch.save's zip file
            if not zipfile.is_zipfile(path):
                raise Damaged(path, "not the meta file torchvision writes; delete it to parse the devkit again")
        else:
            _check_tar(path)


def _check_tar(path: Path) -> None:
    devkit = path.name.endswith(".tar.gz")
    try:
        with tarfile.open(path) as archive:
            if devkit:  # 2.5 MB: read it all, for the two files torchvision takes from it
                names = set(archive.getnames())
                wanted = [f"ILSVRC2012_devkit_t12/data/{name}" for name in
                          ("meta.mat", "ILSVRC2012_validation_ground_truth.txt")]
                absent = [name for name in wanted if name not in names]
                if absent:
                    raise Damaged(path, f"no {absent[0]} in it")
            elif archive.next() is None:  # the train and val tars are huge: their first member only
                raise Damaged(path, "an empty archive")
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise Damaged(path, f"not a readable tar archive: {_first_line(error)}") from None


FORMAT_CHECKS: dict[str, Callable[[list[Path]], None]] = {
    "idx": _check_idx, "pickle": _check_pickle, "mat": _check_mat, "stl": _check_stl, "imagenet": _check_imagenet}


def _image_folder(spec: DatasetSpec, root: Path) -> str | None:
    """An image-folder copy DIR/train/<class>/*, DIR/test|val/<class>/* whose class folders are the dataset's."""
    train = root / "train"
    evaluation = next((root / split for split in ("test", "val") if (root / split).is_dir()), None)
    if not train.is_dir() or evaluation is None:
        return None
    folders = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    if spec.classes is not None:
        matches = sorted(loose_names(folders)) == sorted(loose_names(spec.classes))
    else:  # ImageNet's 1000 class folders, or any classes for imagefolder
        matches = len(folders) == IMAGENET_CLASSES if spec.name == "imagenet" else bool(folders)
    return f"image folder train/, {evaluation.name}/" if matches else None


def has_own_files(spec: DatasetSpec, root: Path) -> bool:
    """Whether any of the dataset's own files is in the data dir (not counting the train/ and val/ folders that
    torchvision's ImageNet unpacks its archives into, which look like an image folder): then they are what is
    read, rather than an image folder."""
    folders = ("train", "val", "test")
    return any((root / name).exists() for name in (*spec.files, *spec.unpacked_as.values()) if name not in folders)


def presence(name: str, root: Path) -> tuple[str | None, str | None]:
    """(where the dataset is, or None; what is damaged or incomplete, or None), in the order data/readers.py
    looks."""
    spec = SPECS[name]
    if name == "cifar10-sample":
        return ("embedded" if EMBEDDED_ZIP.is_file() else None), None
    if name == "features":  # one file, never a folder of images
        is_features = root.is_file() and root.suffix.lower() in (".npz", ".safetensors")
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
        classes = list(spec.classes) if spec.classes is not None else None
        num_classes = len(classes) if classes is not None else IMAGENET_CLASSES if name == "imagenet" else None
        train, test = SIZES.get(name, (None, None))
        infos.append(DatasetInfo(name, spec.description, num_classes, classes,
                                 list(spec.shape) if spec.shape else None, train, test, *presence(name, root),
                                 {coarse: list(fine) for coarse, fine in spec.superclasses.items()} or None))
    return infos
