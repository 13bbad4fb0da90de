"""Decode encoded images into uint8 (3, H, W) tensors: one image, or a whole list at the machine's pace.

One image: decode_image_bytes (torchvision.io for JPEG, WebP and GIF, Pillow for the rest).
Many: decode_images cuts the list into chunks of CHUNK consecutive images, which this process and
up to one worker process per other core take in turn from a shared counter. Each reads its chunk's
files one after another, decodes the chunk's JPEGs in one batched torchvision call, and writes every
image straight into its row of one array in shared memory: nothing decoded is pickled back. This
process starts decoding at once, so a short list never waits for a worker to start (about a second
of importing torch). Workers are started by forkserver (spawn where that is missing): a fork after
torch's OpenMP threads have run can hang. They ignore SIGINT and SIGTERM, as the streaming path's
workers do: Ctrl-C reaches this process, which stops them and stops cleanly.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import queue
import re
import signal
import struct
import sys
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch

from imgcls.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pillow's own decompression-bomb limit (twice its MAX_IMAGE_PIXELS), applied to every format: Pillow
# checks the files it decodes, and the header of every file torchvision decodes is checked the same way.
MAX_IMAGE_PIXELS = 178_956_970
PILLOW_FORMATS = ("PNG", "BMP", "TIFF", "PNM")
KNOWN_FORMATS = "JPEG, PNG, GIF, WebP, BMP, TIFF, PPM or PGM"
# JPEG frame headers (SOF0-SOF15 less DHT, JPG and DAC), which hold the image's height and width.
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
CHUNK = 512  # images per unit of work: about 30 ms of decoding, so the progress bar moves smoothly
MIN_PARALLEL = 4096  # fewer images than this decode here alone: a worker would take longer to start

# Imported by the forkserver before it starts any worker (they are imported lazily everywhere else).
DECODERS = ("torchvision.io", "torchvision.transforms.v2.functional", "PIL.Image")

ProgressCallback = Callable[[int, int], None]  # (images decoded so far, images in all)
ImageReader = Callable[[int], bytes]  # the i-th image's encoded bytes


@dataclass
class DecodedImages:
    images: torch.Tensor  # uint8 (len(kept), 3, H, W)
    kept: list[int]  # the indices of the images decoded; the others were unreadable (skip_bad)
    decoded_by: set[int] = field(default_factory=set)  # the ids of the processes that decoded images


@dataclass
class _Job:
    """What every process needs to decode any chunk; pickled once for each worker."""

    read: ImageReader
    out: torch.Tensor  # (N, 3, H, W), the rows to fill
    starts: list[int]  # chunk c is images starts[c] .. starts[c + 1] - 1
    image_size: int | None
    skip_bad: bool


@dataclass
class _ChunkReport:
    chunk: int
    bad: dict[int, str] = field(default_factory=dict)  # index -> reason; only the first one unless skip_bad
    mismatch: tuple[int, tuple] | None = None  # the first image whose size differs from the first's
    pid: int = 0


def decode_images(names: list[str], read: ImageReader, image_size: int | None, skip_bad: bool,
                  progress: ProgressCallback | None = None, workers: int | None = None,
                  help_workers: bool = True) -> DecodedImages:
    """Decode every image as RGB, resized to image_size x image_size if given. An unreadable image is a
    UserError naming the first one (its file name from `names`), or is skipped with skip_bad; images of
    different sizes are a UserError. workers: processes besides this one (default: one per other core, none
    for a short list or a reader that cannot be handed to another process); help_workers=False leaves all
    the chunks after the first image to them (tests use it to be sure the workers decoded)."""
    total = len(names)
    workers = worker_count(total, read) if workers is None else workers
    if image_size is not None:  # each process resizes one image in float32 at a time
        check_fits_memory(image_size, (total + 4 * (workers + 1)) * 3 * image_size ** 2, f"{total} images")
    report = progress or (lambda done, count: None)
    report(0, total)
    first, image, bad = _first_readable(names, read, image_size, skip_bad)
    out = torch.empty((total, *image.shape), dtype=torch.uint8)
    out[first] = image
    workers = workers if _fits_shared_memory(out.numel()) else 0
    starts = list(range(first + 1, total, CHUNK)) + [total]
    job = _Job(read, out.share_memory_() if workers else out, starts, image_size, skip_bad)
    reports = _decode_chunks(job, workers, help_workers, lambda done: report(first + 1 + done, total))
    for chunk in reports:
        bad.update(chunk.bad)
    if bad and not skip_bad:
        index = min(bad)
        raise UserError(unreadable_message(names[index], bad[index]))
    mismatches = [chunk.mismatch for chunk in reports if chunk.mismatch is not None]
    if mismatches:
        index, shape = min(mismatches)
        raise UserError(f"images differ in size ({names[first]} is {size_text(image.shape)}, {names[index]} is "
                        f"{size_text(shape)}); pass --image-size N to resize them all to NxN")
    kept = [i for i in range(total) if i not in bad]
    decoded_by = {os.getpid()} | {chunk.pid for chunk in reports}  # this process decoded the first image
    return DecodedImages(out[kept] if bad else out, kept, decoded_by)


def worker_count(total: int, read: ImageReader) -> int:
    """Worker processes for a list of `total` images: one per core besides this process's, when the list is
    long enough to repay starting them, the reader can be pickled (a closure cannot) and the main module can
    be imported again by a worker."""
    cores = usable_cores()
    if cores < 2 or total < MIN_PARALLEL or not main_module_can_be_imported_again():
        return 0
    try:
        pickle.dumps(read)
    except (pickle.PicklingError, TypeError, AttributeError):
        return 0
    return min(cores - 1, total // CHUNK)


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which a container or taskset can narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main_module_can_be_imported_again() -> bool:
    """multiprocessing imports the main module again in each worker. That is safe for `python -m ...` (imgcls's
    own `__main__` only runs a command as the main module) and for the installed `imgcls` command, and nothing
    is imported in an interactive session; but a user's script would run its top-level code again in every
    worker (or could not be found, read from stdin): such a script decodes in its own process."""
    main = sys.modules.get("__main__")
    if getattr(main, "__spec__", None) is not None:
        return True
    path = getattr(main, "__file__", None)
    return path is None or os.path.basename(path) == "imgcls"


def _fits_shared_memory(size: int) -> bool:
    """Whether /dev/shm has room for the array: a container's is often 64 MB, and a shared array larger than
    its room would kill the process (SIGBUS) when written, not fail at allocation."""
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


def _decode_chunks(job: _Job, workers: int, help_workers: bool,
                   progress: Callable[[int], None]) -> list[_ChunkReport]:
    """Every chunk's report, decoded by this process and `workers` worker processes taking chunks in turn.
    After an unreadable image (without skip_bad) no chunk is started: the reports then cover every chunk
    before it, which is all the first unreadable image's message needs."""
    context = _context(job.read) if workers else None
    counter = _Counter(context or multiprocessing.get_context(), len(job.starts) - 1)
    results = context.Queue() if context else None
    processes = _start_workers(context, job, counter, results, workers) if workers else []
    done: dict[int, _ChunkReport] = {}

    def record(report: _ChunkReport) -> None:
        done[report.chunk] = report
        if report.bad and not job.skip_bad:
            counter.stop()
        progress(sum(job.starts[c + 1] - job.starts[c] for c in done))

    try:
        while True:
            chunk = counter.claim() if help_workers or not processes else None
            if chunk is not None:
                record(_decode_chunk(job, chunk))
            elif len(done) >= counter.outstanding():
                break
            else:
                try:
                    record(results.get(timeout=0.1))
                except queue.Empty:
                    if not any(process.is_alive() for process in processes) and results.empty():
                        break
        needed = counter.outstanding()
    finally:
        counter.stop()
        _end(processes)
    for chunk in range(needed):
        if chunk not in done:  # left by a worker that died: decode it here
            record(_decode_chunk(job, chunk))
    return [done[chunk] for chunk in sorted(done)]


