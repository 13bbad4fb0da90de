"""Read one split of a dataset into memory as uint8 images (N, C, H, W) and int64 labels.

Three kinds of source for a named dataset: the copy embedded in the package (cifar10-sample),
torchvision's own dataset class on the dataset's published files (when any of them is in the data dir:
registry.py's `files`, which published.check_files looks over first), else an image-folder copy at the
data dir (ROOT/train/<class>/*, ROOT/test|val/<class>/*). The checks that a split's classes and image
shape agree with the other split's, and with the dataset's, are here too.
Image files are listed with torchvision's find_classes and a walk that follows symlinks but
enters each folder once (a symlink loop is walked once), and decoded in bulk by torchvision.io,
on a thread pool, not one PIL image at a time. Which files are images is IMAGE_EXTENSIONS, the
one list that training, --stream and predict share.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from imgcls.classnames import named_classes, names_file_beside
from imgcls.config import DataConfig, default_data_dir
from imgcls.data.published import check_files, has_own_files, resolved_path
from imgcls.data.registry import DatasetSpec, loose_names
from imgcls.data.types import DecodedSplit, ImageList
from imgcls.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The files taken for images, everywhere (lower case; a file's name is compared in lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm")
# Pillow's own decompression-bomb limit (twice its MAX_IMAGE_PIXELS), applied to every format: Pillow
# checks the files it decodes, and the header of every file torchvision decodes is checked the same way.
MAX_IMAGE_PIXELS = 178_956_970
PILLOW_FORMATS = ("PNG", "BMP", "TIFF", "PNM")
KNOWN_FORMATS = "JPEG, PNG, GIF, WebP, BMP, TIFF, PPM or PGM"


def source_kind(spec: DatasetSpec, root: Path) -> str:
    """Which source a split will be read from: 'embedded', 'folder' or 'torchvision'."""
    if spec.embedded is not None:
        return "embedded"
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
               download: bool) -> DecodedSplit:
    kind = source_kind(spec, root)
    _check_not_a_file(root, kind)
    if kind == "torchvision":
        decoded = _read_torchvision(spec, root, split, image_size, skip_bad, download)
    else:
        listing = _list_zip(spec.embedded, split) if kind == "embedded" else _list_folder(root, split, spec)
        images, labels, skipped = decode_all(listing, image_size, skip_bad)
        decoded = DecodedSplit(images, labels, listing.classes, skipped, listing.passed_over)
    return _match_spec(spec, decoded, root, image_size)


def resolve_data_dir(config: DataConfig) -> Path:
    return Path(config.data_dir).expanduser() if config.data_dir else default_data_dir()


def _check_not_a_file(root: Path, kind: str) -> None:
    if kind != "embedded" and root.exists() and not root.is_dir():
        raise UserError(f"data dir {root} is a file, not a folder; pass --data-dir (or set IMGCLS_DATA to) the "
                        f"folder that holds the dataset")


def folder_split_dir(root: Path, split: str) -> Path:
    if split == "train":
        return root / "train"
    return root / "test" if (root / "test").is_dir() or not (root / "val").is_dir() else root / "val"


def _list_folder(root: Path, split: str, spec: DatasetSpec) -> ImageList:
    from torchvision.datasets.folder import find_classes  # torchvision: imported when needed, for start-up speed

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
    return ImageList(paths, lambda i: read_image_file(paths[i]), labels, classes, passed_over)


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
    with os.fdopen(fd, "rb") as file:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "FIFO" if stat.S_ISFIFO(mode) else "folder" if stat.S_ISDIR(mode) else \
                "socket" if stat.S_ISSOCK(mode) else "device"
            raise OSError(errno.EINVAL, f"not a regular file but a {kind}")
        return file.read()


def _list_zip(path: Path, split: str) -> ImageList:
    archive = zipfile.ZipFile(path)
    names = sorted(n for n in archive.namelist() if n.startswith(f"{split}/") and not n.endswith("/"))
    classes = sorted({n.split("/")[1] for n in names})
    labels = [classes.index(n.split("/")[1]) for n in names]
    return ImageList([f"{path.name}:{n}" for n in names], lambda i: archive.read(names[i]), labels, classes)


def decode_all(listing: ImageList, image_size: int | None, skip_bad: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Decode every image (as RGB), resize if asked, and stack; grey datasets come back with one channel."""
    def decode(i: int) -> torch.Tensor | None:
        try:
            return decode_image_bytes(listing.read(i), image_size)
        except (RuntimeError, ValueError, OSError) as error:
            if skip_bad:
                return None
            raise UserError(f"cannot read image {listing.names[i]} ({error_reason(error)}); fix or remove it, or "
                            f"pass --skip-bad-images") from None

    workers = min(8, os.cpu_count() or 1)
    if image_size is not None:  # decoded as RGB; each worker resizes one image in float32 at a time
        check_fits_memory(image_size, (len(listing.names) + 4 * workers) * 3 * image_size ** 2,
                          f"{len(listing.names)} images")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        decoded = list(pool.map(decode, range(len(listing.names)), chunksize=256))
    keep = [i for i, image in enumerate(decoded) if image is not None]
    if not keep:
        raise UserError(f"no readable image among {len(decoded)} files (first: {listing.names[0]})")
    _check_same_size([decoded[i] for i in keep], [listing.names[i] for i in keep])
    images = torch.stack([decoded[i] for i in keep])
    labels = torch.tensor([listing.labels[i] for i in keep], dtype=torch.int64)
    return to_grey_if_grey(images), labels, len(decoded) - len(keep)


