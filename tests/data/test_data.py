"""Data: the stratified split, normalization, reading an image folder as a named dataset, the decoded
cache (reuse, invalidation, damaged entries) and minibatch order."""

import errno
import hashlib
import math
import os
import shutil
import stat
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import decode_image, ImageReadMode

from conftest import TINY_TEST_PER_CLASS, TINY_TRAIN_PER_CLASS, plain, start_python, write_image_folder
from imgcls.config import DataConfig
from imgcls.data.batches import Batches, epoch_permutation, made_ahead
from imgcls.data.normalize import fit_normalization
from imgcls.data.prepare import load_decoded, prepare
from imgcls.data.registry import CIFAR10_CLASSES
from imgcls.data.split import split_train_val, stratified_sample
from imgcls.data.types import LabelledImages, Normalization
from imgcls.errors import UserError


def image_hashes(images):
    return Counter(hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest() for image in images)


# --- stratified split ---------------------------------------------------------------------------

LABELS = torch.tensor([0] * 100 + [1] * 50 + [2] * 30 + [3] * 20)[torch.randperm(200, generator=torch.Generator()
                                                                                .manual_seed(9))]


def test_stratified_sample_keeps_class_proportions():
    chosen = stratified_sample(LABELS, 0.1, seed=0)
    counts = torch.bincount(LABELS[chosen], minlength=4).tolist()
    assert counts == [10, 5, 3, 2]
    assert len(set(chosen.tolist())) == len(chosen)  # no index twice
    assert chosen.tolist() == sorted(chosen.tolist())


def test_stratified_sample_is_seeded():
    a = stratified_sample(LABELS, 0.2, seed=1)
    b = stratified_sample(LABELS, 0.2, seed=1)
    c = stratified_sample(LABELS, 0.2, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(torch.bincount(LABELS[a]), torch.bincount(LABELS[c]))  # other members, same proportions


def test_stratified_sample_keeps_one_of_a_small_class_and_never_all():
    labels = torch.tensor([0] * 40 + [1] * 2 + [2] * 1)
    counts = torch.bincount(labels[stratified_sample(labels, 0.1, seed=0)], minlength=3).tolist()
    assert counts == [4, 1, 0]
    # even a large fraction leaves at least one image of each class behind
    counts = torch.bincount(labels[stratified_sample(labels, 0.99, seed=0)], minlength=3).tolist()
    assert counts == [39, 1, 0]


def test_split_train_val_holds_out_part_of_the_limited_rows_disjointly():
    labels = torch.arange(100) % 5
    train, val = split_train_val(labels, 5, 0.2, None, seed=0, name="x")
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(100))
    assert torch.equal(train, train.sort().values) and torch.equal(val, val.sort().values)
    assert torch.bincount(labels[val], minlength=5).tolist() == [4] * 5
    train, val = split_train_val(labels, 5, 0.2, 50, seed=0, name="x")
    kept = torch.cat([train, val])
    assert len(kept) == 50 and len(set(kept.tolist())) == 50
    assert torch.bincount(labels[kept], minlength=5).tolist() == [10] * 5
    assert torch.bincount(labels[val], minlength=5).tolist() == [2] * 5


def test_limit_keeps_at_most_n_and_refuses_exactly_what_is_too_few():
    """--limit N uses at most N training images (here exactly N, stratified) for every N it accepts, and every N
    it refuses is below the 2 a class it names as the least."""
    from imgcls.errors import UserError

    labels = torch.cat([torch.zeros(20), torch.ones(20), torch.full((7,), 2)]).long()
    for limit in range(6, 47):
        train, val = split_train_val(labels, 3, 0.2, limit, seed=0, name="x")
        kept = torch.cat([train, val])
        assert len(kept) == limit and len(set(kept.tolist())) == limit
        assert torch.bincount(labels[kept], minlength=3).min() >= 2
    for limit in (1, 3, 5):
        with pytest.raises(UserError, match=f"x: {limit} training images for 3 classes are too few .* at least 6$"):
            split_train_val(labels, 3, 0.2, limit, seed=0, name="x")


@pytest.mark.parametrize("stream", [False, True], ids=["memory", "stream"])
def test_too_few_training_images_for_a_validation_split_on_either_path(tmp_path, fresh_cache, stream):
    """The one split function's check, reached through prepare() whether the pixels go to memory or stay in files."""
    few = write_image_folder(tmp_path / "few", {"train": {"a": [(8, 8)] * 2, "b": [(8, 8)]},
                                                "test": {"a": [(8, 8)], "b": [(8, 8)]}})
    with pytest.raises(UserError, match=r"^imagefolder: 3 training images for 2 classes are too few to hold out a "
                                        r"validation split; add images$"):
        prepare(small_config(few, stream=stream), seed=0)
    enough = write_image_folder(tmp_path / "enough", SMALL)
    with pytest.raises(UserError, match=r"^imagefolder: 2 training images for 2 classes are too few .*; raise --limit "
                                        r"to at least 4$"):
        prepare(small_config(enough, stream=stream, limit=2), seed=0)
    data = prepare(small_config(enough, stream=stream, limit=4), seed=0)
    assert (len(data.train), len(data.val)) == (2, 2)


