"""Read one split of a dataset (embedded zip, torchvision's class on the published files, or an image folder)
into uint8 images and int64 labels, and check that its classes and shape agree with the other split's."""

from __future__ import annotations

import errno
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from imgcls.data.classnames import named_classes, names_file_beside
from imgcls.config import DataConfig, default_data_dir
from imgcls.data.decode import (
    ProgressCallback,
    check_resize_fits,
    decode_images,
    error_reason,
    resize,
    size_text,
    to_grey_if_grey,
)
from imgcls.data.published import check_files, has_own_files, resolved_path
from imgcls.data.registry import DatasetSpec, loose_names
from imgcls.data.split import check_class_names
from imgcls.data.types import DecodedSplit, ImageList
from imgcls.errors import UserError

# The files taken for images, everywhere (lower case; a file's name is compared in lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm")


def source_kind(spec: DatasetSpec, root: Path) -> str:
    """Which source a split will be read from: 'embedded', 'folder' or 'torchvision'."""
    if spec.embedded is not None:
        return "embedded"
    if root.exists() and not root.is_dir():
        raise UserError(f"data dir {root} is a file, not a folder; pass --data-dir (or set IMGCLS_DATA to) the "
                        f"folder that holds the dataset")
    if spec.torchvision_class is None or ((root / "train").is_dir() and not has_own_files(spec, root)):
        return "folder"
    return "torchvision"


def source_paths(spec: DatasetSpec, root: Path, split: str) -> list[Path]:
    """The files a split is read from, for the decoded cache's fingerprint."""
    kind = source_kind(spec, root)
    if kind == "embedded":
        return [spec.embedded]
    if kind == "folder":
        names = names_file(spec, root, split)  # a words.txt beside train/ changes the cached class names
        return [folder_split_dir(root, split), *([names] if names else [])]
    return [resolved_path(spec, root, name) or root / name for name in spec.files]


def read_split(spec: DatasetSpec, root: Path, split: str, image_size: int | None, skip_bad: bool,
               download: bool, progress: ProgressCallback | None = None) -> DecodedSplit:
    """The split decoded, labels in the dataset's class order; progress, if given, is told (images decoded, images
    in all) while image files are decoded."""
    if source_kind(spec, root) == "torchvision" and not spec.lists_files:
        split_data = _read_arrays(spec, root, split, image_size, download)
    else:
        listing = list_images(spec, root, split, download)
        images, labels, skipped = decode_all(listing, image_size, skip_bad, progress)
        split_data = DecodedSplit(images, labels, listing.classes, skipped, listing.passed_over)
    if spec.shape is not None and image_size is None and tuple(split_data.images.shape[1:]) != spec.shape:
        raise UserError(f"{root} does not hold {spec.name}: images are {tuple(split_data.images.shape[1:])} (C, H, "
                        f"W), expected {spec.shape}; pass --image-size to resize, or use --dataset imagefolder")
    return split_data


def resolve_data_dir(config: DataConfig) -> Path:
    return Path(config.data_dir).expanduser() if config.data_dir else default_data_dir()


def folder_split_dir(root: Path, split: str) -> Path:
    if split == "train":
        return root / "train"
    return root / "test" if (root / "test").is_dir() or not (root / "val").is_dir() else root / "val"


def _list_folder(root: Path, split: str, spec: DatasetSpec) -> ImageList:
    from torchvision.datasets.folder import find_classes  # imported when needed, for start-up speed

    if not root.is_dir():
        raise UserError(f"data dir {root} does not exist; pass --data-dir with the folder that holds the dataset")
    directory = folder_split_dir(root, split)
    if not directory.is_dir():
        wanted = "train/" if split == "train" else "test/ or val/"
        raise UserError(f"{spec.name}: no {wanted} folder in {root}; an image folder needs "
                        f"ROOT/train/<class>/* and ROOT/test/<class>/* (or ROOT/val/<class>/*)")
    try:
        classes, _ = find_classes(str(directory))
    except FileNotFoundError as error:
        raise UserError(f"{spec.name}: {directory}: {error_reason(error)}; every class folder needs at least one "
                        f"image") from None
    paths, labels, passed_over, empty = [], [], 0, []
    for label, name in enumerate(classes):
        files = walk_files(os.path.join(directory, name))
        images = [path for path in files if is_image_name(path)]
        passed_over += len(files) - len(images)
        empty += [] if images else [name]
        paths += images
        labels += [label] * len(images)
    if empty:
        raise UserError(f"{spec.name}: {directory}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class "
                        f"folder(s) {', '.join(empty[:5])}; every class folder needs at least one image")
    names = names_file(spec, root, split)
    if names is not None:
        classes = named_classes(classes, names)
    return ImageList(paths, FileReader(paths), labels, classes, passed_over)


