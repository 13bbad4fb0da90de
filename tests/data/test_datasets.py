"""CIFAR-100, SVHN, STL-10 and ImageNet, read by imgcls through torchvision's own classes from miniature copies
in their published formats (tests/fixtures_datasets.py; each writer's docstring cites the description it follows:
the dataset's own page, and torchvision's cifar.py, svhn.py, stl10.py and imagenet.py for the files it reads).

Only the MD5 checks are bypassed (see `md5_not_checked`): the fixtures' files are not the published ones, so
their sums differ. Everything the classes parse (pickles, .mat files, binaries, tar archives, the devkit) is
parsed as it would be for the real files.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import fixtures_datasets as fx
from conftest import plain

NAMES = ("cifar100", "svhn", "stl10", "imagenet")


@pytest.fixture(autouse=True)
def md5_not_checked(monkeypatch):
    """torchvision's dataset modules each import check_integrity(path, md5) from datasets.utils: here it is
    torchvision's own check without the MD5 (the file must still exist). The parsing is torchvision's."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.imagenet as imagenet
    import torchvision.datasets.stl10 as stl10
    import torchvision.datasets.svhn as svhn
    from torchvision.datasets.utils import check_integrity

    for module in (cifar, svhn, stl10, imagenet):
        monkeypatch.setattr(module, "check_integrity", lambda path, md5=None: check_integrity(path))


@pytest.fixture
def no_run_figures(monkeypatch):
    """train draws curves, the confusion matrix and the templates after training: with CIFAR-100's 100 classes
    that is most of a test's time, and test_figures.py tests them. The models and metrics are unchanged."""
    import imgcls.report.figures

    monkeypatch.setattr(imgcls.report.figures, "write_run_figures", lambda run_dir: [])


def write(name, root):
    """Write the miniature copy; return (train, test) as fixtures_datasets.Split, in the order imgcls lists them,
    and the class names imgcls should give."""
    if name == "imagenet":
        copy = fx.write_imagenet(root)
        # torchvision's parse_val_archive moves each validation image into val/<WNID>/, and ImageFolder lists
        # class by class, then by file name: the images of a class keep their file order.
        order = np.argsort(copy.val.labels, kind="stable")
        return copy.train, fx.Split(copy.val.images[order], copy.val.labels[order]), copy.classes
    writer = {"cifar100": fx.write_cifar100, "svhn": fx.write_svhn, "stl10": fx.write_stl10}[name]
    classes = {"cifar100": list(fx.CIFAR100_FINE), "svhn": [str(d) for d in range(10)],
               "stl10": list(fx.STL10_NAMES)}[name]
    splits = writer(root)
    return splits["train"], splits["test"], classes


def read(name, root, split):
    from imgcls.data.readers import read_split
    from imgcls.data.registry import SPECS

    return read_split(SPECS[name], root, split, None, False, False)


# JPEG (ImageNet) changes pixels by a few levels; the other formats hold them exactly.
TOLERANCE = {"imagenet": 6}


@pytest.mark.parametrize("name", NAMES)
def test_pixels_and_labels_are_the_files(name, tmp_path):
    """Orientation, channel order, label offset (SVHN's 10 for digit 0, STL-10's 1..10) and class order: each image
    imgcls reads is the one written, with its label."""
    root = tmp_path / name
    train, test, classes = write(name, root)
    for split, written in (("train", train), ("test", test)):
        got = read(name, root, split)
        assert got.classes == classes
        assert got.labels.tolist() == written.labels.tolist()
        assert tuple(got.images.shape) == written.images.shape
        error = np.abs(got.images.numpy().astype(int) - written.images.astype(int))
        assert error.max() <= TOLERANCE.get(name, 0), f"{split}: pixels differ by up to {error.max()}"
        flipped = np.abs(got.images.numpy().astype(int) - written.images[..., ::-1].astype(int))
        assert flipped.max() > TOLERANCE.get(name, 0)  # the check above would see a mirrored image