class _Counter:
    """Which chunk is next, shared by all the processes: [next chunk, chunks that may be claimed]."""

    def __init__(self, context, count: int):
        self.count = count
        self.values = context.Array("q", [0, count])

    def claim(self) -> int | None:
        with self.values.get_lock():
            chunk, limit = self.values[0], self.values[1]
            if chunk >= limit:
                return None
            self.values[0] = chunk + 1
        return chunk

    def stop(self) -> None:
        """No chunk is handed out any more."""
        with self.values.get_lock():
            self.values[1] = min(self.values[1], self.values[0])

    def outstanding(self) -> int:
        """How many chunks (from the first) must be decoded: all, unless stopped, then those claimed before."""
        with self.values.get_lock():
            return self.values[1]


def _end(processes: list) -> None:
    """Workers still running are ended: all they decoded has been reported, or is not wanted. SIGKILL, as they
    ignore (and block) SIGTERM, and one stuck on a read must not hold up a Ctrl-C."""
    for process in processes:
        if process.is_alive():
            process.kill()
        process.join()


def _context(read: ImageReader):
    """forkserver, whose server has imported this module, the reader's and the main one once, so each worker
    starts in a few milliseconds; spawn where there is no forkserver."""
    import torch.multiprocessing as torch_multiprocessing  # registers torch's shared-memory pickling

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return torch_multiprocessing.get_context("spawn")
    context = torch_multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__, type(read).__module__, *DECODERS])
    return context


