"""Reading images and dataset files when they are not what they should be: a truncated JPEG stops the run naming it
(or is skipped and counted with --skip-bad-images), every format ImageFolder lists is read, and a wrong layout, a
wrong image size, an image size too large for memory, damaged MNIST files and a download without a network are
each one 'error:' line with exit code 2, before a run folder is written."""

import json
import socket

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_TEST_PER_CLASS, TWO_SHAPES, plain, train_image_folder, train_tiny_cifar, write_image_folder


def test_a_truncated_jpeg_stops_the_run_and_is_named(cli, tiny_cifar, tmp_path, assert_user_error, assert_ok):
    victim = tiny_cifar / "train" / "dog" / sorted(p.name for p in (tiny_cifar / "train" / "dog").iterdir())[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    error = assert_user_error(train_tiny_cifar(cli, tiny_cifar, tmp_path / "a", epochs=2), "cannot read image",
                              victim.name, "truncated", "--skip-bad-images")
    assert ".cpp" not in error  # torchvision's source location is no use to the user
    assert not (tmp_path / "a").exists()


def test_skip_bad_images_reports_how_many(cli, tiny_cifar, tmp_path, assert_ok):
    for i, victim in enumerate(sorted((tiny_cifar / "train" / "cat").iterdir())[:2]):
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 3] if i == 0 else b"")
    (tiny_cifar / "test" / "ship" / "garbage.jpg").write_bytes(b"\x89PNG not really")
    result = train_tiny_cifar(cli, tiny_cifar, tmp_path / "b", "--skip-bad-images", epochs=2)
    assert_ok(result)
    assert "3 unreadable images skipped" in " ".join(plain(result.output).split())
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["test"]["count"] == 10 * TINY_TEST_PER_CLASS
    # --limit keeps the count (it was lost when --limit drew its sample)
    result = train_tiny_cifar(cli, tiny_cifar, tmp_path / "c", "--skip-bad-images", "--limit", 100, epochs=2)
    assert_ok(result)
    assert "3 unreadable images skipped" in " ".join(plain(result.output).split())


def test_images_in_every_format_image_folder_lists_are_read(cli, tmp_path, assert_ok):
    """ImageFolder lists BMP, TIFF, PPM and PGM, which torchvision.io cannot decode; 16-bit PNGs and animated GIFs
    (under an image extension) must not break the stacking of the batch either."""
    root = write_image_folder(tmp_path / "data", TWO_SHAPES)
    rng = np.random.default_rng(0)
    colour = lambda: Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))  # noqa: E731
    colour().save(root / "train" / "circle" / "a.bmp")
    colour().save(root / "train" / "circle" / "b.tiff")
    colour().save(root / "train" / "circle" / "c.ppm")
    colour().convert("L").save(root / "train" / "square" / "d.pgm")
    Image.fromarray(rng.integers(0, 65536, (8, 8), dtype=np.uint16)).save(root / "train" / "square" / "e.png")
    frames = [colour() for _ in range(3)]
    frames[0].save(root / "train" / "square" / "f.png", format="GIF", save_all=True, append_images=frames[1:])
    colour().convert("CMYK").save(root / "test" / "square" / "g.jpg")
    colour().save(root / "test" / "circle" / "h.webp")
    assert_ok(train_image_folder(cli, root, tmp_path / "run", "--quiet"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["val"]["count"], metrics["test"]["count"]) == (2, 6)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_an_image_size_too_large_for_memory_is_refused_before_decoding(cli, dataset, data_root, cifar_jpeg, tmp_path,
                                                                       assert_user_error):
    """MNIST resizes torchvision's array in chunks, CIFAR-10 (an image folder) image by image: both are checked."""
    data_dir = data_root if dataset == "mnist" else cifar_jpeg
    text = assert_user_error(cli("train", "--dataset", dataset, "--data-dir", data_dir, "--image-size", 30000,
                                 "--out", tmp_path / "run"), "--image-size 30000", "GB", "smaller --image-size")
    assert "60000 images" in text or "50000 images" in text
    assert not (tmp_path / "run").exists()


def test_a_data_dir_with_the_wrong_layout(cli, tmp_path, assert_user_error):
    root = write_image_folder(tmp_path / "flat", TWO_SHAPES)
    for image in list((root / "train").rglob("*.png")):
        image.rename(root / "train" / f"{image.parent.name}-{image.name}")
    for folder in ("circle", "square"):
        (root / "train" / folder).rmdir()
    assert_user_error(train_image_folder(cli, root, tmp_path / "run"), "find any class folder", "train")
    assert not (tmp_path / "run").exists()


def test_a_named_dataset_folder_with_the_wrong_image_size(cli, tmp_path, assert_user_error):
    from imgcls.data.registry import CIFAR10_CLASSES

    layout = {split: {name: [(16, 16)] * 2 for name in CIFAR10_CLASSES} for split in ("train", "test")}
    root = write_image_folder(tmp_path / "data", layout)
    assert_user_error(cli("train", "--dataset", "cifar10", "--data-dir", root, "--out", tmp_path / "run"),
                      "does not hold cifar10", "(3, 16, 16)", "--image-size")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_mnist_files(cli, data_root, tmp_path, damage, fresh_cache, assert_user_error):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for source in (data_root / "MNIST" / "raw").iterdir():
        if source.name.endswith(".gz"):
            continue
        data = source.read_bytes()
        if source.name == "train-images-idx3-ubyte":
            data = {"truncated": data[: len(data) // 2], "garbage": b"garbage" * 10, "empty": b""}[damage]
        (raw / source.name).write_bytes(data)
    assert_user_error(cli("train", "--dataset", "mnist", "--data-dir", tmp_path / "data", "--out", tmp_path / "run"),
                      "mnist", "cannot be read", "damaged")
    assert not (tmp_path / "run").exists()


def test_download_without_a_network(cli, tmp_path, monkeypatch, assert_user_error):
    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for dataset in ("mnist", "cifar10"):
        assert_user_error(cli("train", "--dataset", dataset, "--data-dir", tmp_path / dataset, "--download",
                              "--out", tmp_path / "run"), f"could not download {dataset}", "--data-dir")
    assert not (tmp_path / "run").exists()


def test_a_zip_reader_opens_its_own_archive_in_every_process(tmp_path):
    """Forked decoding workers that shared the parent's open archive moved each other's read position ("bad magic
    number", now and then); each process opens its own, and the reader survives pickling for a worker pool."""
    import multiprocessing
    import pickle
    import zipfile

    from imgcls.data.readers import ZipReader

    path = tmp_path / "a.zip"
    members = {f"train/c/{i}.bin": bytes([i]) * (1000 + i) for i in range(8)}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    names = list(members)
    reader = ZipReader(path, names)
    assert reader(0) == members[names[0]]  # the parent has its archive open
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map(reader, range(8))
    assert got == list(members.values())
    assert pickle.loads(pickle.dumps(reader))(5) == members[names[5]]
