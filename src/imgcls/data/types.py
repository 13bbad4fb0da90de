"""The data package's plain types (a split at each stage, normalization, the batches interface); imports nothing
of imgcls, so any module can import it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple, Protocol

import torch


@dataclass
class Normalization:
    """x = (pixel / 255 - mean) / std, with mean and std of shape (C, H, W) on the 0..1 scale."""

    mean: torch.Tensor
    std: torch.Tensor

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x = pixel * scale - shift, one multiply-add per pixel on the raw uint8 values."""
        return 1.0 / (255.0 * self.std), self.mean / self.std


@dataclass
class ImageList:
    """Images still to decode: a name for messages, and how to get the encoded bytes."""

    names: list[str]
    read: Callable[[int], bytes]
    labels: list[int]
    classes: list[str]
    passed_over: int = 0  # files in the class folders that are not images (by extension)


@dataclass
class DecodedSplit:
    """One split as read from its source: every image decoded, before the validation split is held out."""

    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)
    classes: list[str]
    skipped: int = 0  # unreadable images passed over with --skip-bad-images
    passed_over: int = 0  # files in the class folders that are not images (by extension)


@dataclass
class LabelledImages:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class SelectedImages:
    """Rows `index` of a larger set of images (a decoded split, perhaps memory-mapped from the cache), copied out
    the first time their pixels are asked for: `imgcls eval` of the test split never asks for the training
    part's, so never copies them. Otherwise a LabelledImages."""

    source: torch.Tensor | None  # uint8 (M, C, H, W); None once the rows are copied out
    index: torch.Tensor  # int64 rows of source
    labels: torch.Tensor  # int64 (N,): the labels of those rows

    @cached_property
    def images(self) -> torch.Tensor:
        images = self.source[self.index]
        self.source = None  # a split decoded just now (not memory-mapped) is freed once its parts are copied out
        return images

    def __len__(self) -> int:
        return len(self.labels)


class Batch(NamedTuple):
    pixels: torch.Tensor  # normalized float (b, C*H*W): this process's part of the batch
    labels: torch.Tensor  # (b,)
    batch_labels: torch.Tensor  # the labels of the whole global batch, for averaging the loss over it
    rows: torch.Tensor | None = None  # the split's rows: the whole global batch's (training), this part's (evaluation)


class BatchSource(Protocol):
    """What training and evaluation ask of batches, wherever the pixels come from (memory or files): len() steps
    an epoch, num_images an epoch (this process's part, for evaluation), and epoch(epoch, start_step) its batches
    from that step on (a resumed run starts mid-epoch)."""

    device: torch.device
    batch_size: int
    num_images: int

    def __len__(self) -> int: ...

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[Batch]: ...


@dataclass
class PreparedData:
    dataset: str
    classes: list[str]
    shape: tuple[int, int, int]
    # Each split: labels, len() and what `batches_of` batches: LabelledImages, SelectedImages (train and val in
    # memory), or data.stream.StreamedImages (--stream)
    train: LabelledImages | SelectedImages
    val: LabelledImages | SelectedImages
    test: LabelledImages
    normalization: Normalization
    superclass_of: list[int] | None
    skipped: int  # unreadable images passed over, both splits
    from_cache: bool
    passed_over: int = 0  # files in the class folders that are not images (by extension), both splits
    # How this data's splits become batches, chosen once where it was prepared, called as (split, normalization,
    # batch_size, device, seed=, shuffle=, shard=, augment=): None for splits in memory (data.batches.Batches),
    # data.stream.StreamingBatches for pixels left in their files (--stream).
    batches_of: Callable[..., BatchSource] | None = None
