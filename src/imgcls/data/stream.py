"""--stream, for datasets too large for memory: the in-memory path's plan of an epoch (same permutation, same
global batches), with each process's part of each batch decoded from its files by DataLoader workers."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from imgcls.config import DataConfig
from imgcls.data.augment import Augmentation
from imgcls.data.batches import epoch_permutation
from imgcls.data.decode import decode_many, forked_workers, size_text, unreadable_message
from imgcls.data.normalize import PixelNormalizer, fit_normalization
from imgcls.data.readers import check_same_classes, check_same_shape, decode_all, list_images, resolve_data_dir
from imgcls.data.registry import DatasetSpec
from imgcls.data.split import check_labels, split_train_val
from imgcls.data.types import Batch, ImageList, Normalization, PreparedData
from imgcls.distributed import Shard
from imgcls.errors import UserError

STATS_SAMPLE = 10_000  # training images decoded to fit the normalization
TEST_SAMPLE = 1_000  # test images decoded before training to check their shape


@dataclass
class StreamedImages:
    """A split's images as files still to decode: `index` picks entries of `listing`."""

    listing: ImageList
    index: torch.Tensor
    image_size: int | None
    channels: int
    skip_bad: bool = False
    shape: tuple[int, int, int] | None = None  # (C, H, W) every image must have, when known

    @property
    def labels(self) -> torch.Tensor:
        return torch.as_tensor(self.listing.labels, dtype=torch.int64)[self.index]

    def __len__(self) -> int:
        return len(self.index)

    def subset(self, rows: torch.Tensor | slice) -> StreamedImages:
        return dataclasses.replace(self, index=self.index[rows])

    def __getitem__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, str | None, list[int]]:
        """A DataLoader's item, a whole batch: the images at these rows as uint8 (b, C, H, W), their labels, and the
        rows decoded (--skip-bad-images passes over unreadable ones); an error message instead of raising, because
        an exception from a worker process reaches the user with its traceback."""
        positions = [int(self.index[row]) for row in rows]
        decoded = decode_many(self.listing.read, positions, self.image_size)
        images, labels, kept = [], [], []
        for row, position in zip(rows, positions):
            image, name = decoded[position], self.listing.names[position]
            if isinstance(image, str) and self.skip_bad:
                continue
            if isinstance(image, str):
                return None, None, unreadable_message(name, image), []
            wanted = self.shape or (images[0].shape if images else image.shape)
            if image.shape[-2:] != wanted[-2:]:
                return None, None, (f"image {name} is {size_text(image.shape)}, the others {size_text(wanted)}; pass "
                                    f"--image-size N to resize them all to NxN"), []
            images.append(image[:self.channels])
            labels.append(self.listing.labels[position])
            kept.append(row)
        # every image of the batch unreadable (--skip-bad-images): an empty batch
        empty = torch.empty((0, self.channels, *(self.shape or (0, 1, 1))[1:]), dtype=torch.uint8)
        return torch.stack(images) if images else empty, torch.tensor(labels, dtype=torch.int64), None, kept


