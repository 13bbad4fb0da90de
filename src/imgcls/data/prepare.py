"""From a config to ready data. Where the pixels are held is chosen here, once: a features file read into
memory (features.py), image files decoded batch by batch (--stream, stream.py), or both splits decoded
into memory through the cache (below). Every path holds out the validation split with split.py and fits
the normalization on what is left; the PreparedData says how its splits are batched.

The test split is never used to choose anything; only metrics are computed on it.
"""

from __future__ import annotations

from imgcls.config import DataConfig, default_cache_dir
from imgcls.data import cache
from imgcls.data.features import prepare_features
from imgcls.data.normalize import fit_normalization
from imgcls.data.readers import check_same_classes, check_same_shape, read_split, resolve_data_dir, source_kind, \
    source_paths
from imgcls.data.registry import SPECS, DatasetSpec
from imgcls.data.split import split_train_val
from imgcls.data.stream import prepare_streamed
# Normalization is imported from here by modules outside the data package too (export.py, scripts/bench.py,
# tests), as well as from data.types, its one definition.
from imgcls.data.types import DecodedSplit, LabelledImages, Normalization, PreparedData, SelectedImages


def prepare(config: DataConfig, seed: int, normalization: Normalization | None = None) -> PreparedData:
    """`normalization`: a checkpoint's, for evaluating it (None: fitted on the training part, as training does)."""
    spec = SPECS[config.dataset]
    if spec.features_file:  # arrays already: no decoding, no cache
        return prepare_features(config, seed, normalization)
    if config.stream:
        return prepare_streamed(spec, config, seed, normalization)
    return _prepare_in_memory(spec, config, seed, normalization)


def load_decoded(config: DataConfig, split: str) -> tuple[DecodedSplit, bool]:
    spec = SPECS[config.dataset]
    root = resolve_data_dir(config)
    identity = {"dataset": spec.name, "split": split, "image_size": config.image_size,
                "skip_bad_images": config.skip_bad_images, "kind": source_kind(spec, root),
                "source": cache.fingerprint(source_paths(spec, root, split))}

    def build() -> DecodedSplit:
        return read_split(spec, root, split, config.image_size, config.skip_bad_images, config.download)

    if not identity["source"] and identity["kind"] != "torchvision":
        return build(), False  # nothing to fingerprint: let the reader say what is missing
    return cache.load_or_build(default_cache_dir(), identity, build)


def _prepare_in_memory(spec: DatasetSpec, config: DataConfig, seed: int,
                       normalization: Normalization | None) -> PreparedData:
    train_full, train_cached = load_decoded(config, "train")
    test, test_cached = load_decoded(config, "test")
    check_same_classes(spec.name, train_full.classes, test.classes)
    check_same_shape(spec.name, tuple(train_full.images.shape[1:]), tuple(test.images.shape[1:]))
    train_index, val_index = split_train_val(train_full.labels, len(train_full.classes), config.val_split,
                                             config.limit, seed, name=spec.name)
    # Copied out of the decoded split only when their pixels are used: eval of the test split never does
    train = SelectedImages(train_full.images, train_index, train_full.labels[train_index])
    val = SelectedImages(train_full.images, val_index, train_full.labels[val_index])
    return PreparedData(
        dataset=spec.name, classes=train_full.classes, shape=tuple(train_full.images.shape[1:]), train=train,
        val=val, test=LabelledImages(test.images, test.labels),
        normalization=normalization or fit_normalization(train.images, config.normalize),
        superclass_of=spec.superclass_of(),
        skipped=train_full.skipped + test.skipped, from_cache=train_cached and test_cached,
        passed_over=train_full.passed_over + test.passed_over)