def decode_image_bytes(data: bytes, image_size: int | None) -> torch.Tensor:
    """One encoded image -> uint8 (3, H, W). torchvision.io decodes JPEG, WebP and GIF. PNG goes through Pillow:
    torchvision 0.29's PNG decoder crashes the whole process (SIGSEGV) on some damaged files, which the fuzz tests
    found. So do the formats torchvision.io cannot read that ImageFolder lists (BMP, TIFF, PPM, PGM). 16-bit
    images are scaled to 8 bits and an animated image gives its first frame. The format is told from the
    first bytes, whatever the file's name."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2.functional import to_dtype

    if not data:
        raise ValueError("the file is empty")
    kind = image_format(data)
    if kind is None:
        raise ValueError(f"not an image file: it does not start like a {KNOWN_FORMATS} file")
    if kind in PILLOW_FORMATS:
        image = _decode_with_pillow(data)
    else:
        _check_pixel_limit(data)  # torchvision's decoders have no limit of their own
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    if image.ndim == 4:
        image = image[0]
    if image.dtype != torch.uint8:
        image = to_dtype(image, torch.uint8, scale=True)
    return resize(image, image_size) if image_size is not None else image


def image_format(data: bytes) -> str | None:
    """The image format of encoded bytes, by their signature; None for anything else."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == PNG_SIGNATURE:
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] in (b"II*\0", b"MM\0*"):
        return "TIFF"
    if data[:2] in (b"P2", b"P3", b"P5", b"P6"):
        return "PNM"
    return None


def _pillow():
    from PIL import Image  # imported when needed, for start-up speed

    # Images between Pillow's warning and its limit are fine here: no warning line per image.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return Image


def _too_many_pixels() -> ValueError:
    return ValueError(f"more than {MAX_IMAGE_PIXELS:,} pixels, the limit that guards against decompression bombs; "
                      f"scale the image down")


def _check_pixel_limit(data: bytes) -> None:
    """Refuse an image with too many pixels from its header alone (Pillow reads only the header here)."""
    image_module = _pillow()
    try:
        with image_module.open(io.BytesIO(data)) as opened:
            width, height = opened.size
    except image_module.DecompressionBombError:
        raise _too_many_pixels() from None
    except Exception:  # noqa: BLE001 -- a header Pillow cannot parse: the decoder will say what is wrong
        return
    if width * height > MAX_IMAGE_PIXELS:
        raise _too_many_pixels()


