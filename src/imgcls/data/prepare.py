"""From a config to ready data: a features file, image files decoded batch by batch (--stream), or both splits
decoded into memory through the cache, chosen once here. The test split never chooses anything."""

from __future__ import annotations

from pathlib import Path

from imgcls.config import DataConfig, default_cache_dir
from imgcls.data import cache
from imgcls.data.decode import ProgressCallback
from imgcls.data.features import prepare_features
from imgcls.data.normalize import fit_normalization
from imgcls.data.readers import (
    check_same_classes,
    check_same_shape,
    read_split,
    resolve_data_dir,
    source_kind,
    source_paths,
)
from imgcls.data.registry import SPECS, DatasetSpec
from imgcls.data.split import check_labels, split_train_val
from imgcls.data.stream import prepare_streamed
from imgcls.data.types import DecodedSplit, LabelledImages, Normalization, PreparedData, SelectedImages


def prepare(config: DataConfig, seed: int, normalization: Normalization | None = None,
            progress: ProgressCallback | None = None) -> PreparedData:
    """`normalization`: a checkpoint's, for evaluating it (None: fitted on the training part, as training does).
    `progress`, if given, is told (images decoded, images in all) while a split's image files are decoded."""
    spec = SPECS[config.dataset]
    if spec.features_file:  # arrays already: no decoding, no cache
        return prepare_features(config, seed, normalization)
    if config.stream:
        return prepare_streamed(spec, config, seed, normalization)
    return _prepare_in_memory(spec, config, seed, normalization, progress)


def load_decoded(config: DataConfig, split: str,
                 progress: ProgressCallback | None = None) -> tuple[DecodedSplit, bool]:
    """A split decoded, through the cache; and whether it came from the cache."""
    return _load_decoded(config, split, progress)[:2]


def _load_decoded(config: DataConfig, split: str,
                  progress: ProgressCallback | None = None) -> tuple[DecodedSplit, bool, Path | None]:
    """load_decoded's, and the cache entry that holds the split (None when it is not cached)."""
    spec = SPECS[config.dataset]
    root = resolve_data_dir(config)
    identity = {"dataset": spec.name, "split": split, "image_size": config.image_size,
                "skip_bad_images": config.skip_bad_images, "kind": source_kind(spec, root),
                "source": cache.fingerprint(source_paths(spec, root, split))}

    def build() -> DecodedSplit:
        return read_split(spec, root, split, config.image_size, config.skip_bad_images, config.download, progress)

    if not identity["source"] and identity["kind"] != "torchvision":
        return build(), False, None  # nothing to fingerprint: let the reader say what is missing
    decoded, cached = cache.load_or_build(default_cache_dir(), identity, build)
    return decoded, cached, default_cache_dir() / cache.cache_key(identity)


def _prepare_in_memory(spec: DatasetSpec, config: DataConfig, seed: int,
                       normalization: Normalization | None, progress: ProgressCallback | None) -> PreparedData:
    """Both splits decoded through the cache; the validation rows and the normalization are kept in the training
    split's entry for these settings, so a warm run computes neither."""
    train_full, train_cached, entry = _load_decoded(config, "train", progress)
    test, test_cached = load_decoded(config, "test", progress)
    check_same_classes(spec.name, train_full.classes, test.classes)
    check_labels(spec.name, train_full.classes, {"train": train_full.labels, "test": test.labels},
                 resolve_data_dir(config))
    check_same_shape(spec.name, tuple(train_full.images.shape[1:]), tuple(test.images.shape[1:]))
    settings = {"val_split": config.val_split, "limit": config.limit, "seed": seed}
    rows = cache.load_or_derive(entry, settings, lambda: dict(zip(("train", "val"), split_train_val(
        train_full.labels, len(train_full.classes), config.val_split, config.limit, seed, name=spec.name))))
    # Copied out of the decoded split only when their pixels are used: eval of the test split never does
    train, val = (SelectedImages(train_full.images, rows[part], train_full.labels[rows[part]])
                  for part in ("train", "val"))
    if normalization is None:
        stats = cache.load_or_derive(entry, {**settings, "normalize": config.normalize},
                                     lambda: vars(fit_normalization(train.images, config.normalize)))
        normalization = Normalization(stats["mean"], stats["std"])
    return PreparedData(
        dataset=spec.name, classes=train_full.classes, shape=tuple(train_full.images.shape[1:]), train=train,
        val=val, test=LabelledImages(test.images, test.labels), normalization=normalization,
        superclass_of=spec.superclass_of(), skipped=train_full.skipped + test.skipped,
        from_cache=train_cached and test_cached, passed_over=train_full.passed_over + test.passed_over)