def _start_workers(context, job: _Job, counter: _Counter, results, workers: int) -> list:
    """The workers, started with SIGINT and SIGTERM blocked: the forkserver and each worker inherit the mask, so a
    Ctrl-C to the whole process group while the server imports torch (seconds) or before a worker ignores the
    signals reaches only this process. Here it is held until every worker started is known (another thread may
    take the signal: a KeyboardInterrupt half-way through a start would leave a worker no one ends), then the
    workers are ended and it goes on as the KeyboardInterrupt it was."""
    processes, held = [], []
    previous = _hold_sigint(held)
    try:
        with stop_signals_blocked():
            for _ in range(workers):
                process = context.Process(target=_work, args=(job, counter, results), daemon=True)
                try:
                    process.start()
                except OSError:  # no more processes allowed: the ones started (and this one) do the work
                    break
                processes.append(process)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if held and previous is signal.default_int_handler:
        _end(processes)
        raise KeyboardInterrupt
    return processes


def _hold_sigint(held: list):
    """Record SIGINT in `held` instead of acting on it; the handler it replaces (None off the main thread, where
    handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))


@contextmanager
def stop_signals_blocked():
    """SIGINT and SIGTERM held back from this thread while it starts worker processes: a child inherits the
    mask, so a signal to the whole process group in the moment between a worker's fork and its
    ignore_stop_signals() stays pending there (and is dropped once ignored) instead of killing it. Here the
    signal is delivered when the block ends."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A worker process's start (a decoding worker's, or a --stream DataLoader worker's): SIGINT and SIGTERM are
    the main process's to act on; it stops the workers when it has saved what it must."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _work(job: _Job, counter: _Counter, results) -> None:
    """A worker's life: take chunks until there are none left."""
    ignore_stop_signals()
    torch.set_num_threads(1)  # one process per core already
    while (chunk := counter.claim()) is not None:
        results.put(_decode_chunk(job, chunk))


def _decode_chunk(job: _Job, chunk: int) -> _ChunkReport:
    """Read the chunk's files in order, decode them, and write each image into its row of job.out."""
    report = _ChunkReport(chunk, pid=os.getpid())
    indices = range(job.starts[chunk], job.starts[chunk + 1])
    encoded = {}
    for index in indices:
        try:
            encoded[index] = job.read(index)
        except OSError as error:
            report.bad[index] = error_reason(error)
    images = _decode_jpegs(encoded, job.image_size)
    for index in indices:
        if index in report.bad:
            if not job.skip_bad:
                break
            continue
        try:
            image = images[index] if index in images else decode_image_bytes(encoded[index], job.image_size)
        except (RuntimeError, ValueError, OSError) as error:
            report.bad[index] = error_reason(error)
            if not job.skip_bad:
                break
            continue
        if image.shape != job.out.shape[1:]:
            report.mismatch = report.mismatch or (index, tuple(image.shape))
            continue
        job.out[index] = image
    if not job.skip_bad and report.bad:
        first = min(report.bad)
        report.bad = {first: report.bad[first]}
    return report


def _decode_jpegs(encoded: dict[int, bytes], image_size: int | None) -> dict[int, torch.Tensor]:
    """The chunk's JPEGs, decoded in one batched call (about a quarter faster than one call each) to exactly
    what decode_image_bytes gives. If any of them fails, none is returned: each is then decoded on its own,
    which names the failing one."""
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
    """Refuse an image with too many pixels from its header alone. A JPEG's frame headers are read here (a
    tenth of the time Pillow takes to open it); anything else, or a JPEG whose headers do not parse, is opened
    by Pillow, which reads only the header."""
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
    """(width, height) from the JPEG's first frame header (libjpeg refuses a file with a second one), walking
    its marker segments; None where they do not parse before the first scan (Pillow then decides)."""
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
    """A short, clean reason for a message: an OSError's own words without the file name (the message names the
    file), else the first line of the text, without the C++ source locations of torch's and torchvision's
    errors ("decode_jpeg, /__w/vision/.../decode_jpeg.cpp:171, ...", "... at "/__w/pytorch/...cpp":123")."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = (str(error).strip() or type(error).__name__).splitlines()[0]
    if re.match(r"cannot identify image file <", text):  # Pillow names its buffer, not the file
        return "not an image imgcls can read: damaged, or in a format none of its decoders knows"
    if re.search(r"\(\) failed|failed with error code", text):  # a C decoder's own words (DGifOpenFileName, WebP)
        return f"damaged or not a whole image file (the decoder says: {text})"
    text = re.sub(r"^\w+, \S+\.(?:cpp|cu|h):\d+, ", "", text)
    return re.sub(r"\s*(?:at )?\"?\S+\.(?:cpp|cu|h)\"?:\d+,?", "", text).strip() or type(error).__name__