def test_prepare_splits_train_into_disjoint_stratified_train_and_val(tiny_cifar_session):
    config = DataConfig(dataset="cifar10", data_dir=str(tiny_cifar_session), val_split=0.1)
    data = prepare(config, seed=0)
    full, _ = load_decoded(config, "train")
    assert len(data.train) + len(data.val) == 10 * TINY_TRAIN_PER_CLASS
    assert torch.bincount(data.val.labels, minlength=10).tolist() == [TINY_TRAIN_PER_CLASS // 10] * 10
    assert torch.bincount(data.train.labels, minlength=10).tolist() == [TINY_TRAIN_PER_CLASS * 9 // 10] * 10
    # every training image lands in exactly one of train and val (JPEGs of distinct photos are distinct)
    assert len(image_hashes(full.images)) == len(full.images)
    assert image_hashes(data.train.images) + image_hashes(data.val.images) == image_hashes(full.images)
    assert not set(image_hashes(data.train.images)) & set(image_hashes(data.val.images))
    assert len(data.test) == 10 * TINY_TEST_PER_CLASS
    # the same seed gives the same validation images, another seed other ones
    again = prepare(config, seed=0)
    other = prepare(config, seed=1)
    assert torch.equal(again.val.images, data.val.images)
    assert image_hashes(other.val.images) != image_hashes(data.val.images)


def test_limit_takes_a_stratified_subset(tiny_cifar_session):
    config = DataConfig(dataset="cifar10", data_dir=str(tiny_cifar_session), limit=100, val_split=0.2)
    data = prepare(config, seed=0)
    assert len(data.train) + len(data.val) == 100
    assert torch.bincount(data.val.labels, minlength=10).tolist() == [2] * 10
    assert len(data.test) == 10 * TINY_TEST_PER_CLASS  # the limit never touches the test split


# --- normalization ------------------------------------------------------------------------------

def normalized(images, normalization):
    """The pixels exactly as training sees them, through Batches."""
    data = LabelledImages(images, torch.zeros(len(images), dtype=torch.int64))
    batches = Batches(data, normalization, len(images), torch.device("cpu"), shuffle=False)
    (pixels, *_), = list(batches.epoch())
    return pixels.double().reshape(images.shape)


def test_per_pixel_normalization_standardizes_each_pixel():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 3, 4, 5), dtype=torch.uint8, generator=generator)
    images[:, 0] //= 4  # channels of different ranges
    norm = fit_normalization(images, "pixel")
    assert norm.mean.shape == norm.std.shape == (3, 4, 5)
    x = normalized(images, norm)
    torch.testing.assert_close(x.mean(0), torch.zeros(3, 4, 5, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(3, 4, 5, dtype=torch.float64), atol=1e-4, rtol=0)
    # and the statistics are those of the raw 0..1 pixels
    raw = images.double() / 255
    torch.testing.assert_close(norm.mean.double(), raw.mean(0), atol=1e-6, rtol=0)


def test_per_channel_normalization_has_one_value_per_channel():
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (200, 3, 6, 6), dtype=torch.uint8, generator=generator)
    images[:, 2] = images[:, 2] // 2 + 100
    norm = fit_normalization(images, "channel")
    assert norm.mean.shape == (3, 6, 6)
    for statistic in (norm.mean, norm.std):
        assert torch.equal(statistic, statistic[:, :1, :1].expand(3, 6, 6))  # constant over height and width
    assert not torch.isclose(norm.mean[0, 0, 0], norm.mean[2, 0, 0])
    x = normalized(images, norm)
    per_channel = x.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_channel.std(1, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-4,
                               rtol=0)


