"""The catalog room and its command, `imgcls datasets`: every named dataset with its facts, and which of them a
data folder holds (torchvision's files or an image folder copy)."""

import json

from conftest import plain, write_image_folder
from imgcls.data.registry import DIGITS, FASHION_CLASSES, SPECS


def datasets_json(cli, *args):
    result = cli("datasets", *args, "--json")
    assert result.exit_code == 0, plain(result.output)
    return {d["name"]: d for d in json.loads(result.stdout)["datasets"]}


def test_datasets_lists_every_named_dataset_with_its_facts(cli, tmp_path):
    got = datasets_json(cli, "--data-dir", tmp_path)
    assert list(got) == list(SPECS)
    assert got["mnist"]["classes"] == list(DIGITS) and got["mnist"]["shape"] == [1, 28, 28]
    assert (got["mnist"]["train"], got["mnist"]["test"]) == (60000, 10000)
    assert got["fashion-mnist"]["classes"] == list(FASHION_CLASSES)
    assert (got["cifar10"]["train"], got["cifar10"]["test"], got["cifar10"]["shape"]) == (50000, 10000, [3, 32, 32])
    assert got["cifar100"]["num_classes"] == 100 and (got["svhn"]["train"], got["svhn"]["test"]) == (73257, 26032)
    assert (got["stl10"]["train"], got["stl10"]["test"], got["stl10"]["shape"]) == (5000, 8000, [3, 96, 96])
    assert got["imagenet"]["num_classes"] == 1000 and got["imagenet"]["shape"] is None
    assert got["imagefolder"]["classes"] is None and got["imagefolder"]["train"] is None
    # an empty data dir holds nothing but the sample inside the package
    assert [name for name, d in got.items() if d["present"]] == ["cifar10-sample"]


def test_datasets_finds_torchvision_files(cli, mnist_root):
    got = datasets_json(cli, "--data-dir", mnist_root)
    assert "MNIST" in got["mnist"]["present"] and "FashionMNIST" in got["fashion-mnist"]["present"]
    assert got["cifar10"]["present"] is None and got["svhn"]["present"] is None


def test_datasets_finds_image_folder_copies(cli, tiny_cifar_session, tmp_path):
    got = datasets_json(cli, "--data-dir", tiny_cifar_session)
    assert "image folder" in got["cifar10"]["present"] and "image folder" in got["imagefolder"]["present"]
    assert got["mnist"]["present"] is None and got["stl10"]["present"] is None  # other classes
    assert got["imagenet"]["present"] is None  # 10 class folders are not ImageNet's 1000
    shapes = write_image_folder(tmp_path / "shapes", {"train": {"circle": [(8, 8)]}, "test": {"circle": [(8, 8)]}})
    got = datasets_json(cli, "--data-dir", shapes)
    assert got["cifar10"]["present"] is None and got["imagefolder"]["present"]
    only_train = write_image_folder(tmp_path / "half", {"train": {"circle": [(8, 8)]}})
    assert datasets_json(cli, "--data-dir", only_train)["imagefolder"]["present"] is None


def test_datasets_default_data_dir_and_table(cli, mnist_root, monkeypatch):
    monkeypatch.setenv("IMGCLS_DATA", str(mnist_root))
    result = cli("datasets")
    assert result.exit_code == 0, plain(result.output)
    text = plain(result.stdout)
    assert str(mnist_root) in text.replace("\n", "")
    for name in ("cifar10-sample", "mnist", "cifar100", "imagefolder", "60,000", "1×28×28", "yes", "no"):
        assert name in text
    assert json.loads(cli("datasets", "--json").stdout)["data_dir"] == str(mnist_root)
