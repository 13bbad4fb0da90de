"""The decoded cache never runs code: its arrays are read with numpy's allow_pickle=False.
(The cache's keys, reuse, invalidation and damaged entries are tested in test_data.py.)"""

import json

import numpy as np

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
