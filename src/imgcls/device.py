"""Which device and number formats a run uses."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from imgcls.config import check_device_name
from imgcls.errors import UserError


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
    if precision == "bf16":
        return torch.bfloat16
    return None


def auto_batch_size(num_images: int, features: int, num_classes: int, device: torch.device) -> int:
    """The course's rule of thumb: the largest power of two that fits in memory, capped by the training set."""
    per_image = features * 4 * 2 + features + num_classes * 4 * 4  # float batch and its copy, uint8 rows, scores
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        import os

        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    fits = max(1, int(0.5 * free) // per_image)
    limit = min(fits, num_images)
    return 1 << (limit.bit_length() - 1)


SMALL_STEP = 1 << 20  # pixels in one batch below which a CPU step runs on one thread


@contextmanager
def threads_for_step(batch_pixels: int, device: torch.device):
    """A small minibatch step on the CPU runs on one thread: each of its operations is too short to
    share between cores, and when another program keeps a core busy, OpenMP's threads wait for each
    other at every operation (measured here: 2 ms a step on two threads against 0.8 ms on one)."""
    if device.type != "cpu" or batch_pixels >= SMALL_STEP or torch.get_num_threads() == 1:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