def names_file(spec: DatasetSpec, root: Path, split: str) -> Path | None:
    """The words.txt or classes.txt beside the class folders (in the split's folder, else in ROOT), as
    Tiny-ImageNet and ImageNet ship them; only where the dataset's classes come from the folders."""
    if spec.classes is not None:
        return None
    return names_file_beside(folder_split_dir(root, split), root)


def is_image_name(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def walk_files(folder: str | Path) -> list[str]:
    """Every non-folder entry under `folder` (dangling symlinks and FIFOs too), sorted. Symlinks are followed,
    as ImageFolder follows them, but a folder already walked, or one that leads back above `folder` (a symlink
    loop), is not entered again: os.walk alone would go round a loop until the path grew too long."""
    start = os.path.realpath(folder)
    seen: set[str] = set()
    found = []
    for top, folders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen or (real != start and os.path.commonpath([real, start]) == real):
            folders[:] = []
            continue
        seen.add(real)
        found += [os.path.join(top, name) for name in files]
    return sorted(found)


def read_image_file(path: str | Path) -> bytes:
    """A file's bytes. What is not a regular file is refused, not read: reading a FIFO would wait forever
    (hence O_NONBLOCK for the open); a symlink to nothing, or a loop of them, says so."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        if os.path.islink(path) and error.errno in (errno.ENOENT, errno.ELOOP):
            what = "a loop of symbolic links" if error.errno == errno.ELOOP else "a file that does not exist"
            raise OSError(error.errno, f"a symbolic link to {os.readlink(path)}, {what}") from None
        raise
    with open(fd, "rb", buffering=0) as file:  # unbuffered: one read of the whole file
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "FIFO" if stat.S_ISFIFO(mode) else "folder" if stat.S_ISDIR(mode) else \
                "socket" if stat.S_ISSOCK(mode) else "device"
            raise OSError(errno.EINVAL, f"not a regular file but a {kind}")
        return file.read()


@dataclass(frozen=True)
class FileReader:
    """Reads the i-th of these files with read_image_file (an object, which pickles where a closure would not)."""

    paths: list[str]

    def __call__(self, index: int) -> bytes:
        return read_image_file(self.paths[index])


class ZipReader:
    """Reads the i-th of these members of a zip archive, with an archive opened by this process: forked decoding
    workers that shared one open file would move each other's read position (a "bad magic number")."""

    def __init__(self, path: Path, names: list[str]):
        self.path, self.names, self.opened = path, names, (None, None)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "opened": (None, None)}  # a worker opens its own

    def __call__(self, index: int) -> bytes:
        pid, archive = self.opened
        if pid != os.getpid():
            archive = zipfile.ZipFile(self.path)
            self.opened = (os.getpid(), archive)
        return archive.read(self.names[index])


def _list_zip(path: Path, split: str) -> ImageList:
    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if n.startswith(f"{split}/") and not n.endswith("/"))
    classes = sorted({n.split("/")[1] for n in names})
    labels = [classes.index(n.split("/")[1]) for n in names]
    return ImageList([f"{path.name}:{n}" for n in names], ZipReader(path, names), labels, classes)