def test_constant_pixels_are_not_divided_by_zero():
    images = torch.randint(0, 256, (50, 1, 3, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    images[:, 0, 0, 0] = 0  # MNIST's border
    norm = fit_normalization(images, "pixel")
    assert norm.std[0, 0, 0] == 1.0
    assert torch.isfinite(normalized(images, norm)).all()


def test_no_normalization_is_pixels_over_255():
    images = torch.tensor([[[[0, 51], [255, 102]]]], dtype=torch.uint8)
    x = normalized(images, fit_normalization(images, "none"))
    torch.testing.assert_close(x, torch.tensor([[[[0.0, 0.2], [1.0, 0.4]]]], dtype=torch.float64))


def test_prepare_fits_normalization_on_the_training_part_only(tiny_cifar_session):
    data = prepare(DataConfig(dataset="cifar10", data_dir=str(tiny_cifar_session)), seed=0)
    expected = data.train.images.double().mean(0) / 255
    torch.testing.assert_close(data.normalization.mean.double(), expected, atol=1e-6, rtol=0)
    x = normalized(data.train.images, data.normalization)
    assert x.mean(0).abs().max() < 1e-4
    assert (x.std(0, unbiased=False) - 1).abs().max() < 1e-3


# --- reading an image-folder copy of a named dataset --------------------------------------------

def test_image_folder_copy_reads_as_cifar10(tiny_cifar_session):
    config = DataConfig(dataset="cifar10", data_dir=str(tiny_cifar_session))
    split, _ = load_decoded(config, "train")
    assert split.classes == list(CIFAR10_CLASSES)
    assert split.images.dtype == torch.uint8 and tuple(split.images.shape) == (10 * TINY_TRAIN_PER_CLASS, 3, 32, 32)
    assert torch.bincount(split.labels).tolist() == [TINY_TRAIN_PER_CLASS] * 10
    # the first ship image decodes to the row labelled 'ship'
    ship = sorted((tiny_cifar_session / "train" / "ship").glob("*.jpg"))[0]
    pixels = decode_image(str(ship), mode=ImageReadMode.RGB)
    rows = [i for i in range(len(split.images)) if torch.equal(split.images[i], pixels)]
    assert len(rows) == 1 and split.labels[rows[0]] == CIFAR10_CLASSES.index("ship")


def test_folder_class_order_follows_the_registry_not_the_folder_names(tiny_cifar, fresh_cache):
    """Folders named 'Truck' and 'Bird' sort first on disk; their images must still get CIFAR-10's labels."""
    for split in ("train", "test"):
        (tiny_cifar / split / "truck").rename(tiny_cifar / split / "Truck")
        (tiny_cifar / split / "bird").rename(tiny_cifar / split / "Bird")
    split, _ = load_decoded(DataConfig(dataset="cifar10", data_dir=str(tiny_cifar)), "train")
    assert split.classes == list(CIFAR10_CLASSES)
    for folder, name in (("Truck", "truck"), ("Bird", "bird"), ("airplane", "airplane")):
        first = sorted((tiny_cifar / "train" / folder).glob("*.jpg"))[0]
        pixels = decode_image(str(first), mode=ImageReadMode.RGB)
        rows = [i for i in range(len(split.images)) if torch.equal(split.images[i], pixels)]
        assert [int(split.labels[i]) for i in rows] == [CIFAR10_CLASSES.index(name)], folder


# --- the decoded cache --------------------------------------------------------------------------

def cache_entries(cache):
    return sorted(p for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_second_load_comes_from_the_cache(tiny_cifar_session, fresh_cache):
    config = DataConfig(dataset="cifar10", data_dir=str(tiny_cifar_session))
    first, first_cached = load_decoded(config, "test")
    second, second_cached = load_decoded(config, "test")
    assert (first_cached, second_cached) == (False, True)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.classes == first.classes
    assert len(cache_entries(fresh_cache)) == 1
    assert not [p for p in fresh_cache.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_the_cache_key_includes_split_and_image_size(tiny_cifar_session, fresh_cache):
    config = DataConfig(dataset="cifar10", data_dir=str(tiny_cifar_session))
    load_decoded(config, "test")
    resized, cached = load_decoded(DataConfig(dataset="cifar10", data_dir=str(tiny_cifar_session), image_size=16),
                                   "test")
    assert not cached and tuple(resized.images.shape[1:]) == (3, 16, 16)
    _, cached = load_decoded(config, "train")
    assert not cached
    assert len(cache_entries(fresh_cache)) == 3


def test_a_changed_source_file_is_decoded_again(tiny_cifar, fresh_cache):
    config = DataConfig(dataset="cifar10", data_dir=str(tiny_cifar))
    before, _ = load_decoded(config, "test")
    ships = sorted((tiny_cifar / "test" / "ship").glob("*.jpg"))
    cat = sorted((tiny_cifar / "test" / "cat").glob("*.jpg"))[0]
    ships[0].write_bytes(cat.read_bytes())
    stat = ships[0].stat()
    os.utime(ships[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    after, cached = load_decoded(config, "test")
    assert not cached
    cat_pixels = decode_image(str(cat), mode=ImageReadMode.RGB)
    ship_label = CIFAR10_CLASSES.index("ship")
    matches = [int(after.labels[i]) for i in range(len(after.images)) if torch.equal(after.images[i], cat_pixels)]
    assert sorted(matches) == sorted([CIFAR10_CLASSES.index("cat"), ship_label])  # the new bytes, under 'ship'
    assert not torch.equal(before.images, after.images)
    _, cached = load_decoded(config, "test")
    assert cached


def test_a_touched_source_file_is_decoded_again(tiny_cifar, fresh_cache):
    config = DataConfig(dataset="cifar10", data_dir=str(tiny_cifar))
    load_decoded(config, "test")
    some = sorted((tiny_cifar / "test" / "dog").glob("*.jpg"))[3]
    stat = some.stat()
    os.utime(some, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    _, cached = load_decoded(config, "test")
    assert not cached


def test_an_added_image_is_decoded_again(tiny_cifar, fresh_cache):
    config = DataConfig(dataset="cifar10", data_dir=str(tiny_cifar))
    before, _ = load_decoded(config, "test")
    source = sorted((tiny_cifar / "test" / "frog").glob("*.jpg"))[0]
    (tiny_cifar / "test" / "frog" / "extra.jpg").write_bytes(source.read_bytes())
    after, cached = load_decoded(config, "test")
    assert not cached and len(after.images) == len(before.images) + 1


@pytest.mark.parametrize("damage", ["truncate-images", "truncate-labels", "garbage-meta", "delete-meta"])
def test_a_damaged_cache_entry_is_never_used(tiny_cifar_session, fresh_cache, damage):
    config = DataConfig(dataset="cifar10", data_dir=str(tiny_cifar_session))
    fresh, _ = load_decoded(config, "test")
    entry, = cache_entries(fresh_cache)
    if damage.startswith("truncate"):
        target = entry / ("images.npy" if damage == "truncate-images" else "labels.npy")
        size = target.stat().st_size
        with open(target, "r+b") as f:
            f.truncate(size // 2)
    elif damage == "garbage-meta":
        (entry / "meta.json").write_text('{"shape": [1')
    else:
        (entry / "meta.json").unlink()
    again, cached = load_decoded(config, "test")
    assert not cached
    assert torch.equal(again.images, fresh.images) and torch.equal(again.labels, fresh.labels)
    # the entry was rebuilt whole: the next load uses it
    third, cached = load_decoded(config, "test")
    assert cached and torch.equal(third.images, fresh.images)
    assert np.load(entry / "images.npy", mmap_mode="r").shape == tuple(fresh.images.shape)


def test_an_entry_whose_metadata_lacks_keys_is_rebuilt(tiny_cifar_session, fresh_cache):
    config = DataConfig(dataset="cifar10", data_dir=str(tiny_cifar_session))
    fresh, _ = load_decoded(config, "test")
    entry, = cache_entries(fresh_cache)
    (entry / "meta.json").write_text("{}")
    again, cached = load_decoded(config, "test")
    assert not cached and torch.equal(again.images, fresh.images)


def test_an_entry_whose_shape_disagrees_with_its_metadata_is_rebuilt(tiny_cifar_session, fresh_cache):
    config = DataConfig(dataset="cifar10", data_dir=str(tiny_cifar_session))
    fresh, _ = load_decoded(config, "test")
    entry, = cache_entries(fresh_cache)
    np.save(entry / "images.npy", fresh.images.numpy()[:-1])  # a whole file, one image short
    again, cached = load_decoded(config, "test")
    assert not cached and torch.equal(again.images, fresh.images)


def test_mnist_through_the_cache(mnist_root, fresh_cache):
    config = DataConfig(dataset="mnist", data_dir=str(mnist_root))
    test, cached = load_decoded(config, "test")
    assert not cached
    assert tuple(test.images.shape) == (10000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert test.classes == [str(i) for i in range(10)]
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    again, cached = load_decoded(config, "test")
    assert cached and torch.equal(again.images, test.images)


SMALL = {"train": {"ant": [(8, 8)] * 4, "bee": [(8, 8)] * 4}, "test": {"ant": [(8, 8)] * 2, "bee": [(8, 8)] * 2}}


def small_config(root, **extra) -> DataConfig:
    return DataConfig(dataset="imagefolder", data_dir=str(root), **extra)


def write_bmp_folder(root, seed=0):
    """BMP files (uncompressed: every 8x8 image has the same file size), two classes."""
    from PIL import Image

    generator = np.random.default_rng(seed)
    for split, count in (("train", 4), ("test", 2)):
        for name in ("ant", "bee"):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = generator.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.bmp")
    return root


def test_an_edit_that_keeps_size_and_modification_time_is_decoded_again(tmp_path, fresh_cache):
    root = write_bmp_folder(tmp_path / "data")
    config = small_config(root)
    before, _ = load_decoded(config, "test")
    target, other = root / "test" / "ant" / "0.bmp", root / "test" / "bee" / "1.bmp"
    assert target.stat().st_size == other.stat().st_size
    stat = target.stat()
    time.sleep(0.05)  # the change time's clock ticks coarsely
    target.write_bytes(other.read_bytes())
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # what `touch -r` does
    after, cached = load_decoded(config, "test")
    assert not cached and not torch.equal(before.images, after.images)
    assert torch.equal(after.images[0], after.images[3])  # the new bytes: a copy of bee/1.bmp


def test_cache_clear_and_info_touch_only_what_imgcls_made(cli, tmp_path, fresh_cache, image_folder, assert_ok):
    root = image_folder(tmp_path / "data", SMALL)
    load_decoded(small_config(root), "test")
    entry, = cache_entries(fresh_cache)
    mine = {".git": "hidden.txt", "projects": "notes.txt", "0123456789abcdef01234567": "data.bin"}
    for folder, name in mine.items():
        (fresh_cache / folder).mkdir()
        (fresh_cache / folder / name).write_text("keep me")
    (fresh_cache / "0123456789abcdef01234567" / "meta.json").write_text('{"someone": "else"}')
    info = cli("cache", "info")
    assert_ok(info)
    assert entry.name in info.stdout and "projects" not in info.stdout and "0123456789abcdef01234567" not in info.stdout
    cleared = cli("cache", "clear")
    assert_ok(cleared)
    assert "removed 1 cache entries" in plain(cleared.stdout)
    assert not entry.exists()
    assert all((fresh_cache / folder / name).read_text() == "keep me" for folder, name in mine.items())


def test_the_loser_of_a_race_to_build_an_entry_uses_the_winners(tmp_path, fresh_cache, image_folder, monkeypatch):
    root = image_folder(tmp_path / "data", SMALL)
    config = small_config(root)
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path / "other-cache"))
    winner, _ = load_decoded(config, "test")  # the same entry, built by "another process" elsewhere
    built, = cache_entries(tmp_path / "other-cache")
    monkeypatch.setenv("IMGCLS_CACHE", str(fresh_cache))
    real_rename = os.rename

    def other_process_renames_first(source, target):
        shutil.copytree(built, target)
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", other_process_renames_first)
    split, cached = load_decoded(config, "test")
    assert not cached and torch.equal(split.images, winner.images)
    assert [p.name for p in fresh_cache.iterdir()] == [built.name]  # no staging folder left behind


def dead_pid() -> int:
    process = start_python("-c", "pass", stdout=None, stderr=None)
    process.wait()
    return process.pid


def test_staging_folders_of_killed_builds_are_shown_and_removed(cli, tmp_path, fresh_cache, image_folder):
    from imgcls.files import host_name

    root = image_folder(tmp_path / "data", SMALL)
    fresh_cache.mkdir()
    key = "ab" * 12
    dead = fresh_cache / f".{key}.{host_name()}.{dead_pid()}.0123abcd.building"
    alive = fresh_cache / f".{key}.{host_name()}.{os.getpid()}.0123abcd.building"
    elsewhere = fresh_cache / f".{key}.otherhost.{dead_pid()}.0123abcd.building"
    for folder in (dead, alive, elsewhere):
        folder.mkdir()
        (folder / "images.npy").write_bytes(b"\0" * 1000)
    info = plain(cli("cache", "info").stdout)
    assert info.count("(building)") == 2 and info.count("killed build") == 1
    load_decoded(small_config(root), "test")
    assert not dead.exists() and alive.exists() and elsewhere.exists()


def test_cache_folders_follow_the_umask(tmp_path, fresh_cache, image_folder):
    root = image_folder(tmp_path / "data", SMALL)
    previous = os.umask(0o022)
    try:
        load_decoded(small_config(root), "test")
    finally:
        os.umask(previous)
    entry, = cache_entries(fresh_cache)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o755


def fail_with(number):
    def fail(*args, **kwargs):
        raise OSError(number, os.strerror(number))
    return fail


@pytest.mark.parametrize("case, words", [("file", ["is a file, not a folder", "IMGCLS_CACHE"]),
                                         ("full", ["disk is full", "free some space", "IMGCLS_CACHE"]),
                                         ("read-only", ["read-only file system", "IMGCLS_CACHE"])])
def test_a_cache_that_cannot_be_written_is_one_clear_error(cli, tmp_path, fresh_cache, image_folder, monkeypatch,
                                                           assert_user_error, case, words):
    root = image_folder(tmp_path / "data", SMALL)
    if case == "file":
        fresh_cache.write_text("not a folder")
    elif case == "full":
        monkeypatch.setattr(np, "save", fail_with(errno.ENOSPC))
    else:
        real_mkdir = Path.mkdir
        monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: fail_with(errno.EROFS)() if fresh_cache in
                            (self, *self.parents) else real_mkdir(self, *a, **k))
    result = cli("train", "--dataset", "imagefolder", "--data-dir", root, "--epochs", 1, "--device", "cpu",
                 "--out", tmp_path / "run", "--quiet")
    assert_user_error(result, *words)
    assert not (fresh_cache.is_dir() and [p for p in fresh_cache.iterdir() if p.name.startswith(".")])


# --- image folders: odd files, pixel limits, messages -------------------------------------------

def train_small(cli, root, out, *extra):
    return cli("train", "--dataset", "imagefolder", "--data-dir", root, "--epochs", 1, "--batch-size", 4,
               "--device", "cpu", "--out", out, *extra)


def test_eval_of_the_test_split_copies_no_training_images_and_fits_no_normalization(cli, tmp_path, fresh_cache,
                                                                                   image_folder, monkeypatch):
    """eval reads the split it scores: the training part's pixels are never copied out of the decoded split, and
    the checkpoint's normalization is used, not a new one fitted; the metrics are training's own."""
    import json

    import imgcls.data.prepare as prepare_module
    import imgcls.runs.evaluate as evaluate_module
    from imgcls.runs import checkpoint as ckpt

    root = image_folder(tmp_path / "data", SMALL)
    result = train_small(cli, root, tmp_path / "run", "--class-weights", "balanced")  # weights from train labels
    assert result.exit_code == 0, plain(result.output)
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    prepared = []
    monkeypatch.setattr(prepare_module, "fit_normalization", lambda *args: pytest.fail("a normalization was fitted"))
    monkeypatch.setattr(evaluate_module, "prepare", lambda *args: prepared.append(prepare(*args)) or prepared[-1])
    metrics = evaluate_module.evaluate_checkpoint(ckpt.load(tmp_path / "run"), "test", None, "cpu")
    assert (metrics.top1, metrics.loss, metrics.count) == (trained["top1"], pytest.approx(trained["loss"]),
                                                           trained["count"])
    (data,) = prepared
    assert "images" not in vars(data.train) and "images" not in vars(data.val)  # never copied out
    assert data.train.source is not None and len(data.train) + len(data.val) == 8


def test_a_warm_run_takes_the_split_and_statistics_from_the_cache_and_trains_the_same_weights(
        cli, tmp_path, fresh_cache, image_folder, monkeypatch):
    import imgcls.data.prepare as prepare_module
    from imgcls.runs import checkpoint as ckpt

    root = image_folder(tmp_path / "data", SMALL)
    cold = train_small(cli, root, tmp_path / "cold")
    assert cold.exit_code == 0, plain(cold.output)
    assert len(list(fresh_cache.glob("*/derived-*.npz"))) == 2  # the split's rows, the normalization
    for name in ("split_train_val", "fit_normalization"):
        monkeypatch.setattr(prepare_module, name, lambda *args, name=name, **kwargs: pytest.fail(f"{name} ran"))
    warm = train_small(cli, root, tmp_path / "warm")
    assert warm.exit_code == 0, plain(warm.output)
    cold, warm = ckpt.load(tmp_path / "cold"), ckpt.load(tmp_path / "warm")
    for name in ("weight", "bias", "mean", "std"):
        assert torch.equal(getattr(cold, name), getattr(warm, name)), name


def rewrite_derived(path, damage: str) -> None:
    """A derived file as an entry made before they were kept (none), or damaged, or not what is asked for."""
    if damage == "absent":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"PK\x03\x04 not a whole zip file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-40])
    else:
        with np.load(path) as stored:
            arrays = {name: stored[name] for name in stored.files}
        if damage == "other_settings":  # another seed's, whose rows and statistics differ (here: swapped)
            arrays["settings"] = np.array(str(arrays["settings"]).replace('"seed": 0', '"seed": 1'))
            swap = {"train": "val", "val": "train", "mean": "std", "std": "mean"}
            arrays = {swap.get(name, name): value for name, value in arrays.items()}
        else:  # other types: rows as floats, statistics as float64
            arrays = {name: value if name == "settings" else value.astype(np.float64) for name, value in arrays.items()}
        np.savez(path, **arrays)


@pytest.mark.parametrize("damage", ["absent", "garbage", "truncated", "other_settings", "other_types"])
def test_an_older_or_damaged_entry_has_its_split_and_statistics_computed_again_never_misread(
        tmp_path, fresh_cache, image_folder, monkeypatch, damage):
    import imgcls.data.prepare as prepare_module

    config = small_config(image_folder(tmp_path / "data", SMALL), val_split=0.5)
    fresh = prepare(config, seed=0)
    derived = sorted(fresh_cache.glob("*/derived-*.npz"))
    assert len(derived) == 2
    for path in derived:
        rewrite_derived(path, damage)
    again = prepare(config, seed=0)
    for name in ("train", "val"):
        assert torch.equal(getattr(again, name).index, getattr(fresh, name).index)
        assert torch.equal(getattr(again, name).images, getattr(fresh, name).images)
    assert torch.equal(again.normalization.mean, fresh.normalization.mean)
    assert torch.equal(again.normalization.std, fresh.normalization.std)
    # computed again and kept: a third run reads them
    monkeypatch.setattr(prepare_module, "fit_normalization", lambda *args: pytest.fail("fitted again"))
    third = prepare(config, seed=0)
    assert torch.equal(third.val.index, fresh.val.index) and torch.equal(third.normalization.std, fresh.normalization.std)


def test_a_fifo_named_like_an_image_is_refused_by_name_not_read(cli, tmp_path, fresh_cache, image_folder,
                                                                assert_user_error, assert_ok):
    root = image_folder(tmp_path / "data", SMALL)
    os.mkfifo(root / "train" / "ant" / "pipe.png")  # reading it would wait for a writer forever
    assert_user_error(train_small(cli, root, tmp_path / "run", "--quiet"), "pipe.png", "not a regular file", "FIFO")
    skipped = train_small(cli, root, tmp_path / "skip", "--skip-bad-images")
    assert_ok(skipped)
    assert "1 unreadable images skipped" in plain(skipped.stderr)


def test_dangling_symlinks_and_symlink_loops_are_named_or_skipped(cli, tmp_path, fresh_cache, image_folder,
                                                                  assert_user_error):
    root = image_folder(tmp_path / "data", SMALL)
    ant = root / "train" / "ant"
    (ant / "gone.png").symlink_to("annexed-object-not-fetched.png")
    (ant / "loop.png").symlink_to("loop.png")
    (ant / "here").symlink_to(".")  # folder loops: walked once, not forty times
    (ant / "up").symlink_to("..")
    assert_user_error(train_small(cli, root, tmp_path / "run", "--quiet"), "gone.png", "symbolic link",
                      "does not exist")
    data = prepare(small_config(root, skip_bad_images=True), seed=0)
    assert data.skipped == 2 and len(data.train) + len(data.val) == 8
    assert Counter(data.train.labels.tolist() + data.val.labels.tolist()) == {0: 4, 1: 4}


def test_a_gif_is_an_image_everywhere_and_other_files_are_counted(tmp_path, fresh_cache, image_folder):
    from PIL import Image

    from imgcls.runs.predict import list_images

    root = image_folder(tmp_path / "data", SMALL)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "train" / "ant" / "zero.gif")
    (root / "train" / "bee" / "notes.txt").write_text("not an image")
    data = prepare(small_config(root), seed=0)
    assert len(data.train) + len(data.val) == 9 and data.passed_over == 1
    assert len(list_images([root / "train"])) == 9
    from rich.console import Console

    from imgcls.report.report import Reporter

    console = Console(record=True, width=200)
    Reporter(console=console).data_ready(data)
    assert "1 files that are not images passed over" in console.export_text()


def test_image_size_one_works_on_colour_images(tmp_path, fresh_cache, image_folder):
    root = image_folder(tmp_path / "data", SMALL)
    data = prepare(small_config(root, image_size=1), seed=0)
    assert data.shape == (3, 1, 1)
    first = decode_image(str(root / "test" / "ant" / "000.png"), mode=ImageReadMode.RGB)
    from torchvision.transforms.v2.functional import resize as tv_resize

    in_float = tv_resize(first.float(), [1, 1], antialias=True)  # the float path has no such failure
    assert (data.test.images[0].float() - in_float).abs().max() <= 1


def huge_header(kind: str) -> bytes:
    """A real 8x8 JPEG or PNG whose header says 14000 x 14000 (196 megapixels)."""
    import struct
    import zlib

    from torchvision.io import encode_jpeg, encode_png

    image = torch.zeros((3, 8, 8), dtype=torch.uint8)
    if kind == "jpeg":
        data = bytearray(encode_jpeg(image).numpy().tobytes())
        sof = data.index(b"\xff\xc0")
        data[sof + 5:sof + 9] = struct.pack(">HH", 14000, 14000)
        return bytes(data)
    data = bytearray(encode_png(image).numpy().tobytes())
    header = b"IHDR" + struct.pack(">II", 14000, 14000) + bytes(data[24:29])
    data[12:33] = header + struct.pack(">I", zlib.crc32(header))
    return bytes(data)


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_one_pixel_limit_for_every_format_from_the_header(kind):
    from imgcls.data.decode import decode_image_bytes

    with pytest.raises(ValueError, match="more than 178,956,970 pixels.*decompression bombs"):
        decode_image_bytes(huge_header(kind), None)


def test_grey_train_and_colour_test_images_say_what_differs(cli, tmp_path, fresh_cache, image_folder,
                                                            assert_user_error):
    from torchvision.io import write_png

    root = image_folder(tmp_path / "data", SMALL)
    for path in (root / "train").rglob("*.png"):
        write_png(decode_image(str(path))[:1], str(path))
    error = assert_user_error(train_small(cli, root, tmp_path / "run", "--quiet"), "grey (1 channel)",
                              "colour (3 channels)", "convert")
    assert "pass --image-size" not in error


def test_sizes_are_written_width_first(cli, tmp_path, fresh_cache, image_folder, assert_user_error):
    root = image_folder(tmp_path / "data", {**SMALL, "test": {"ant": [(8, 8), (8, 9)], "bee": [(8, 8)] * 2}})
    assert_user_error(train_small(cli, root, tmp_path / "run", "--quiet"), "8 wide, 8 high", "9 wide, 8 high")


def test_a_data_dir_that_is_a_file_says_so(cli, tmp_path, monkeypatch, assert_user_error):
    data_file = tmp_path / "data.tar"
    data_file.write_text("an archive, say")
    monkeypatch.setenv("IMGCLS_DATA", str(data_file))
    for dataset in ("imagefolder", "mnist"):
        result = cli("train", "--dataset", dataset, "--epochs", 1, "--out", tmp_path / "run", "--quiet")
        assert_user_error(result, str(data_file), "is a file, not a folder")


# --- minibatches --------------------------------------------------------------------------------

def numbered(n):
    """Images whose single pixel is their own index, and labels equal to index % 3."""
    images = torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1)
    return LabelledImages(images, torch.arange(n) % 3)


IDENTITY = Normalization(torch.zeros(1, 1, 1), torch.ones(1, 1, 1))


def epoch_indices(batches, epoch):
    out = []
    for pixels, labels, *_ in batches.epoch(epoch):
        index = (pixels[:, 0] * 255).round().long()
        assert torch.equal(labels, index % 3)  # labels travel with their images
        out.append(index.tolist())
    return out


def test_batches_cover_every_image_once_per_epoch():
    batches = Batches(numbered(23), IDENTITY, 5, torch.device("cpu"), seed=4)
    assert len(batches) == math.ceil(23 / 5) == 5
    for epoch in range(3):
        parts = epoch_indices(batches, epoch)
        assert [len(p) for p in parts] == [5, 5, 5, 5, 3]
        flat = [i for p in parts for i in p]
        assert sorted(flat) == list(range(23))
    assert epoch_indices(batches, 0) != epoch_indices(batches, 1)  # each epoch draws a new order
    assert [i for p in epoch_indices(batches, 0) for i in p] != list(range(23))  # and shuffles


def test_same_seed_and_epoch_give_the_same_order():
    a = Batches(numbered(40), IDENTITY, 7, torch.device("cpu"), seed=3)
    b = Batches(numbered(40), IDENTITY, 7, torch.device("cpu"), seed=3)
    c = Batches(numbered(40), IDENTITY, 7, torch.device("cpu"), seed=5)
    assert epoch_indices(a, 2) == epoch_indices(b, 2)
    assert epoch_indices(a, 2) != epoch_indices(c, 2)
    assert torch.equal(epoch_permutation(40, 3, 2), epoch_permutation(40, 3, 2))


def test_batch_size_one_and_full_batch():
    one = Batches(numbered(9), IDENTITY, 1, torch.device("cpu"), seed=0)
    parts = epoch_indices(one, 0)
    assert len(one) == 9 and all(len(p) == 1 for p in parts) and sorted(sum(parts, [])) == list(range(9))
    full = Batches(numbered(9), IDENTITY, 9, torch.device("cpu"), seed=0)
    parts = epoch_indices(full, 0)
    assert len(full) == 1 and sorted(parts[0]) == list(range(9))
    larger = Batches(numbered(9), IDENTITY, 1000, torch.device("cpu"), seed=0)
    assert len(larger) == 1 and larger.batch_size == 9


@pytest.mark.parametrize("augment", [None, "flip,translate:2"])
def test_batches_made_ahead_are_the_batches_made_in_turn(augment):
    from imgcls.data.augment import read_augmentation

    images = LabelledImages(torch.randint(0, 256, (50, 1, 6, 6), dtype=torch.uint8), torch.arange(50) % 3)
    batches = Batches(images, IDENTITY, 6, torch.device("cpu"), seed=2, augment=read_augmentation(augment))
    ahead, in_turn = list(batches.epoch(3, start_step=2)), list(map(batches._shuffled(3), range(2, len(batches))))
    assert len(ahead) == len(in_turn) == len(batches) - 2
    for a, b in zip(ahead, in_turn):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def _batch_threads() -> list:
    return [thread for thread in threading.enumerate() if thread.name.startswith("imgcls-batches")]


def test_batches_are_made_ahead_only_with_a_free_core_and_within_the_memory_budget(monkeypatch):
    import imgcls.data.batches as batches_module

    def made_on_a_thread(batches) -> bool:
        epoch = batches.epoch(0)
        next(epoch)  # 9 batches to go: a thread making them ahead is still at it (its queue holds 2)
        seen = bool(_batch_threads())
        del epoch  # a made_ahead generator, collected, ends its threads
        return seen

    batches = Batches(numbered(40), IDENTITY, 4, torch.device("cpu"), seed=1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setattr(batches_module, "usable_cores", lambda: 2)
    assert made_on_a_thread(batches)
    monkeypatch.setattr(batches_module, "usable_cores", lambda: 1)  # the step takes every core
    assert not made_on_a_thread(batches)
    monkeypatch.setattr(batches_module, "usable_cores", lambda: 2)
    monkeypatch.setattr(batches_module, "AHEAD_BYTES", 4 * 4 * 3)  # less than the batches made ahead would take
    assert not made_on_a_thread(batches)


@pytest.mark.parametrize("makers", [1, 2, 3])
def test_made_ahead_keeps_the_order_raises_where_the_error_was_and_stops_when_the_taker_does(makers):
    def slow_on_evens(step):  # the threads finish out of order
        time.sleep(0.002 * (step % 2 == 0))
        return step

    assert list(made_ahead(slow_on_evens, range(5, 60), makers, 2)) == list(range(5, 60))

    def failing(step):
        if step == 7:
            raise OSError("the disk went away")
        return step

    taken = []
    with pytest.raises(OSError, match="went away"):
        for item in made_ahead(failing, range(20), makers, 2):
            taken.append(item)
    assert taken == list(range(7))
    made = []
    items = made_ahead(lambda step: made.append(step) or step, range(1000), makers, 2)
    assert next(items) == 0 and next(items) == 1
    items.close()  # a run stopped part-way (Ctrl-C): the threads making batches end, holding nothing
    assert not _batch_threads() and len(made) <= 2 + makers * 3


def test_unshuffled_batches_keep_the_order():
    batches = Batches(numbered(10), IDENTITY, 4, torch.device("cpu"), shuffle=False)
    assert epoch_indices(batches, 0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_evaluation_batches_hold_at_most_256_mb_of_pixels():
    from imgcls.data.batches import EVAL_BATCH, eval_batch_size

    def size(shape):  # expanded scalars: the statistics of a 20000x20000 image without allocating 4.8 GB
        return eval_batch_size(Normalization(torch.zeros(()).expand(shape), torch.ones(()).expand(shape)))

    assert size((3, 32, 32)) == EVAL_BATCH == 4096
    assert size((3, 512, 512)) == (1 << 28) // (4 * 3 * 512 * 512) == 85
    assert size((3, 20000, 20000)) == 1


def test_the_normalizer_leaves_its_input_alone_and_gives_pixel_times_scale_minus_shift():
    from imgcls.data.normalize import PixelNormalizer

    normalization = Normalization(torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), 0.25))
    normalize = PixelNormalizer(normalization, torch.device("cpu"))
    raw = torch.tensor([[0, 51, 204, 255]], dtype=torch.uint8)
    expected = (raw.float() / 255 - 0.5) / 0.25
    assert torch.allclose(normalize(raw), expected, atol=1e-6)
    already_float = raw.float()
    assert torch.allclose(normalize(already_float), expected, atol=1e-6)
    assert torch.equal(already_float, raw.float())  # not normalized in place


@pytest.mark.parametrize("name, data, words", [
    ("bad.tif", b"II*\x00" + bytes(range(256)) * 2, ("not an image imgcls can read", "damaged")),
    ("bad.gif", b"GIF89a" + bytes(range(50)), ("damaged or not a whole image file",)),
])
def test_a_file_no_decoder_can_identify_is_named_without_internal_text(cli, tmp_path, fresh_cache, image_folder,
                                                                      assert_user_error, name, data, words):
    """A .tif that starts like a TIFF but is not one: Pillow's message names its buffer (<_io.BytesIO ...>); a
    broken GIF: giflib's function name and code only."""
    root = image_folder(tmp_path / "data", SMALL)
    bad = root / "train" / "ant" / name
    bad.write_bytes(data)
    line = assert_user_error(train_small(cli, root, tmp_path / "run"), str(bad), *words)
    assert "BytesIO" not in line and " at 0x" not in line
    assert "warning" not in plain(cli("train", "--dataset", "imagefolder", "--data-dir", root, "--epochs", 1,
                                      "--device", "cpu", "--out", tmp_path / "run2").stderr).lower()
