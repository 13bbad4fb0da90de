"""From a config to ready data: load both splits (through the cache), hold out a stratified
validation split from the training set, and fit the normalization on what is left.

The test split is never used to choose anything; only metrics are computed on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from imgcls.config import DataConfig, default_cache_dir, default_data_dir
from imgcls.data import cache
from imgcls.data.decode import ProgressCallback
from imgcls.data.readers import DecodedSplit, read_split, size_text, source_kind, source_paths
from imgcls.data.registry import SPECS, DatasetSpec
from imgcls.errors import UserError


@dataclass
class Normalization:
    """x = (pixel / 255 - mean) / std, with mean and std of shape (C, H, W) on the 0..1 scale."""

    mean: torch.Tensor
    std: torch.Tensor

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x = pixel * scale - shift, one multiply-add per pixel on the raw uint8 values."""
        return 1.0 / (255.0 * self.std), self.mean / self.std


@dataclass
class LabelledImages:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class PreparedData:
    dataset: str
    classes: list[str]
    shape: tuple[int, int, int]
    train: LabelledImages
    val: LabelledImages
    test: LabelledImages
    normalization: Normalization
    superclass_of: list[int] | None
    skipped: int  # unreadable images passed over, both splits
    from_cache: bool
    passed_over: int = 0  # files in the class folders that are not images (by extension), both splits


def resolve_data_dir(config: DataConfig) -> Path:
    return Path(config.data_dir).expanduser() if config.data_dir else default_data_dir()


def load_decoded(config: DataConfig, split: str,
                 progress: ProgressCallback | None = None) -> tuple[DecodedSplit, bool]:
    spec = SPECS[config.dataset]
    root = resolve_data_dir(config)
    identity = {"dataset": spec.name, "split": split, "image_size": config.image_size,
                "skip_bad_images": config.skip_bad_images, "kind": source_kind(spec, root),
                "source": cache.fingerprint(source_paths(spec, root, split))}

    def build() -> DecodedSplit:
        return read_split(spec, root, split, config.image_size, config.skip_bad_images, config.download, progress)

    if not identity["source"] and identity["kind"] != "torchvision":
        return build(), False  # nothing to fingerprint: let the reader say what is missing
    return cache.load_or_build(default_cache_dir(), identity, build)


def prepare(config: DataConfig, seed: int, progress: ProgressCallback | None = None) -> PreparedData:
    """progress, if given, is told (images decoded, images in all) while a split's image files are decoded."""
    if config.dataset == "features":  # arrays already: no decoding, no cache
        from imgcls.data.features import prepare_features

        return prepare_features(config, seed)
    if config.stream:
        from imgcls.data.stream import prepare_streamed

        return prepare_streamed(config, seed)
    spec = SPECS[config.dataset]
    train_full, train_cached = load_decoded(config, "train", progress)
    test, test_cached = load_decoded(config, "test", progress)
    _check_compatible(spec, train_full, test)
    labels = train_full.labels
    if config.limit is not None and config.limit < len(labels):
        keep = stratified_sample(labels, config.limit / len(labels), seed)
        train_full = DecodedSplit(train_full.images[keep], labels[keep], train_full.classes, train_full.skipped,
                                  train_full.passed_over)
    _check_enough(spec, train_full, config.limit)
    val_index = stratified_sample(train_full.labels, config.val_split, seed)
    train_mask = torch.ones(len(train_full.labels), dtype=torch.bool)
    train_mask[val_index] = False
    train_index = train_mask.nonzero().squeeze(1)
    train = LabelledImages(train_full.images[train_index], train_full.labels[train_index])
    val = LabelledImages(train_full.images[val_index], train_full.labels[val_index])
    return PreparedData(
        dataset=spec.name, classes=train_full.classes, shape=tuple(train.images.shape[1:]), train=train, val=val,
        test=LabelledImages(test.images, test.labels),
        normalization=fit_normalization(train.images, config.normalize), superclass_of=spec.superclass_of(),
        skipped=train_full.skipped + test.skipped, from_cache=train_cached and test_cached,
        passed_over=train_full.passed_over + test.passed_over)


def stratified_sample(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """A seeded sample of `fraction` of each class's indices (at least one of a class with two or more)."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in labels.unique():
        members = (labels == label).nonzero().squeeze(1)
        count = round(len(members) * fraction)
        count = min(max(count, 1 if len(members) >= 2 else 0), len(members) - 1 if len(members) >= 2 else 0)
        chosen.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(chosen).sort().values


def fit_normalization(images: torch.Tensor, kind: str) -> Normalization:
    """Per-pixel or per-channel standardization, fitted on the training images only."""
    shape = images.shape[1:]
    if kind == "none":
        return Normalization(torch.zeros(shape), torch.ones(shape))
    total = torch.zeros(shape, dtype=torch.float64)
    total_sq = torch.zeros(shape, dtype=torch.float64)
    # Sums of raw pixel values over 256 images stay below 2**24, so float32 adds them exactly (and fast):
    # the statistics do not depend on the order of the images.
    for chunk in images.split(256):
        pixels = chunk.float()
        total += pixels.sum(0)
        total_sq += (pixels * pixels).sum(0)
    total, total_sq = total / 255.0, total_sq / 255.0 ** 2
    count = len(images)
    if kind == "channel":
        total, total_sq = total.sum((1, 2), keepdim=True), total_sq.sum((1, 2), keepdim=True)
        count *= shape[1] * shape[2]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    # A constant pixel (MNIST's borders) carries no information: leave it unscaled rather than divide by 0.
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return Normalization(mean.expand(shape).float().contiguous(), std.expand(shape).float().contiguous())


def _check_compatible(spec: DatasetSpec, train: DecodedSplit, test: DecodedSplit) -> None:
    if train.classes != test.classes:
        only_train = sorted(set(train.classes) - set(test.classes))
        only_test = sorted(set(test.classes) - set(train.classes))
        raise UserError(f"{spec.name}: train and test classes differ (only in train: {only_train or '-'}; only in "
                        f"test: {only_test or '-'}); give both splits the same class folders")
    check_same_shape(spec.name, tuple(train.images.shape[1:]), tuple(test.images.shape[1:]))


def check_same_shape(name: str, train: tuple[int, ...], test: tuple[int, ...]) -> None:
    """Train and test images must have one (C, H, W); the message says what differs and what helps."""
    if train[0] != test[0]:
        kinds = {1: "grey (1 channel)", 3: "colour (3 channels)"}
        raise UserError(f"{name}: train images are {kinds.get(train[0], f'{train[0]} channels')} but test images "
                        f"are {kinds.get(test[0], f'{test[0]} channels')}; convert one split's images so that "
                        f"both are grey or both colour (--image-size changes only the size)")
    if train != test:
        raise UserError(f"{name}: train images are {size_text(train)} but test images are {size_text(test)}; "
                        f"pass --image-size N to resize both to NxN")


def _check_enough(spec: DatasetSpec, train: DecodedSplit, limit: int | None) -> None:
    if len(train.labels) < 2 * len(train.classes):
        fix = f"raise --limit to at least {2 * len(train.classes)}" if limit else "add images"
        raise UserError(f"{spec.name}: {len(train.labels)} training images for {len(train.classes)} classes are too "
                        f"few to hold out a validation split; {fix}")