def decode_all(listing: ImageList, image_size: int | None, skip_bad: bool,
               progress: ProgressCallback | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Decode every image (as RGB), resize if asked, and stack; grey datasets come back with one channel.
    progress, if given, is told (images decoded, images in all) as decoding goes."""
    decoded = decode_images(listing.names, listing.read, image_size, skip_bad, progress)
    labels = torch.tensor([listing.labels[i] for i in decoded.kept], dtype=torch.int64)
    return to_grey_if_grey(decoded.images), labels, len(listing.names) - len(decoded.kept)


def check_same_classes(name: str, train: list[str], test: list[str]) -> None:
    if train != test:
        only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
        raise UserError(f"{name}: train and test classes differ (only in train: {only_train or '-'}; only in "
                        f"test: {only_test or '-'}); give both splits the same class folders")


def check_same_shape(name: str, train: tuple[int, ...], test: tuple[int, ...]) -> None:
    """Train and test images must have one (C, H, W); the message says what differs and what helps."""
    if train[0] != test[0]:
        kinds = {1: "grey (1 channel)", 3: "colour (3 channels)"}
        raise UserError(f"{name}: train images are {kinds.get(train[0], f'{train[0]} channels')} but test images "
                        f"are {kinds.get(test[0], f'{test[0]} channels')}; convert one split's images so that "
                        f"both are grey or both colour (--image-size changes only the size)")
    if train != test:
        raise UserError(f"{name}: train images are {size_text(train)} but test images are {size_text(test)}; "
                        f"pass --image-size N to resize both to NxN")


def list_images(spec: DatasetSpec, root: Path, split: str, download: bool = False) -> ImageList:
    """The image files of a split, undecoded, for the streaming path; labels in the dataset's class order."""
    kind = source_kind(spec, root)
    if kind == "embedded":
        return _list_zip(spec.embedded, split)
    if kind == "folder":
        listing = _list_folder(root, split, spec)
    elif spec.lists_files:
        listing = _imagenet_listing(_open_torchvision(spec, root, split, download))
    else:
        raise UserError(f"--stream decodes image files, but {spec.name} is stored as arrays that fit in memory; "
                        f"drop --stream")
    order = class_order(spec, listing.classes, root)
    if order is None:
        return listing
    labels = order[torch.as_tensor(listing.labels)].tolist()
    return ImageList(listing.names, listing.read, labels, list(spec.classes), listing.passed_over)


def _imagenet_listing(dataset) -> ImageList:
    paths = [path for path, _ in dataset.samples]
    classes = [names[0] if isinstance(names, (tuple, list)) and names else names for names in dataset.classes]
    meta = Path(dataset.root) / "meta.bin"
    check_class_names("imagenet", classes, meta, f"delete {meta} to parse the devkit's meta.mat again")
    return ImageList(paths, FileReader(paths), list(dataset.targets), classes)


def _read_arrays(spec: DatasetSpec, root: Path, split: str, image_size: int | None, download: bool) -> DecodedSplit:
    """A split torchvision's class reads as arrays (MNIST, CIFAR, SVHN, STL-10), resized if asked."""
    dataset = _open_torchvision(spec, root, split, download)
    _check_class_names(spec, dataset, root)
    images, labels = _checked_arrays(spec, root, split, dataset)
    if image_size is not None:  # resized in chunks of 4096, each in float32
        check_resize_fits(image_size, len(images), images.shape[1], 4096)
        images = torch.cat([resize(chunk, image_size) for chunk in images.split(4096)])
    return DecodedSplit(images.contiguous(), labels.to(torch.int64), list(spec.classes))


def _checked_arrays(spec: DatasetSpec, root: Path, split: str, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (N, C, H, W) and labels torchvision read from the files, as bytes and whole numbers, one label an
    image: anything else is a damaged copy, named (the label values themselves are split.check_labels's)."""
    import numpy as np

    data = np.asarray(dataset.data)
    raw = np.asarray(dataset.targets if hasattr(dataset, "targets") else dataset.labels)
    damaged = f"{spec.name} at {root} is damaged: its {split} split's"
    if data.dtype != np.uint8 or data.ndim not in (3, 4):
        raise UserError(f"{damaged} images are {data.dtype} of shape {data.shape}, not bytes of (N, H, W) or "
                        f"(N, C, H, W); fetch the files again")
    if raw.ndim != 1 or raw.dtype.kind not in "iu":
        kind = raw.dtype if raw.dtype.kind != "O" else "a mix of " + ", ".join(sorted({type(v).__name__ for v in
                                                                                    raw.ravel()[:1000]}))
        raise UserError(f"{damaged} labels are {kind} of shape {raw.shape}, not one whole number an image; fetch the "
                        f"files again")
    if len(raw) != len(data):
        raise UserError(f"{damaged} {len(data):,} images have {len(raw):,} labels; fetch the files again")
    if raw.dtype == np.uint64 and len(raw) and raw.max() > np.iinfo(np.int64).max:
        raise UserError(f"{damaged} labels hold {raw.max()}, not a class index; fetch the files again")
    return _as_nchw(data), torch.from_numpy(raw.astype(np.int64))


def _open_torchvision(spec: DatasetSpec, root: Path, split: str, download: bool):
    """torchvision's own dataset object for this split; a missing or damaged copy is a UserError."""
    import torchvision.datasets as tvd  # imported when needed, for start-up speed

    split_value = spec.train_split if split == "train" else spec.test_split
    kwargs = {spec.split_keyword: split_value}
    if spec.downloadable:
        kwargs["download"] = download
    check = check_files(spec, root)
    if not (download and spec.downloadable):  # (a download replaces what is missing or damaged)
        if check.damaged is not None:
            fix = "fetch it again, or delete it and pass --download" if spec.downloadable else "fetch it again"
            raise UserError(f"{spec.name} at {root} cannot be read, a file is damaged or incomplete: {check.damaged}; "
                            f"{fix}")
        if not check.found:
            raise UserError(missing_message(spec, root, download))
    present = bool(check.found)
    try:
        dataset = getattr(tvd, spec.torchvision_class)(str(root), **kwargs)
    except ImportError as error:  # SVHN's .mat files and ImageNet's devkit need scipy, which torchvision lacks
        raise UserError(f"reading {spec.name} needs the Python package {spec.needs_module or error.name}, which is "
                        f"not installed: pip install {spec.needs_module or error.name}") from None
    except (RuntimeError, OSError, ValueError, AssertionError, EOFError, KeyError, IndexError, TypeError) as error:
        reason, missing = error_reason(error), isinstance(error, FileNotFoundError)
        # another OSError: a download could not reach the host; "Error downloading": MNIST's mirrors all failed
        if (isinstance(error, OSError) and not missing) or (download and reason.startswith("Error downloading")):
            raise UserError(f"could not download {spec.name} ({reason}); copy it to {root} and pass --data-dir, or "
                            f"--no-download") from None
        if present and not missing:  # the files are there but cannot be read
            raise UserError(f"{spec.name} at {root} cannot be read ({reason}); its files may be damaged "
                            f"or incomplete: fetch them again, or delete them and pass --download") from None
        raise UserError(missing_message(spec, root, download)) from None
    return dataset


def _as_nchw(data) -> torch.Tensor:
    images = torch.as_tensor(data)
    if images.ndim == 3:  # MNIST-style (N, H, W)
        return images.unsqueeze(1)
    if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):  # CIFAR-style (N, H, W, C)
        return images.permute(0, 3, 1, 2)
    return images


def missing_message(spec: DatasetSpec, root: Path, download: bool) -> str:
    """Names every file looked for: the published ones under the data dir, then an image folder."""
    unpacked = {name: folder if "." in folder else f"{folder}/" for name, folder in spec.unpacked_as.items()}
    names = ", ".join(f"{name} (or {unpacked[name]}, torchvision's unpacked copy)" if name in unpacked else name
                      for name in spec.files)
    if download or not spec.downloadable:
        hint = "pass --data-dir with the folder that holds it"
    else:
        hint = "pass --download to fetch it, or --data-dir"
    return (f"{spec.name} not found: looked in {root} for {names} (torchvision's layout) and for an image folder "
            f"{root}/train/<class>/*; {hint}")


def _check_class_names(spec: DatasetSpec, dataset, root: Path) -> None:
    """Where torchvision reads the class names from the dataset's own files (CIFAR's meta, STL-10's
    class_names.txt), they must be ours, in our order: labels are indices into them."""
    found = getattr(dataset, "classes", None) if spec.names_in_files else None
    if found is not None:
        check_class_names(spec.name, list(found), root, "fetch the dataset's files again")
    if found and loose_names(found) != loose_names(spec.classes):
        raise UserError(f"{root} does not hold {spec.name}: its files name the classes {', '.join(found[:6])}, ... "
                        f"where {spec.name} has {', '.join(spec.classes[:6])}, ...; use --dataset imagefolder for "
                        f"other data")


def class_order(spec: DatasetSpec, classes: list[str], root: Path) -> torch.Tensor | None:
    """For a copy of a named dataset whose class folders sort differently: folder label -> dataset label."""
    if spec.classes is None or list(spec.classes) == list(classes):
        return None
    wanted = loose_names(spec.classes)
    if sorted(loose_names(classes)) != sorted(wanted):
        raise UserError(f"{root} does not hold {spec.name}: its classes are {', '.join(classes[:12])}, "
                        f"expected {', '.join(spec.classes[:12])}; use --dataset imagefolder for other data")
    return torch.tensor([wanted.index(name) for name in loose_names(classes)])
