"""A cheap look at a dataset's published files, one check per format (headers, sizes, listings), so that a
damaged or cut-off copy is named before torchvision fails on it. Imports neither torch nor imgcls."""

from __future__ import annotations

import math
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

STL_IMAGE_BYTES = 3 * 96 * 96


class Damaged(Exception):
    """A dataset file that its reader could not open: which file, and why (for one line of a message)."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path} ({why})")
        self.path, self.why = path, why


def _head(path: Path, size: int) -> bytes:
    if not path.is_file():
        raise Damaged(path, "not a file")
    with open(path, "rb") as file:
        return file.read(size)


def _idx_count(path: Path, kind: int, item_bytes: int) -> int:
    """The item count of an idx file (MNIST's format: 0, 0, type 0x08 = uint8, number of dimensions, then each
    dimension as a big-endian int32), checked against the file's size."""
    header = _head(path, 4 + 4 * kind)
    if len(header) < 4 or header[:3] != b"\0\0\x08" or header[3] != kind:
        raise Damaged(path, f"not an idx file of {kind} dimensions (its first bytes are {header[:4].hex() or 'none'})")
    dims = struct.unpack(f">{kind}I", header[4:].ljust(4 * kind, b"\0"))
    expected, size = 4 + 4 * kind + math.prod(dims), path.stat().st_size
    if math.prod(dims[1:]) != item_bytes or size != expected:
        raise Damaged(path, f"{size:,} bytes where its header, {' x '.join(map(str, dims))}, needs {expected:,} bytes "
                            f"of {item_bytes} per item")
    return dims[0]


def check_idx(paths: list[Path]) -> None:
    for images, labels in zip(paths[::2], paths[1::2]):  # images, labels; train, then t10k
        count, label_count = _idx_count(images, 3, 28 * 28), _idx_count(labels, 1, 1)
        if count != label_count:
            raise Damaged(labels, f"{label_count:,} labels for the {count:,} images of {images.name}")
        _check_label_bytes(labels, labels.read_bytes()[8:], range(10))  # 60 kB at most


def _check_label_bytes(path: Path, values: bytes, allowed: range) -> None:
    """One byte a label, each in `allowed`: the first one outside is named with its place."""
    outside = values.translate(None, bytes(allowed))  # in C: the labels outside, in order
    if outside:
        bad = values.index(outside[0])
        raise Damaged(path, f"label {values[bad]} at item {bad:,}, where labels are "
                            f"{allowed.start}..{allowed.stop - 1}")


def check_pickle(paths: list[Path]) -> None:
    # CIFAR's files are pickles of protocol 2: PROTO (0x80) first, STOP (".") last; a cut-off copy lacks the STOP
    for path in paths:
        first = _head(path, 1)
        if not first:
            raise Damaged(path, "empty")
        with open(path, "rb") as file:
            file.seek(-1, 2)
            last = file.read(1)
        if first != b"\x80" or last != b".":
            raise Damaged(path, "not a whole pickle file: it does not start with a protocol mark and end with a STOP")


def check_mat(paths: list[Path]) -> None:
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


def check_stl(paths: list[Path]) -> None:
    """STL-10's binaries: X is N images of 3x96x96 bytes, y one byte per image, each 1..10."""
    named = {path.name: path for path in paths}
    for images in (path for path in paths if path.name.endswith("_X.bin")):
        size = images.stat().st_size
        if size == 0 or size % STL_IMAGE_BYTES:
            raise Damaged(images, f"{size:,} bytes, not a whole number of 96x96x3 images")
        labels = named.get(images.name.replace("_X.bin", "_y.bin"))  # unlabeled_X.bin has none
        if labels is not None:
            values, count = labels.read_bytes(), size // STL_IMAGE_BYTES  # a few kB
            if len(values) != count:
                raise Damaged(labels, f"{len(values):,} bytes where {count:,} labels in 1..10 are expected for the "
                                      f"images of {images.name}")
            _check_label_bytes(labels, values, range(1, 11))


def check_imagenet(paths: list[Path]) -> None:
    """ILSVRC-2012's archives (the devkit's listing, the first member of the others), or what torchvision unpacked
    them into: train/ and val/ (class folders of images), meta.bin (torch.save's zip file)."""
    for path in paths:
        if path.is_dir():
            if not any(inner.is_dir() and any(inner.iterdir()) for inner in path.iterdir()):
                raise Damaged(path, "no class folder with images in it")
        elif path.name == "meta.bin":
            if not zipfile.is_zipfile(path):
                raise Damaged(path, "not the meta file torchvision writes; delete it to parse the devkit again")
        else:
            try:
                with tarfile.open(path) as archive:
                    _check_tar(path, archive)
            except (tarfile.TarError, EOFError, zlib.error) as error:
                raise Damaged(path, f"not a readable tar archive: {_first_line(error)}") from None


def _check_tar(path: Path, archive: tarfile.TarFile) -> None:
    if path.name.endswith(".tar.gz"):  # the devkit, 2.5 MB: read it all, for the two files torchvision takes
        names = set(archive.getnames())
        absent = [name for name in ("meta.mat", "ILSVRC2012_validation_ground_truth.txt")
                  if f"ILSVRC2012_devkit_t12/data/{name}" not in names]
        if absent:
            raise Damaged(path, f"no ILSVRC2012_devkit_t12/data/{absent[0]} in it")
    elif archive.next() is None:  # the train and val tars are huge: their first member only
        raise Damaged(path, "an empty archive")