def _decode_with_pillow(data: bytes) -> torch.Tensor:
    import numpy as np

    image_module = _pillow()
    try:
        with image_module.open(io.BytesIO(data)) as opened:
            if opened.mode.startswith("I"):  # 16- or 32-bit grey: scale to 8 bits, as for the other decoders
                grey = np.asarray(opened).astype(np.float64)
                top = 65535.0 if opened.mode.startswith("I;16") or opened.format == "PNG" or grey.max(initial=0) > 255 \
                    else 255.0
                pixels = np.repeat((grey * (255.0 / top)).round().clip(0, 255).astype(np.uint8)[..., None], 3, 2)
            else:
                pixels = np.asarray(opened.convert("RGB"))
    except image_module.DecompressionBombError:
        raise _too_many_pixels() from None
    except Exception as error:  # noqa: BLE001 -- Pillow's plugins fail in many ways on a damaged file
        raise ValueError(error_reason(error)) from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def check_fits_memory(image_size: int, needed: int, what: str) -> None:
    """Refuse at once an --image-size whose decoded images cannot fit in this machine's memory, rather than
    fail deep inside a resize."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): let the allocation decide
        return
    if needed > total:
        raise UserError(f"--image-size {image_size}: {what} would take {needed / 1e9:,.0f} GB decoded, more than "
                        f"this machine's {total / 1e9:,.0f} GB of memory; use a smaller --image-size")


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    from torchvision.transforms.v2.functional import resize as tv_resize  # when needed: start-up speed

    if images.shape[-2:] == (size, size):
        return images
    if size == 1 and images.shape[-3] > 1:
        # torch's antialiased uint8 resize of a multi-channel image to 1x1 fails an internal assert:
        # resize each channel on its own (the same numbers)
        return tv_resize(images.reshape(-1, 1, *images.shape[-2:]), [1, 1], antialias=True).reshape(
            *images.shape[:-2], 1, 1)
    return tv_resize(images, [size, size], antialias=True)


def to_grey_if_grey(images: torch.Tensor) -> torch.Tensor:
    """Images decoded as RGB whose three channels agree everywhere are grey: keep one channel."""
    if images.shape[1] == 3 and torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2]):
        return images[:, :1].contiguous()
    return images


def _check_same_size(images: list[torch.Tensor], names: list[str]) -> None:
    first = images[0].shape[-2:]
    for image, name in zip(images, names):
        if image.shape[-2:] != first:
            raise UserError(f"images differ in size ({names[0]} is {size_text(first)}, {name} is "
                            f"{size_text(image.shape)}); pass --image-size N to resize them all to NxN")


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


def size_text(shape) -> str:
    """An image's size as users read it: width first, from a (..., H, W) shape."""
    return f"{shape[-1]} wide, {shape[-2]} high"


def list_images(spec: DatasetSpec, root: Path, split: str, download: bool = False) -> ImageList:
    """The image files of a split, undecoded, for the streaming path; labels in the dataset's class order."""
    kind = source_kind(spec, root)
    if kind == "embedded":
        return _list_zip(spec.embedded, split)
    _check_not_a_file(root, kind)
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
    return ImageList(paths, lambda i: read_image_file(paths[i]), list(dataset.targets),
                     [names[0] for names in dataset.classes])


def _read_torchvision(spec: DatasetSpec, root: Path, split: str, image_size: int | None, skip_bad: bool,
                      download: bool) -> DecodedSplit:
    dataset = _open_torchvision(spec, root, split, download)
    _check_class_names(spec, dataset, root)
    if spec.lists_files:
        listing = _imagenet_listing(dataset)
        images, labels, skipped = decode_all(listing, image_size, skip_bad)
        return DecodedSplit(images, labels, listing.classes, skipped)
    images = _as_nchw(dataset.data)
    labels = torch.as_tensor(getattr(dataset, "targets", None) if hasattr(dataset, "targets") else dataset.labels)
    if image_size is not None:  # resized in chunks of 4096, each in float32
        check_fits_memory(image_size, (len(images) + 4 * 4096) * images.shape[1] * image_size ** 2,
                          f"{len(images)} images")
        images = torch.cat([resize(chunk, image_size) for chunk in images.split(4096)])
    return DecodedSplit(images.contiguous(), labels.to(torch.int64), list(spec.classes))


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
    except (RuntimeError, FileNotFoundError, ValueError, AssertionError, EOFError, KeyError, IndexError,
            TypeError) as error:
        if download and error_reason(error).startswith("Error downloading"):  # MNIST's mirrors all failed
            raise UserError(f"could not download {spec.name} ({error_reason(error)}); copy it to {root} and pass "
                            f"--data-dir, or --no-download") from None
        if present and not isinstance(error, FileNotFoundError):  # the files are there but cannot be read
            raise UserError(f"{spec.name} at {root} cannot be read ({error_reason(error)}); its files may be damaged "
                            f"or incomplete: fetch them again, or delete them and pass --download") from None
        raise UserError(missing_message(spec, root, download, error)) from None
    except OSError as error:  # a download that could not reach the host
        raise UserError(f"could not download {spec.name} ({error_reason(error)}); copy it to {root} and pass "
                        f"--data-dir, or --no-download") from None
    return dataset


