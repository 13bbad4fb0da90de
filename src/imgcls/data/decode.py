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

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pillow's own decompression-bomb limit (twice its MAX_IMAGE_PIXELS), applied to every format from its header.
MAX_IMAGE_PIXELS = 178_956_970
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


class _Chunks(torch.utils.data.Dataset):
    """Chunk c is images starts[c] .. starts[c + 1] - 1; decoding one writes its images into their rows of `out`
    and returns its _ChunkReport (forked workers share `out`: nothing decoded is pickled back)."""

    def __init__(self, read: ImageReader, out: torch.Tensor, starts: list[int], image_size: int | None,
                 skip_bad: bool):
        self.read, self.out, self.starts, self.image_size, self.skip_bad = read, out, starts, image_size, skip_bad

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, chunk: int) -> _ChunkReport:
        return _decode_chunk(self, range(self.starts[chunk], self.starts[chunk + 1]))


def decode_images(names: list[str], read: ImageReader, image_size: int | None, skip_bad: bool,
                  progress: ProgressCallback | None = None, workers: int | None = None) -> DecodedImages:
    """Every image as RGB, resized to image_size x image_size if given. An unreadable image is a UserError naming
    the first one (by `names`), or skipped with skip_bad; images of different sizes are a UserError. workers:
    worker processes (default: one per core, none for a short list)."""
    total = len(names)
    workers = worker_count(total) if workers is None else workers
    if image_size is not None:  # each process resizes one image in float32 at a time
        check_fits_memory(image_size, (total + 4 * (workers + 1)) * 3 * image_size ** 2, f"{total} images")
    report = progress or (lambda done, count: None)
    report(0, total)
    first, image, bad = _first_readable(names, read, image_size, skip_bad)
    out = torch.empty((total, *image.shape), dtype=torch.uint8)
    out[first] = image
    workers = workers if _fits_shared_memory(out.numel()) else 0
    chunks = _Chunks(read, out.share_memory_() if workers else out, list(range(first + 1, total, CHUNK)) + [total],
                     image_size, skip_bad)
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
        try:
            return index, decode_image_bytes(read(index), image_size), bad
        except (RuntimeError, ValueError, OSError) as error:
            if not skip_bad:
                raise UserError(unreadable_message(names[index], error_reason(error))) from None
            bad[index] = error_reason(error)
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


def _decode_chunk(chunks: _Chunks, indices: range) -> _ChunkReport:
    """Read the chunk's files in order, decode them, and write each image into its row of chunks.out."""
    report = _ChunkReport(pid=os.getpid())
    encoded = {}
    for index in indices:
        try:
            encoded[index] = chunks.read(index)
        except OSError as error:
            report.bad[index] = error_reason(error)
    images = _decode_jpegs(encoded, chunks.image_size)
    for index, data in encoded.items():  # a failing run decodes the rest of its chunk too: 30 ms at most
        try:
            image = images[index] if index in images else decode_image_bytes(data, chunks.image_size)
        except (RuntimeError, ValueError, OSError) as error:
            report.bad[index] = error_reason(error)
            continue
        if image.shape != chunks.out.shape[1:]:
            report.mismatch = report.mismatch or (index, tuple(image.shape))
            continue
        chunks.out[index] = image
    return report


def _decode_jpegs(encoded: dict[int, bytes], image_size: int | None) -> dict[int, torch.Tensor]:
    """The chunk's JPEGs in one batched call (a quarter faster), as decode_image_bytes gives them; none if any
    fails: each is then decoded on its own, which names the failing one."""
    from torchvision.io import ImageReadMode, decode_jpeg

    batch = {}
    for index, data in encoded.items():
        if image_format(data) == "JPEG":
            try:
                _check_pixel_limit(data)
            except ValueError:
                continue  # decode_image_bytes says so for this one
            batch[index] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if not batch:
        return {}
    try:
        images = decode_jpeg(list(batch.values()), mode=ImageReadMode.RGB)
    except RuntimeError:
        return {}
    sized = (resize(image, image_size) if image_size is not None else image for image in images)
    return dict(zip(batch, sized))


def decode_image_bytes(data: bytes, image_size: int | None) -> torch.Tensor:
    """One encoded image (format told by its first bytes) -> uint8 (3, H, W): torchvision.io for JPEG, WebP and
    GIF, Pillow for the rest and for PNG (torchvision 0.29's PNG decoder segfaults on some damaged files)."""
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
    from PIL import Image

    # Images between Pillow's warning and its limit are fine here: no warning line per image.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    # nor Pillow's notes on damaged files ("Corrupt EXIF data"): a file it cannot read is named in the error
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
    return Image


def _too_many_pixels() -> ValueError:
    return ValueError(f"more than {MAX_IMAGE_PIXELS:,} pixels, the limit that guards against decompression bombs; "
                      f"scale the image down")


def _check_pixel_limit(data: bytes) -> None:
    """Refuse an image with too many pixels from its header alone: a JPEG's read here (Pillow's open takes 30x
    as long), anything else by Pillow's open, which reads only the header."""
    size = _jpeg_frame_size(data) if data[:3] == b"\xff\xd8\xff" else None
    if size is not None:
        if size[0] * size[1] > MAX_IMAGE_PIXELS:
            raise _too_many_pixels()
        return
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
        raise _too_many_pixels() from None
    except Exception as error:  # noqa: BLE001 -- Pillow's plugins fail in many ways on a damaged file
        raise ValueError(error_reason(error)) from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def check_fits_memory(image_size: int, needed: int, what: str) -> None:
    """Refuse at once an --image-size whose decoded images cannot fit in memory, not deep inside a resize."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): let the allocation decide
        return
    if needed > total:
        raise UserError(f"--image-size {image_size}: {what} would take {needed / 1e9:,.0f} GB decoded, more than "
                        f"this machine's {total / 1e9:,.0f} GB of memory; use a smaller --image-size")


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
