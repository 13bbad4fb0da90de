"""Minibatches straight from the uint8 images in memory: a seeded permutation per epoch, one gather, one
multiply-add to normalize; and make_batches, which batches any prepared split (in memory, or stream.py)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import torch

from imgcls.data.augment import Augmentation, read_augmentation
from imgcls.data.decode import usable_cores
from imgcls.data.normalize import PixelNormalizer
from imgcls.data.types import Batch, BatchSource, LabelledImages, Normalization, PreparedData
from imgcls.distributed import Shard

EVAL_BATCH = 4096  # images in one evaluation batch, at most ...
EVAL_BYTES = 1 << 28  # ... and at most 256 MB of float32 pixels (large images: fewer at a time)
GPU_MEMORY_SHARE = 0.6  # the most of the free GPU memory the images may take
MADE_AHEAD = 2  # training batches each thread makes before the step that takes them (CPU)
AHEAD_BYTES = 1 << 28  # at most 256 MB of float32 batches made ahead
T = TypeVar("T")


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


class Batches:
    """Training batches (shuffle=True) or evaluation batches (shuffle=False, this process's part only)."""

    def __init__(self, data: LabelledImages, normalization: Normalization, batch_size: int, device: torch.device,
                 seed: int = 0, shuffle: bool = True, shard: Shard = Shard(), augment: Augmentation | None = None):
        self.first_row = 0  # evaluation batches: the row of the split this process's part starts at
        if not shuffle:
            part = shard.part(len(data))
            data, self.first_row = LabelledImages(data.images[part], data.labels[part]), part.start
        self.device = device
        self.image_shape = tuple(data.images.shape[1:])  # the rows below are flattened; augmenting needs (C, H, W)
        self.images = place_images(data.images, device).flatten(1)
        self.labels = data.labels.to(device)
        self.normalize = PixelNormalizer(normalization, device)
        self.batch_size = max(1, min(batch_size, len(data)))
        self.seed, self.shuffle, self.shard = seed, shuffle, shard
        self.augment = augment if shuffle else None

    def __len__(self) -> int:
        """Updates per epoch: ceil(N / B); the last batch may be smaller."""
        return math.ceil(len(self.labels) / self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[Batch]:
        if not self.shuffle:
            return self._in_order(start_step)
        make, steps = self._shuffled(epoch), range(start_step, len(self))
        # Made ahead only on the CPU (CUDA queues its kernels itself), with a core the step leaves free, and
        # within AHEAD_BYTES (a large batch's step outlasts making it anyway). An augmented batch takes longer to
        # make than the step takes to use it: two threads keep up.
        makers = 2 if self.augment else 1
        held = (makers * MADE_AHEAD + 2) * self.batch_size * self.images.shape[1] * 4
        if self.device.type == "cpu" and torch.get_num_threads() < usable_cores() and held <= AHEAD_BYTES:
            return made_ahead(make, steps, makers, MADE_AHEAD)
        return map(make, steps)

    def _in_order(self, start_step: int) -> Iterator[Batch]:
        for step in range(start_step, len(self)):
            rows = slice(step * self.batch_size, (step + 1) * self.batch_size)
            numbers = torch.arange(rows.start, rows.start + len(self.labels[rows]), device=self.labels.device)
            yield Batch(self.normalize(self.images[rows]), self.labels[rows], self.labels[rows],
                        numbers + self.first_row)

    def _shuffled(self, epoch: int) -> Callable[[int], Batch]:
        """The batch of each step of epoch `epoch`, as a function of the step (any thread may call it)."""
        order = epoch_permutation(self.num_images, self.seed, epoch)
        # Copied to where the labels and images are once an epoch: a copy from pageable host memory each
        # step would make the host wait for the GPU at every step.
        label_order, image_order = order.to(self.labels.device), order.to(self.images.device)
        plan = self.augment.plan(self.num_images, self.seed, epoch, self.images.device) if self.augment else None

        def batch(step: int) -> Batch:
            rows = slice(step * self.batch_size, (step + 1) * self.batch_size)
            # index_select, not images[index]: the same rows, 10-25x faster for a uint8 gather on the CPU
            batch_labels = self.labels.index_select(0, label_order[rows])
            mine = self.shard.part(len(batch_labels))
            pixels = self.images.index_select(0, image_order[rows][mine])
            if plan is not None:
                pixels = plan.apply(pixels.view(-1, *self.image_shape), rows, mine).flatten(1)
            return Batch(self.normalize(pixels), batch_labels[mine], batch_labels, label_order[rows])

        return batch


def made_ahead(make: Callable[[int], T], steps: range, makers: int, depth: int) -> Iterator[T]:
    """make(step) for each step, in order, made up to makers * depth steps ahead on `makers` threads (torch's
    kernels let go of the GIL, so they run beside the step); an error is raised at its step, and the threads
    end when the caller stops taking."""
    with ThreadPoolExecutor(max(1, makers), thread_name_prefix="imgcls-batches") as pool:
        pending: deque[Future] = deque()
        try:
            for step in steps:
                pending.append(pool.submit(make, step))
                if len(pending) > makers * depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(cancel_futures=True)


def eval_batch_size(normalization: Normalization) -> int:
    features = normalization.mean.numel()
    return max(1, min(EVAL_BATCH, EVAL_BYTES // (4 * features)))


def make_batches(data: PreparedData, split: str, batch_size: int, device: torch.device, seed: int = 0,
                 shuffle: bool = True, shard: Shard = Shard(),
                 normalization: Normalization | None = None, augment: str | None = None) -> BatchSource:
    """Batches of data's `split` ("train", "val" or "test"), made the way prepare chose for this data (in memory
    unless it says otherwise), normalized with data's own normalization unless another is given (a checkpoint's).
    `augment`: the config's augmentation (augment.py), for shuffled batches; a UserError if it does not fit
    the images."""
    augmentation = read_augmentation(augment) if shuffle else None
    if augmentation is not None:
        augmentation.check_fits(data.shape)
    batches_of = data.batches_of or Batches
    return batches_of(getattr(data, split), normalization or data.normalization, batch_size, device, seed=seed,
                      shuffle=shuffle, shard=shard, augment=augmentation)


def make_eval_batches(data: PreparedData, split: str, device: torch.device, shard: Shard = Shard(),
                      normalization: Normalization | None = None) -> BatchSource:
    """Every image of data's `split` once, in order (this process's part under torchrun)."""
    normalization = normalization or data.normalization
    return make_batches(data, split, eval_batch_size(normalization), device, shuffle=False, shard=shard,
                        normalization=normalization)
