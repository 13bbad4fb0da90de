"""Decode encoded images into uint8 (3, H, W) tensors: one image (decode_image_bytes), or a whole list across
the cores (decode_images), in DataLoader worker processes that write each image into its row of one
shared-memory array, as --stream's workers decode its batches."""

from __future__ import annotations

import io
import multiprocessing
import os
import re
import signal
import struct
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch

from imgcls.errors import UserError
from imgcls.memory import check_fits_memory

# The first bytes of each format read (and WebP's "RIFF", size, "WEBP").
SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP",
              b"II*\0": "TIFF", b"MM\0*": "TIFF", b"P2": "PNM", b"P3": "PNM", b"P5": "PNM", b"P6": "PNM"}
# Pillow's own decompression-bomb limit (twice its MAX_IMAGE_PIXELS), applied to every format from its header.
MAX_IMAGE_PIXELS = 178_956_970
TOO_MANY_PIXELS = (f"more than {MAX_IMAGE_PIXELS:,} pixels, the limit that guards against decompression bombs; scale "
                   f"the image down")
PILLOW_FORMATS = ("PNG", "BMP", "TIFF", "PNM")
KNOWN_FORMATS = "JPEG, PNG, GIF, WebP, BMP, TIFF, PPM or PGM"
# JPEG frame headers (SOF0-SOF15 less DHT, JPG and DAC), which hold the image's height and width.
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
CHUNK = 512  # images per unit of work: about 30 ms of decoding, so the progress bar moves smoothly
MIN_PARALLEL = 4096  # fewer images than this decode here alone: not worth the workers

ProgressCallback = Callable[[int, int], None]  # (images decoded so far, images in all)
ImageReader = Callable[[int], bytes]  # the i-th image's encoded bytes


@dataclass
class DecodedImages:
    images: torch.Tensor  # uint8 (len(kept), 3, H, W)
    kept: list[int]  # the indices of the images decoded; the others were unreadable (skip_bad)
    decoded_by: set[int] = field(default_factory=set)  # the ids of the processes that decoded images


@dataclass
class _ChunkReport:
    bad: dict[int, str] = field(default_factory=dict)  # index -> reason
    mismatch: tuple[int, tuple] | None = None  # the first image whose size differs from the first's
    pid: int = 0


@dataclass
class _Chunks(torch.utils.data.Dataset):
    """Chunk c is images starts[c] .. starts[c + 1] - 1; decoding one writes its images into their rows of `out`
    and returns its _ChunkReport (forked workers share `out`: nothing decoded is pickled back)."""

    read: ImageReader
    out: torch.Tensor
    starts: list[int]
    image_size: int | None

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, chunk: int) -> _ChunkReport:
        report = _ChunkReport(pid=os.getpid())
        for index, image in decode_many(self.read, range(self.starts[chunk], self.starts[chunk + 1]),
                                        self.image_size).items():
            if isinstance(image, str):
                report.bad[index] = image
            elif image.shape != self.out.shape[1:]:
                report.mismatch = report.mismatch or (index, tuple(image.shape))
            else:
                self.out[index] = image
        return report


def decode_images(names: list[str], read: ImageReader, image_size: int | None, skip_bad: bool,
                  progress: ProgressCallback | None = None, workers: int | None = None) -> DecodedImages:
    """Every image as RGB, resized to image_size x image_size if given. An unreadable image is a UserError naming
    the first one (by `names`), or skipped with skip_bad; images of different sizes are a UserError. workers:
    worker processes (default: one per core, none for a short list)."""
    total = len(names)
    workers = worker_count(total) if workers is None else workers
    if image_size is not None:  # each process resizes one image in float32 at a time
        check_resize_fits(image_size, total, 3, workers + 1)
    report = progress or (lambda done, count: None)
    report(0, total)
    first, image, bad = _first_readable(names, read, image_size, skip_bad)
    out = torch.empty((total, *image.shape), dtype=torch.uint8)
    out[first] = image
    workers = workers if _fits_shared_memory(out.numel()) else 0
    chunks = _Chunks(read, out.share_memory_() if workers else out, list(range(first + 1, total, CHUNK)) + [total],
                     image_size)
    decoded_by, mismatch, iterator = {os.getpid()}, None, None  # this process decoded the first image
    try:
        iterator = forked_workers(chunks, workers)
        for chunk, result in enumerate(iterator):  # in order: the first unreadable image is the first reported
            if result.bad and not skip_bad:
                index = min(result.bad)
                raise UserError(unreadable_message(names[index], result.bad[index]))
            bad.update(result.bad)
            mismatch = mismatch or result.mismatch
            decoded_by.add(result.pid)
            report(chunks.starts[chunk + 1], total)
    finally:
        iterator = None  # ends the workers now, even while an exception's traceback is kept
    if mismatch:
        raise UserError(f"images differ in size ({names[first]} is {size_text(image.shape)}, {names[mismatch[0]]} "
                        f"is {size_text(mismatch[1])}); pass --image-size N to resize them all to NxN")
    kept = [i for i in range(total) if i not in bad]
    return DecodedImages(out[kept] if bad else out, kept, decoded_by)