def _as_nchw(data) -> torch.Tensor:
    images = torch.as_tensor(data)
    if images.ndim == 3:  # MNIST-style (N, H, W)
        return images.unsqueeze(1)
    if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):  # CIFAR-style (N, H, W, C)
        return images.permute(0, 3, 1, 2)
    return images


def missing_message(spec: DatasetSpec, root: Path, download: bool, error: Exception | None = None) -> str:
    """Names every file looked for: the published ones under the data dir, then an image folder."""
    names = ", ".join(f"{name} (or {_unpacked_name(spec.unpacked_as[name])}, torchvision's unpacked copy)"
                      if name in spec.unpacked_as else name for name in spec.files)
    if download or not spec.downloadable:
        hint = "pass --data-dir with the folder that holds it"
    else:
        hint = "pass --download to fetch it, or --data-dir"
    return (f"{spec.name} not found: looked in {root} for {names} (torchvision's layout) and for an image folder "
            f"{root}/train/<class>/*; {hint}")


def _unpacked_name(name: str) -> str:
    return name if "." in name else f"{name}/"  # a folder


def _check_class_names(spec: DatasetSpec, dataset, root: Path) -> None:
    """Where torchvision reads the class names from the dataset's own files (CIFAR's meta, STL-10's
    class_names.txt), they must be ours, in our order: labels are indices into them."""
    found = getattr(dataset, "classes", None) if spec.names_in_files else None
    if found and loose_names(found) != loose_names(spec.classes):
        raise UserError(f"{root} does not hold {spec.name}: its files name the classes {', '.join(found[:6])}, ... "
                        f"where {spec.name} has {', '.join(spec.classes[:6])}, ...; use --dataset imagefolder for "
                        f"other data")


def _match_spec(spec: DatasetSpec, split: DecodedSplit, root: Path, image_size: int | None) -> DecodedSplit:
    """An image-folder copy of a named dataset must have its classes and image shape; labels follow its order."""
    if spec.shape is not None and image_size is None and tuple(split.images.shape[1:]) != spec.shape:
        raise UserError(f"{root} does not hold {spec.name}: images are {tuple(split.images.shape[1:])} (C, H, W), "
                        f"expected {spec.shape}; pass --image-size to resize, or use --dataset imagefolder")
    order = class_order(spec, split.classes, root)
    if order is None:
        return split
    return DecodedSplit(split.images, order[split.labels], list(spec.classes), split.skipped, split.passed_over)


def class_order(spec: DatasetSpec, classes: list[str], root: Path) -> torch.Tensor | None:
    """For a copy of a named dataset whose class folders sort differently: folder label -> dataset label."""
    if spec.classes is None or list(spec.classes) == list(classes):
        return None
    wanted = loose_names(spec.classes)
    if sorted(loose_names(classes)) != sorted(wanted):
        raise UserError(f"{root} does not hold {spec.name}: its classes are {', '.join(classes[:12])}, "
                        f"expected {', '.join(spec.classes[:12])}; use --dataset imagefolder for other data")
    return torch.tensor([wanted.index(name) for name in loose_names(classes)])


def error_reason(error: BaseException) -> str:
    """A short, clean reason for a message: an OSError's own words without the file name (the message names the
    file), else the first line of the text, without the C++ source locations of torch's and torchvision's
    errors ("decode_jpeg, /__w/vision/.../decode_jpeg.cpp:171, ...", "... at "/__w/pytorch/...cpp":123")."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = (str(error).strip() or type(error).__name__).splitlines()[0]
    text = re.sub(r"^\w+, \S+\.(?:cpp|cu|h):\d+, ", "", text)
    return re.sub(r"\s*(?:at )?\"?\S+\.(?:cpp|cu|h)\"?:\d+,?", "", text).strip() or type(error).__name__
