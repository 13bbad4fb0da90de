"""Which device, number formats and CPU threads a run uses."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from imgcls.config import check_device_name
from imgcls.errors import UserError
from imgcls.memory import available_memory


def resolve_device(name: str) -> torch.device:
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} was asked for but this machine has no usable CUDA GPU; "
                            f"use --device cpu (or auto)")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: there are only {torch.cuda.device_count()} GPUs (cuda:0 .. "
                            f"cuda:{torch.cuda.device_count() - 1})")
    return torch.device(name)


def set_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Returns the autocast dtype for the forward pass, or None for plain float32."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision in ("tf32", "bf16")
    return torch.bfloat16 if precision == "bf16" else None


def auto_batch_size(num_images: int, features: int, num_classes: int, device: torch.device) -> int:
    """The course's rule of thumb: the largest power of two that fits in memory, capped by the training set."""
    per_image = features * 4 * 2 + features + num_classes * 4 * 4  # float batch and its copy, uint8 rows, scores
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory() or 2 ** 30
    fits = max(1, int(0.5 * free) // per_image)
    limit = min(fits, num_images)
    return 1 << (limit.bit_length() - 1)


@contextmanager
def cpu_threads(threads: int | None):
    """torch's CPU thread count for a run (`--threads`), restored after; None keeps torch's default, all cores.
    One count throughout a run: the count can change a matrix product's last bits, and resume is bit-exact."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# Multiply-adds in a step's product: below SMALL_PRODUCT one thread (all cores lose several times over when
# another program takes a core: docs/performance.md); beyond BIG_PRODUCT all cores; between, timed.
SMALL_PRODUCT = 1 << 26
BIG_PRODUCT = 1 << 30
CLEAR_WIN = 1.25  # all cores must be this much faster than one to be chosen: one thread keeps its pace under load


def step_threads(threads: int | None, batch_size: int, features: int, classes: int, device: torch.device,
                 world: int = 1) -> int | None:
    """The run's CPU thread count, set for torch and returned for config.yaml (a resumed run uses it again):
    `threads` if given, else by the step's size (SMALL_PRODUCT, BIG_PRODUCT), timed between."""
    if threads is not None or device.type != "cpu" or world > 1:
        return threads
    cores, product = torch.get_num_threads(), batch_size * features * classes
    if product < SMALL_PRODUCT or (product < BIG_PRODUCT and not _clearly_faster(cores, batch_size, features,
                                                                                  classes)):
        cores = 1
    torch.set_num_threads(cores)
    return cores


def _clearly_faster(cores: int, batch_size: int, features: int, classes: int) -> bool:
    """Whether `cores` threads do a step's two products (scores, then the weights' gradient) CLEAR_WIN times
    faster than one thread; the best of five tries each, taken in turn so that both meet the same load."""
    generator = torch.Generator().manual_seed(0)  # not torch's own: the run's seeded draws must not move
    weight, pixels = (torch.rand(rows, features, generator=generator) for rows in (classes, batch_size))
    best = {1: float("inf"), cores: float("inf")}
    for round_ in range(6):
        for count in best:
            torch.set_num_threads(count)
            start = time.perf_counter()
            torch.mm(torch.mm(weight, pixels.t()), pixels)
            if round_:  # the first round only warms up
                best[count] = min(best[count], time.perf_counter() - start)
    return best[cores] * CLEAR_WIN < best[1]