def check_resize_fits(image_size: int, count: int, channels: int, in_flight: int) -> None:
    """Refuse at once an --image-size whose decoded images (and those being resized, in float32) cannot fit in
    memory, not deep inside a resize."""
    check_fits_memory((count + 4 * in_flight) * channels * image_size ** 2,
                      f"--image-size {image_size}: {count} images", "use a smaller --image-size")


def worker_count(total: int) -> int:
    """One worker per core, when the list is long enough to repay starting them and workers can be forked."""
    cores = usable_cores()
    if cores < 2 or total < MIN_PARALLEL or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    return min(cores, total // CHUNK)


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which a container or taskset can narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _fits_shared_memory(size: int) -> bool:
    """Whether /dev/shm has room for the array: a shared array larger than its room (a container's is often
    64 MB) would kill the process (SIGBUS) when written, not fail at allocation."""
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return True  # no /dev/shm (not Linux): torch shares memory its own way
    return stats.f_bavail * stats.f_frsize > 1.1 * size


def unreadable_message(name: str, reason: str) -> str:
    return f"cannot read image {name} ({reason}); fix or remove it, or pass --skip-bad-images"


def _first_readable(names: list[str], read: ImageReader, image_size: int | None,
                    skip_bad: bool) -> tuple[int, torch.Tensor, dict[int, str]]:
    """The first image that decodes, which sets the size of all: (its index, the image, the bad ones before)."""
    bad = {}
    for index in range(len(names)):
        image = decode_many(read, [index], image_size)[index]
        if not isinstance(image, str):
            return index, image, bad
        if not skip_bad:
            raise UserError(unreadable_message(names[index], image))
        bad[index] = image
    raise UserError(f"no readable image among {len(names)} files (first: {names[0]})")


def forked_workers(dataset: torch.utils.data.Dataset, workers: int, sampler=None, pin_memory: bool = False):
    """The dataset's items, in the sampler's order, from `workers` DataLoader workers (none: made here). They are
    forked (nothing pickled or imported again) with the stop signals blocked, and ignore them: see below."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=workers,
                                         pin_memory=pin_memory, worker_init_fn=ignore_stop_signals,
                                         multiprocessing_context="fork" if workers else None)
    with stop_signals_blocked():
        return iter(loader)


@contextmanager
def stop_signals_blocked():
    """SIGINT and SIGTERM held back while worker processes are forked: a child inherits the mask, so a signal to
    the process group before it ignores them stays pending there (dropped once ignored) instead of killing it."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A worker's start: SIGINT and SIGTERM are the main process's, which stops the workers once it has saved."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def decode_many(read: ImageReader, indices, image_size: int | None) -> dict[int, torch.Tensor | str]:
    """Each image as decode_image_bytes gives it, or the reason it cannot be read, in the order of `indices`."""
    encoded, found = {}, {}
    for index in indices:
        try:
            encoded[index] = read(index)
        except OSError as error:
            found[index] = error_reason(error)
    found.update(_decode_jpegs(encoded, image_size))
    for index, data in encoded.items():
        if index not in found:
            try:
                found[index] = decode_image_bytes(data, image_size)
            except (RuntimeError, ValueError, OSError) as error:
                found[index] = error_reason(error)
    return {index: found[index] for index in indices}


def _decode_jpegs(encoded: dict[int, bytes], image_size: int | None) -> dict[int, torch.Tensor]:
    """The JPEGs in one batched call (a quarter faster); none if that fails: each is then decoded on its own,
    which names the failing one."""
    from torchvision.io import ImageReadMode, decode_jpeg

    batch = {index: torch.frombuffer(bytearray(data), dtype=torch.uint8) for index, data in encoded.items()
             if image_format(data) == "JPEG" and _pixel_count(data) <= MAX_IMAGE_PIXELS}
    try:
        images = decode_jpeg(list(batch.values()), mode=ImageReadMode.RGB) if batch else []
    except RuntimeError:
        return {}
    return {index: image if image_size is None else resize(image, image_size) for index, image in zip(batch, images)}


def decode_image_bytes(data: bytes, image_size: int | None) -> torch.Tensor:
    """One encoded image (format told by its first bytes) -> uint8 (3, H, W): torchvision.io for JPEG, WebP and
    GIF, Pillow for the rest and for PNG (torchvision 0.29's PNG decoder segfaults on some damaged files)."""
    from torchvision.io import ImageReadMode, decode_image

    if not data:
        raise ValueError("the file is empty")
    kind = image_format(data)
    if kind is None:
        raise ValueError(f"not an image file: it does not start like a {KNOWN_FORMATS} file")
    if kind in PILLOW_FORMATS:
        image = _decode_with_pillow(data)
    else:
        if _pixel_count(data) > MAX_IMAGE_PIXELS:  # torchvision's decoders have no limit of their own
            raise ValueError(TOO_MANY_PIXELS)
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    if image.ndim == 4:  # an animated GIF: its first frame
        image = image[0]
    return resize(image, image_size) if image_size is not None else image


def image_format(data: bytes) -> str | None:
    """The image format of encoded bytes, by their signature; None for anything else."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((kind for start, kind in SIGNATURES.items() if data.startswith(start)), None)


def _pillow():
    from PIL import Image

    # Images between Pillow's warning and its limit are fine here: no warning line per image.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    # nor Pillow's notes on damaged files ("Corrupt EXIF data"): a file it cannot read is named in the error
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
    return Image


def _pixel_count(data: bytes) -> int:
    """width x height from the header alone: a JPEG's read here (Pillow's open takes 30x as long), anything else's
    by Pillow's open, which reads only the header; 0 where it does not parse (the decoder then says why)."""
    size = _jpeg_frame_size(data) if data[:3] == b"\xff\xd8\xff" else None
    if size is None:
        image_module = _pillow()
        try:
            with image_module.open(io.BytesIO(data)) as opened:
                size = opened.size
        except image_module.DecompressionBombError:
            return MAX_IMAGE_PIXELS + 1
        except Exception:  # noqa: BLE001 -- Pillow's plugins fail in many ways on a damaged header
            return 0
    return size[0] * size[1]