def test_svhn_label_10_is_digit_0(tmp_path):
    from scipy.io import loadmat

    train, _, _ = write("svhn", tmp_path)
    stored = loadmat(str(tmp_path / "train_32x32.mat"))["y"].ravel()
    assert set(stored.tolist()) == set(range(1, 11))
    got = read("svhn", tmp_path, "train")
    assert [got.classes[label] for label in got.labels[stored == 10]] == ["0"] * int((stored == 10).sum())


def test_cifar100_superclasses_are_the_files(tmp_path):
    """imgcls's fine -> superclass table against the coarse_labels and coarse_label_names of the files."""
    import pickle

    from imgcls.data.registry import SPECS

    write("cifar100", tmp_path)
    folder = tmp_path / "cifar-100-python"
    entry = pickle.loads((folder / "train").read_bytes(), encoding="latin1")
    meta = pickle.loads((folder / "meta").read_bytes(), encoding="latin1")
    from_files = dict(zip(entry["fine_labels"], entry["coarse_labels"]))
    spec = SPECS["cifar100"]
    assert list(spec.superclasses) == meta["coarse_label_names"]
    assert spec.superclass_of() == [from_files[fine] for fine in range(100)]


def test_imagenet_second_read_uses_what_torchvision_unpacked(tmp_path):
    """The first read parses the archives into meta.bin, train/ and val/; the next reads those (still through
    torchvision's class, not as an image folder: the class names stay the devkit's words, not WNIDs)."""
    write("imagenet", tmp_path)
    read("imagenet", tmp_path, "train")  # unpacks the train tar; reading "test" unpacks the val tar
    first = read("imagenet", tmp_path, "test")
    for archive in ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):
        (tmp_path / archive).unlink()
    again = read("imagenet", tmp_path, "test")
    assert again.classes == first.classes == ["English setter", "Siberian husky", "kit fox"]
    assert again.labels.tolist() == first.labels.tolist() and bool((again.images == first.images).all())


def run_ok(cli, *args):
    result = cli(*args)
    assert result.exit_code == 0, f"exit code {result.exit_code}, {result.exception!r}\n{plain(result.output)}"
    return result


@pytest.mark.parametrize("name", NAMES)
def test_train_eval_predict_export(name, cli, tmp_path, fresh_cache, no_run_figures):
    from PIL import Image

    root, out = tmp_path / "data", tmp_path / "run"
    _, test, classes = write(name, root)
    size = ("--image-size", 16) if name == "imagenet" else ()  # its images differ in size, as the real ones do
    run_ok(cli, "train", "--dataset", name, "--data-dir", root, "--no-download", "--epochs", 1, "--batch-size", 16,
           "--lr", 0.01, "--device", "cpu", "--quiet", "--out", out, *size)
    shown = json.loads(run_ok(cli, "eval", out, "--json", "--per-class", "--device", "cpu").stdout)
    assert shown["classes"] == classes and shown["test"]["count"] == len(test.labels)
    image = tmp_path / "one.png"
    Image.fromarray(test.images[0].transpose(1, 2, 0)).save(image)
    predicted = json.loads(run_ok(cli, "predict", out, image, "--json", "--device", "cpu", "-k", 3).stdout)
    assert predicted["classes"] == classes and predicted["predictions"][0]["class"] in classes
    run_ok(cli, "export-templates", out, "--out", tmp_path / "templates", "--size", 32)
    assert len(list((tmp_path / "templates").glob("*.png"))) >= len(classes)


