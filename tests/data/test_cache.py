"""The decoded cache never runs code: its arrays are read with numpy's allow_pickle=False.
(The cache's keys, reuse, invalidation and damaged entries are tested in test_data.py.)"""

import json
import shutil

import numpy as np
import pytest

from conftest import TWO_SHAPES, RunsCode, train_image_folder, write_image_folder


def test_a_pickled_cache_entry_is_never_unpickled(cli, tmp_path, fresh_cache, assert_ok):
    """The decoded cache is read with numpy's allow_pickle=False: an entry whose arrays were swapped for pickled
    objects is ignored and rebuilt, and the pickle never runs."""
    root = write_image_folder(tmp_path / "data", TWO_SHAPES)
    assert_ok(train_image_folder(cli, root, tmp_path / "first", "--quiet"))
    marker = tmp_path / "ran"
    entries = [p for p in fresh_cache.iterdir() if p.is_dir() and (p / "labels.npy").exists()]
    assert entries
    for entry in entries:
        evil = np.empty(1, dtype=object)
        evil[0] = RunsCode(marker)
        np.save(entry / "labels.npy", evil, allow_pickle=True)
    assert_ok(train_image_folder(cli, root, tmp_path / "second", "--quiet"))
    assert not marker.exists()
    assert json.loads((tmp_path / "first" / "metrics.json").read_text())["test"] == \
        json.loads((tmp_path / "second" / "metrics.json").read_text())["test"]


def _rows_255(entry):
    images = np.load(entry / "images.npy")
    images[: len(images) // 2] = 255
    np.save(entry / "images.npy", images)


def _labels(value):
    def damage(entry):
        labels = np.load(entry / "labels.npy")
        labels[0] = value
        np.save(entry / "labels.npy", labels)
    return damage


def _huge_std(entry):
    for path in entry.glob("derived-*.npz"):
        with np.load(path) as stored:
            values = dict(stored)
        if "std" in values:
            values["std"] = np.full_like(values["std"], 1e30)
            with open(path, "wb") as file:  # np.savez on a path adds .npz
                np.savez(file, **values)


def _classes_altered(entry):
    meta = json.loads((entry / "meta.json").read_text())
    meta["classes"] = list(reversed(meta["classes"]))
    (entry / "meta.json").write_text(json.dumps(meta))


def _no_checksums(entry):
    """An entry as an imgcls without checksums wrote it."""
    meta = json.loads((entry / "meta.json").read_text())
    del meta["crc32"]
    (entry / "meta.json").write_text(json.dumps(meta))


def _fifo(entry):
    """A FIFO in an array's place: opening it would wait for a writer forever."""
    import os

    (entry / "images.npy").unlink()
    os.mkfifo(entry / "images.npy")


@pytest.mark.parametrize("damage, why", [
    (_rows_255, "images.npy does not match its CRC-32"), (_labels(99), "labels.npy does not match its CRC-32"),
    (_labels(-1), "labels.npy does not match its CRC-32"), (_classes_altered, "meta.json does not match its CRC-32"),
    (_huge_std, "do not match their CRC-32"), (_no_checksums, "an older imgcls made it"),
    (_fifo, "images.npy is not a file")],
    ids=["rows-255", "label-99", "label-minus-1", "classes", "std-1e30", "no-checksums", "fifo"])
def test_a_damaged_entry_is_noticed_and_rebuilt_with_a_note(cli, tmp_path, fresh_cache, assert_ok, damage, why):
    """Whatever was changed in a warm entry (pixels, labels, class names, the kept normalization), the next run
    says so in one note and trains on what the source files hold, as the first run did."""
    root = write_image_folder(tmp_path / "data", TWO_SHAPES)
    assert_ok(train_image_folder(cli, root, tmp_path / "first", "--quiet"))
    entries = [p for p in fresh_cache.iterdir() if p.is_dir() and (p / "labels.npy").exists()]
    for entry in entries:
        damage(entry)
    result = train_image_folder(cli, root, tmp_path / "second", "--quiet")
    assert_ok(result)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes and all(why in line and str(fresh_cache) in line for line in notes), result.stderr
    assert "Traceback" not in result.output
    assert json.loads((tmp_path / "first" / "metrics.json").read_text())["test"] == \
        json.loads((tmp_path / "second" / "metrics.json").read_text())["test"]
    third = train_image_folder(cli, root, tmp_path / "third", "--quiet")  # rebuilt whole: no note again
    assert_ok(third)
    assert "note:" not in third.stderr


def test_an_entry_replaced_by_a_file_is_refused_by_name(cli, tmp_path, fresh_cache, assert_ok, assert_user_error):
    root = write_image_folder(tmp_path / "data", TWO_SHAPES)
    assert_ok(train_image_folder(cli, root, tmp_path / "first", "--quiet"))
    entry = sorted(p for p in fresh_cache.iterdir() if p.is_dir() and (p / "labels.npy").exists())[0]
    shutil.rmtree(entry)
    entry.write_text("someone's file")
    result = train_image_folder(cli, root, tmp_path / "second", "--quiet")
    assert_user_error(result, str(entry), "is not a folder", "delete it")
    assert entry.read_text() == "someone's file"


def test_the_checksums_cost_little_on_a_warm_start(tmp_path):
    """A warm entry of CIFAR-10's size (50,000 images, 150 MB) is read back, checksums checked, in well under a
    second."""
    import time

    import torch

    from imgcls.data import cache
    from imgcls.data.types import DecodedSplit

    images = torch.randint(0, 256, (50000, 3, 32, 32), dtype=torch.uint8)
    split = DecodedSplit(images, torch.arange(50000) % 10, [str(i) for i in range(10)])
    identity = {"dataset": "cifar10", "split": "train"}
    cache.load_or_build(tmp_path, identity, lambda: split)
    start = time.perf_counter()
    again, cached = cache.load_or_build(tmp_path, identity, lambda: split)
    assert cached and time.perf_counter() - start < 0.6  # two busy shared cores: room for 7x
    assert torch.equal(again.images[-1], images[-1])