class StreamingBatches:
    """The in-memory Batches' interface, fed by worker processes that decode from files."""

    def __init__(self, data: StreamedImages, normalization: Normalization, batch_size: int, device: torch.device,
                 seed: int = 0, shuffle: bool = True, shard: Shard = Shard(), workers: int | None = None,
                 augment: Augmentation | None = None):
        self.data = data if shuffle else data.subset(shard.part(len(data)))
        self.labels = self.data.labels.to(device)
        self.device = device
        self.normalize = PixelNormalizer(normalization, device)
        self.batch_size = max(1, min(batch_size, len(self.data)))
        self.seed, self.shuffle, self.shard = seed, shuffle, shard
        self.workers = min(8, os.cpu_count() or 1) if workers is None else workers
        self.augment = augment if shuffle else None

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.data)

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[Batch]:
        order = epoch_permutation(self.num_images, self.seed, epoch) if self.shuffle else torch.arange(self.num_images)
        plan = [order[step * self.batch_size:(step + 1) * self.batch_size] for step in range(start_step, len(self))]
        mine = [rows[self.shard.part(len(rows))].tolist() if self.shuffle else rows.tolist() for rows in plan]
        parts = forked_workers(self.data, self.workers, mine, self.device.type == "cuda")
        draws = self.augment.plan(self.num_images, self.seed, epoch, self.device) if self.augment else None
        for step, ((pixels, labels, error, kept), rows) in enumerate(zip(parts, plan), start_step):
            if error is not None:
                raise UserError(error)
            if draws is not None:  # a skipped unreadable image hands its draw to the next: the same draws every run
                start = step * self.batch_size + self.shard.part(len(rows)).start
                pixels = draws.apply(pixels.to(self.device, non_blocking=True), slice(start, start + len(pixels)))
            if len(kept) < len(rows) and (self.shard.world == 1 or not self.shuffle):
                rows = torch.as_tensor(kept, dtype=torch.int64)  # the batch is the images that could be read
            rows = rows.to(self.device)
            yield Batch(self.normalize(pixels.flatten(1)), labels.to(self.device), self.labels[rows], rows)


def prepare_streamed(spec: DatasetSpec, config: DataConfig, seed: int,
                     normalization: Normalization | None = None) -> PreparedData:
    """prepare()'s counterpart: the same splits and normalization, with the pixels left in their files. A sample
    of the training images is decoded to fit the normalization, and one of the test images to check their shape:
    with a `normalization` given (a checkpoint's), the training sample is not decoded."""
    root = resolve_data_dir(config)
    train_list, test_list = (list_images(spec, root, split, config.download) for split in ("train", "test"))
    check_same_classes(spec.name, train_list.classes, test_list.classes)
    labels = {"train": torch.as_tensor(train_list.labels), "test": torch.as_tensor(test_list.labels)}  # int64
    check_labels(spec.name, train_list.classes, labels, root)
    train_rows, val_rows = split_train_val(labels["train"], len(train_list.classes), config.val_split, config.limit,
                                           seed, name=spec.name)
    test_rows = torch.arange(len(test_list.labels))
    pixels = None if normalization else _decode_sample(train_list, train_rows, STATS_SAMPLE, config, seed)
    test_shape = tuple(_decode_sample(test_list, test_rows, TEST_SAMPLE, config, seed).shape[1:])
    shape = test_shape if pixels is None else tuple(pixels.shape[1:])
    check_same_shape(spec.name, shape, test_shape)

    def images(listing: ImageList, index: torch.Tensor) -> StreamedImages:
        return StreamedImages(listing, index, config.image_size, shape[0], config.skip_bad_images, shape)

    return PreparedData(
        dataset=spec.name, classes=train_list.classes, shape=shape,
        train=images(train_list, train_rows), val=images(train_list, val_rows),
        test=images(test_list, test_rows),
        normalization=normalization or fit_normalization(pixels, config.normalize),
        superclass_of=spec.superclass_of(), skipped=0, from_cache=False,
        passed_over=train_list.passed_over + test_list.passed_over, batches_of=StreamingBatches)


def _decode_sample(listing: ImageList, rows: torch.Tensor, count: int, config: DataConfig, seed: int) -> torch.Tensor:
    """A seeded sample of up to `count` of these rows, decoded as the in-memory path would (across the cores)."""
    generator = torch.Generator().manual_seed(seed)
    picked = rows[torch.randperm(len(rows), generator=generator)[:count]].tolist()
    sample = ImageList([listing.names[i] for i in picked], lambda k: listing.read(picked[k]),
                       [listing.labels[i] for i in picked], listing.classes)
    return decode_all(sample, config.image_size, config.skip_bad_images)[0]  # grey when grey