def test_cifar100_superclass_accuracy_by_hand(cli, tmp_path, fresh_cache, no_run_figures):
    """eval's superclass top-1, against the count by hand of the test images whose predicted fine class has the
    same superclass as the true one, in the mapping the fixture wrote (not imgcls's table). The fixture's images
    are mostly their superclass's pattern, so fine classes are confused within a superclass: the two differ."""
    root, out = tmp_path / "data", tmp_path / "run"
    write("cifar100", root)
    run_ok(cli, "train", "--dataset", "cifar100", "--data-dir", root, "--epochs", 2, "--batch-size", 10, "--lr", 0.01,
           "--device", "cpu", "--quiet", "--out", out)
    shown = json.loads(run_ok(cli, "eval", out, "--json", "--per-class", "--device", "cpu").stdout)
    confusion = np.asarray(shown["test_detail"]["confusion"])  # [true fine][predicted fine]
    coarse = np.asarray(fx.CIFAR100_FINE_TO_COARSE)
    same = coarse[:, None] == coarse[None, :]
    by_hand = confusion[same].sum() / confusion.sum()
    assert shown["test"]["superclass_top1"] == pytest.approx(by_hand)
    assert by_hand > shown["test"]["top1"]
    table = plain(run_ok(cli, "eval", out, "--device", "cpu").stdout)
    assert "test superclass" in table and f"{by_hand:.2%}" in table

    # each superclass's own top-1, by hand from the same matrix, with the 20 names, in eval, report and the page
    members = np.eye(20, dtype=np.int64)[coarse]  # (100 fine, 20 coarse)
    by_superclass = members.T @ confusion @ members
    expected = by_superclass.diagonal() / np.maximum(by_superclass.sum(1), 1)
    assert shown["superclasses"] == list(fx.CIFAR100_COARSE)
    assert shown["test_detail"]["per_superclass"] == pytest.approx(expected.tolist())
    cells = lambda text: " ".join(plain(text).replace("│", " ").split())  # noqa: E731 -- a table's rows as words
    per_class_table = cells(run_ok(cli, "eval", out, "--per-class", "--device", "cpu").stdout)
    report = cells(run_ok(cli, "report", out, "--no-figures").stdout)
    for name, value in zip(fx.CIFAR100_COARSE, expected):
        for text in (per_class_table, report):
            assert f"{name} {value:.2%}" in text, name
    reported = json.loads(run_ok(cli, "report", out, "--no-figures", "--json").stdout)["per_superclass"]
    assert list(reported) == list(fx.CIFAR100_COARSE)
    run_ok(cli, "report", out, "--no-figures", "--html")
    page = (out / "report.html").read_text()
    assert 'id="per-superclass"' in page and all(name in page for name in fx.CIFAR100_COARSE)


def test_the_embedded_sample_size_is_the_real_one():
    from imgcls.data.readers import _list_zip
    from imgcls.data.registry import SPECS

    spec = SPECS["cifar10-sample"]
    assert (len(_list_zip(spec.embedded, "train").names), len(_list_zip(spec.embedded, "test").names)) == spec.sizes


def test_dataset_facts_come_from_the_spec_not_its_name(tmp_path):
    """What readers and `imgcls datasets` do with a dataset follows its spec's fields: the same facts under
    another name are treated alike."""
    import dataclasses

    from imgcls.data.catalog import _image_folder, presence
    from imgcls.data.readers import list_images, source_kind
    from imgcls.data.registry import SPECS

    sample = dataclasses.replace(SPECS["cifar10-sample"], name="renamed-sample")
    assert source_kind(sample, tmp_path) == "embedded"
    assert len(list_images(sample, tmp_path, "test").names) == sample.sizes[1]
    for split in ("train", "val"):
        for name in ("n01", "n02", "n03"):
            (tmp_path / split / name).mkdir(parents=True)
    three = dataclasses.replace(SPECS["imagenet"], name="three-class-imagenet", class_count=3)
    assert _image_folder(three, tmp_path) == "image folder train/, val/"
    assert _image_folder(dataclasses.replace(three, class_count=4), tmp_path) is None
    assert presence("imagenet", tmp_path) == (None, None)  # 3 class folders are not ImageNet's 1000
    features = tmp_path / "emb.safetensors"
    features.write_bytes(b"")
    assert presence("features", features) == ("features file emb.safetensors", None)