def _jpeg_frame_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the JPEG's first frame header, walking its marker segments; None where they do not
    parse before the first scan (Pillow then decides)."""
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:  # fill byte, or a marker without length
            at += 1 if marker == 0xFF else 2
        elif marker == 0xDA:  # a scan before any frame header
            return None
        elif marker in JPEG_FRAME_MARKERS:
            height, width = struct.unpack_from(">HH", data, at + 5)
            return width, height
        else:
            at += 2 + (data[at + 2] << 8 | data[at + 3])
    return None


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
        raise ValueError(TOO_MANY_PIXELS) from None
    except Exception as error:  # noqa: BLE001 -- Pillow's plugins fail in many ways on a damaged file
        raise ValueError(error_reason(error)) from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    from torchvision.transforms.v2.functional import resize as tv_resize

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


def size_text(shape) -> str:
    """An image's size as users read it: width first, from a (..., H, W) shape."""
    return f"{shape[-1]} wide, {shape[-2]} high"


def error_reason(error: BaseException) -> str:
    """A short reason for a message that names the file: an OSError's own words, else the first line of the text
    without the C++ source locations of torch's and torchvision's errors."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = (str(error).strip() or type(error).__name__).splitlines()[0]
    if re.match(r"cannot identify image file <", text):  # Pillow names its buffer, not the file
        return "not an image imgcls can read: damaged, or in a format none of its decoders knows"
    if re.search(r"\(\) failed|failed with error code", text):  # a C decoder's own words (DGifOpenFileName, WebP)
        return f"damaged or not a whole image file (the decoder says: {text})"
    text = re.sub(r"^\w+, \S+\.(?:cpp|cu|h):\d+, ", "", text)
    return re.sub(r"\s*(?:at )?\"?\S+\.(?:cpp|cu|h)\"?:\d+,?", "", text).strip() or type(error).__name__
