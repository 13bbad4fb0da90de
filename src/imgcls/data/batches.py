"""Minibatches straight from the uint8 images in memory.

Each epoch draws a seeded permutation, and each step gathers its rows, converts them to
float and normalizes the whole batch with one multiply-add: no per-image Python, no PIL,
no DataLoader. On CUDA the uint8 images move to the GPU once when they fit, else they stay
in pinned host memory and each batch is copied over asynchronously.

Under torchrun every process draws the same permutation and takes its contiguous part of
each global batch, so the global batch is the one the user asked for; evaluation splits
the images into contiguous parts, each counted once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch

from imgcls.data.prepare import LabelledImages, Normalization
from imgcls.distributed import Shard

EVAL_BATCH = 4096  # images in one evaluation batch, at most ...
EVAL_BYTES = 1 << 28  # ... and at most 256 MB of float32 pixels (large images: fewer at a time)
GPU_MEMORY_SHARE = 0.6  # the most of the free GPU memory the images may take


class Batch(NamedTuple):
    pixels: torch.Tensor  # normalized float (b, C*H*W): this process's part of the batch
    labels: torch.Tensor  # (b,)
    batch_labels: torch.Tensor  # the labels of the whole global batch, for averaging the loss over it


def epoch_permutation(num_images: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch `epoch`; a pure function of (seed, epoch), so a resumed run redraws it exactly."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_images, generator=generator)


def place_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type != "cuda":
        return images
    free, _ = torch.cuda.mem_get_info(device)
    if images.numel() < GPU_MEMORY_SHARE * free:
        return images.to(device)
    return images.pin_memory()


class PixelNormalizer:
    """Whole batches of uint8 rows (b, C*H*W) to normalized float on the device: pixel * scale - shift,
    one multiply-add; the in-memory and the streaming batches share it."""

    def __init__(self, normalization: Normalization, device: torch.device):
        scale, shift = normalization.scale_and_shift()
        self.device = device
        self.scale = scale.flatten().to(device)
        self.negative_shift = -shift.flatten().to(device)

    @property
    def features(self) -> int:
        return self.scale.numel()

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        floats = pixels.to(self.device, non_blocking=True).float()
        if floats is pixels:  # float32 already: never write into the caller's tensor
            return torch.addcmul(self.negative_shift, floats, self.scale)
        return torch.addcmul(self.negative_shift, floats, self.scale, out=floats)


class Batches:
    """Training batches (shuffle=True) or evaluation batches (shuffle=False, this process's part only)."""

    def __init__(self, data: LabelledImages, normalization: Normalization, batch_size: int, device: torch.device,
                 seed: int = 0, shuffle: bool = True, shard: Shard = Shard()):
        if not shuffle:
            part = shard.part(len(data))
            data = LabelledImages(data.images[part], data.labels[part])
        self.device = device
        self.images = place_images(data.images, device).flatten(1)
        self.labels = data.labels.to(device)
        self.normalize = PixelNormalizer(normalization, device)
        self.batch_size = max(1, min(batch_size, len(data)))
        self.seed = seed
        self.shuffle = shuffle
        self.shard = shard

    def __len__(self) -> int:
        """Updates per epoch: ceil(N / B); the last batch may be smaller."""
        return math.ceil(len(self.labels) / self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[Batch]:
        if not self.shuffle:
            for step in range(start_step, len(self)):
                rows = slice(step * self.batch_size, (step + 1) * self.batch_size)
                yield Batch(self.normalize(self.images[rows]), self.labels[rows], self.labels[rows])
            return
        order = epoch_permutation(self.num_images, self.seed, epoch)
        # Copied to where the labels and images are once an epoch: a copy from pageable host memory each
        # step would make the host wait for the GPU at every step.
        label_order, image_order = order.to(self.labels.device), order.to(self.images.device)
        for step in range(start_step, len(self)):
            rows = slice(step * self.batch_size, (step + 1) * self.batch_size)
            # index_select, not images[index]: the same rows, 10-25x faster for a uint8 gather on the CPU
            batch_labels = self.labels.index_select(0, label_order[rows])
            if self.shard.world == 1:
                yield Batch(self.normalize(self.images.index_select(0, image_order[rows])), batch_labels, batch_labels)
                continue
            mine = self.shard.part(len(batch_labels))
            pixels = self.images.index_select(0, image_order[rows][mine])
            yield Batch(self.normalize(pixels), batch_labels[mine], batch_labels)


def eval_batch_size(normalization: Normalization) -> int:
    features = normalization.mean.numel()
    return max(1, min(EVAL_BATCH, EVAL_BYTES // (4 * features)))


def make_eval_batches(data, normalization: Normalization, device: torch.device, shard: Shard = Shard()):
    """Every image of `data` once, in order (this process's part under torchrun)."""
    return make_batches(data, normalization, eval_batch_size(normalization), device, shuffle=False, shard=shard)


def make_batches(data, normalization: Normalization, batch_size: int, device: torch.device, seed: int = 0,
                 shuffle: bool = True, shard: Shard = Shard()):
    """Batches from memory, or StreamingBatches for a split whose pixels stay in their files (--stream)."""
    from imgcls.data.stream import StreamedImages, StreamingBatches

    kind = StreamingBatches if isinstance(data, StreamedImages) else Batches
    return kind(data, normalization, batch_size, device, seed=seed, shuffle=shuffle, shard=shard)