def test_datasets_command_shows_superclass_names(cli):
    result = run_ok(cli, "datasets", "--json")
    cifar100 = {d["name"]: d for d in json.loads(result.stdout)["datasets"]}["cifar100"]
    assert list(cifar100["superclasses"]) == list(fx.CIFAR100_COARSE)
    assert "vehicles_2" in plain(run_ok(cli, "datasets").stdout)


def presence(cli, root, name):
    shown = {d["name"]: d for d in json.loads(run_ok(cli, "datasets", "--data-dir", root, "--json").stdout)["datasets"]}
    return shown[name]["present"], shown[name]["damaged"]


def truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# A damage each cheap check must see: a file cut short (a download stopped half way), or one file gone.
DAMAGES = {
    "cifar100": ("cifar-100-python/train", truncate),
    "svhn": ("test_32x32.mat", truncate),
    "stl10": ("stl10_binary/train_X.bin", lambda path: truncate(path, 0.99)),
    "imagenet": ("ILSVRC2012_devkit_t12.tar.gz", truncate),
}


@pytest.mark.parametrize("name", NAMES)
def test_datasets_command_present_only_when_readable(name, cli, tmp_path, assert_user_error, fresh_cache):
    root = tmp_path / "data"
    write(name, root)
    present, damaged = presence(cli, root, name)
    assert present.startswith("torchvision") and damaged is None
    damaged_file, damage = DAMAGES[name]
    damage(root / damaged_file)
    present, damaged = presence(cli, root, name)
    assert present is None and str(root / damaged_file) in damaged
    assert "damaged" in plain(run_ok(cli, "datasets", "--data-dir", root).stdout)  # the table wraps the rest
    result = cli("train", "--dataset", name, "--data-dir", root, "--no-download", "--epochs", 1, "--device", "cpu",
                 "--out", tmp_path / "run", *(("--image-size", 16) if name == "imagenet" else ()))
    assert_user_error(result, "damaged or incomplete", str(root / damaged_file))


def test_a_missing_file_is_incomplete(cli, tmp_path):
    write("stl10", tmp_path)
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").unlink()  # torchvision's STL10 will not open without it
    present, damaged = presence(cli, tmp_path, "stl10")
    assert present is None and "unlabeled_X.bin (missing" in damaged


def test_mnist_present_after_its_header_check(cli, mnist_root, tmp_path):
    """The real MNIST passes the idx check; a copy with its labels cut short does not."""
    import shutil

    assert presence(cli, mnist_root, "mnist") == ("torchvision MNIST/", None)
    shutil.copytree(mnist_root / "MNIST", tmp_path / "MNIST")
    truncate(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", 0.9)
    present, damaged = presence(cli, tmp_path, "mnist")
    assert present is None and "t10k-labels-idx1-ubyte" in damaged


@pytest.mark.parametrize("name, files", [
    ("cifar100", ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta")),
    ("svhn", ("train_32x32.mat", "test_32x32.mat")),
    ("stl10", ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin")),
    ("imagenet", ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")),
])
def test_not_found_names_the_files(name, files, cli, tmp_path, assert_user_error):
    result = cli("train", "--dataset", name, "--data-dir", tmp_path, "--no-download", "--epochs", 1, "--device",
                 "cpu", "--out", tmp_path / "run")
    line = assert_user_error(result, f"{name} not found", str(tmp_path), *files)
    assert "<files>" not in line


@pytest.mark.parametrize("name", ("svhn", "imagenet"))
def test_without_scipy_one_line_says_so(name, cli, tmp_path, monkeypatch, assert_user_error, fresh_cache):
    write(name, tmp_path)
    for module in [m for m in sys.modules if m == "scipy" or m.startswith("scipy.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "scipy", None)  # import scipy.io now fails, as where it is not installed
    result = cli("train", "--dataset", name, "--data-dir", tmp_path, "--no-download", "--epochs", 1, "--device",
                 "cpu", "--out", tmp_path / "run", "--image-size", 16)
    assert_user_error(result, name, "scipy", "pip install scipy")
    assert "needs scipy" in presence(cli, tmp_path, name)[0]


def test_class_names_in_the_files_must_be_the_datasets(tmp_path, assert_user_error, cli, fresh_cache):
    """A class_names.txt in another order would silently relabel every image: refused."""
    write("stl10", tmp_path)
    names = tmp_path / "stl10_binary" / "class_names.txt"
    names.write_text("".join(f"{name}\n" for name in reversed(fx.STL10_NAMES)))
    result = cli("train", "--dataset", "stl10", "--data-dir", tmp_path, "--epochs", 1, "--device", "cpu", "--out",
                 tmp_path / "run")
    assert_user_error(result, "does not hold stl10", "truck, ship, monkey")


def write_idx(root, folder: str, train: int = 60, test: int = 20, first_label: int = 0):
    """ROOT/FOLDER/raw/ as torchvision's MNIST reads it: valid idx files of `train` and `test` random images,
    labels i % 10 except the first training label, `first_label`."""
    import struct

    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("t10k", test)):
        labels = np.arange(count, dtype=np.uint8) % 10
        if split == "train":
            labels[0] = first_label
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">4B3I", 0, 0, 8, 3, count, 28, 28)
                                                         + images.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">4BI", 0, 0, 8, 1, count) + labels.tobytes())
    return raw


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_label_outside_0_to_9_is_named_not_a_traceback(name, folder, cli, tmp_path, assert_user_error,
                                                            fresh_cache):
    raw = write_idx(tmp_path / "data", folder, first_label=200)
    present, damaged = presence(cli, tmp_path / "data", name)
    assert present is None and "train-labels-idx1-ubyte" in damaged and "label 200 at item 0" in damaged
    result = cli("train", "--dataset", name, "--data-dir", tmp_path / "data", "--epochs", 1, "--lr", 0.01,
                 "--device", "cpu", "--out", tmp_path / "run")
    assert_user_error(result, str(raw / "train-labels-idx1-ubyte"), "label 200 at item 0", "0..9")


def test_stl10_label_outside_1_to_10_names_the_value(cli, tmp_path, assert_user_error, fresh_cache):
    write("stl10", tmp_path)
    labels = tmp_path / "stl10_binary" / "test_y.bin"
    values = bytearray(labels.read_bytes())
    values[3] = 55
    labels.write_bytes(bytes(values))
    result = cli("train", "--dataset", "stl10", "--data-dir", tmp_path, "--epochs", 1, "--device", "cpu", "--out",
                 tmp_path / "run")
    assert_user_error(result, str(labels), "label 55 at item 3", "1..10")


def _cifar100_label(root, value):
    import pickle

    path = root / "cifar-100-python" / "train"
    entry = pickle.loads(path.read_bytes())
    entry["fine_labels"][4] = value
    path.write_bytes(pickle.dumps(entry, protocol=2))


def _svhn_label(root, value):
    from scipy.io import loadmat, savemat

    path = root / "test_32x32.mat"
    mat = loadmat(str(path))
    mat["y"][4, 0] = value
    savemat(str(path), {"X": mat["X"], "y": mat["y"]}, do_compression=True)


@pytest.mark.parametrize("name, damage, value, split", [("cifar100", _cifar100_label, 100, "train"),
                                                        ("cifar100", _cifar100_label, -1, "train"),
                                                        ("svhn", _svhn_label, 11, "test")])
def test_label_outside_the_classes_is_named_in_every_format(name, damage, value, split, cli, tmp_path,
                                                            assert_user_error, fresh_cache):
    write(name, tmp_path)
    damage(tmp_path, value)
    result = cli("train", "--dataset", name, "--data-dir", tmp_path, "--epochs", 1, "--device", "cpu", "--out",
                 tmp_path / "run")
    assert_user_error(result, f"{split} label {value} (row 4)", str(tmp_path), "not a class index")
    assert not (tmp_path / "run").exists()


def test_imagenet_class_names_that_are_not_text_are_refused_before_training(cli, tmp_path, assert_user_error,
                                                                           fresh_cache):
    """torchvision's own ImageNet test fixture writes meta.bin with integer class ids: refused, naming meta.bin."""
    import torch

    write("imagenet", tmp_path)
    wnids = sorted(wnid for _, wnid, _ in fx.IMAGENET_LEAVES)
    torch.save(({wnid: [i] for i, wnid in enumerate(wnids)}, []), tmp_path / "meta.bin")
    result = cli("train", "--dataset", "imagenet", "--data-dir", tmp_path, "--epochs", 1, "--device", "cpu",
                 "--image-size", 16, "--out", tmp_path / "run")
    assert_user_error(result, str(tmp_path / "meta.bin"), "class 0", "named 0, not text", "delete")
    assert not (tmp_path / "run").exists()


def test_a_single_class_is_refused(cli, tmp_path, image_folder, assert_user_error, fresh_cache):
    root = image_folder(tmp_path / "data", {"train": {"only": [(8, 8)] * 6}, "test": {"only": [(8, 8)] * 2}})
    result = cli("train", "--dataset", "imagefolder", "--data-dir", root, "--epochs", 1, "--device", "cpu", "--out",
                 tmp_path / "run")
    assert_user_error(result, str(root), "only the class 'only'", "needs at least 2 classes")


def test_training_labels_all_of_one_class_are_refused(cli, tmp_path, assert_user_error, fresh_cache):
    """MNIST names 10 classes, but files whose every label is 0 hold one: refused, not trained to 100%."""
    raw = write_idx(tmp_path / "data", "MNIST")
    for split, count in (("train", 60), ("t10k", 20)):
        path = raw / f"{split}-labels-idx1-ubyte"
        path.write_bytes(path.read_bytes()[:8] + bytes(count))
    result = cli("train", "--dataset", "mnist", "--data-dir", tmp_path / "data", "--epochs", 1, "--device", "cpu",
                 "--out", tmp_path / "run")
    assert_user_error(result, str(tmp_path / "data"), "all of one class ('0')", "at least 2 classes")


def _cifar100_meta_names(root, names):
    import pickle

    path = root / "cifar-100-python" / "meta"
    meta = pickle.loads(path.read_bytes())
    meta["fine_label_names"] = names
    path.write_bytes(pickle.dumps(meta, protocol=2))


def _cifar100_entry(root, key, change):
    import pickle

    path = root / "cifar-100-python" / "train"
    entry = pickle.loads(path.read_bytes())
    entry[key] = change(entry[key])
    path.write_bytes(pickle.dumps(entry, protocol=2))


@pytest.mark.parametrize("damage, words", [
    (lambda root: _cifar100_entry(root, "fine_labels", lambda labels: [2.5, *labels[1:]]), ("labels are float64",)),
    (lambda root: _cifar100_entry(root, "fine_labels", lambda labels: ["cat", *labels[1:]]), ("labels are <U",)),
    (lambda root: _cifar100_entry(root, "fine_labels", lambda labels: [None, *labels[1:]]),
     ("labels are a mix of", "NoneType")),
    (lambda root: _cifar100_entry(root, "fine_labels", lambda labels: [*labels, 0]), ("200 images have 201 labels",)),
    (lambda root: _cifar100_entry(root, "data", lambda data: data.astype(np.float32)), ("images are float32",)),
    (lambda root: _cifar100_meta_names(root, list(range(100))), ("class 0", "named 0, not text")),
], ids=["label-float", "label-text", "label-none", "labels-long", "data-float", "names-ints"])
def test_arrays_torchvision_reads_are_checked_before_use(damage, words, cli, tmp_path, assert_user_error,
                                                         fresh_cache):
    write("cifar100", tmp_path)
    damage(tmp_path)
    result = cli("train", "--dataset", "cifar100", "--data-dir", tmp_path, "--epochs", 1, "--device", "cpu", "--out",
                 tmp_path / "run")
    assert_user_error(result, "cifar100", str(tmp_path), *words)
