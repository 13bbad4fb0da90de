"""`imgcls predict`: images prepared exactly as training prepared them, so predictions on a run's own test images
reproduce the confusion matrix of its metrics.json and the top-1 of `imgcls eval`, image for image."""

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from conftest import TINY_TEST_PER_CLASS, plain
from imgcls.runs.checkpoint import Checkpoint
from imgcls.data.registry import CIFAR10_CLASSES
from imgcls.runs.predict import list_images, prepare_image

GREY_CLASSES = ("dark", "light", "striped")


@pytest.fixture
def cifar_run(tiny_cifar_run):
    """The shared tiny CIFAR-10 run folder (conftest); predict only reads it."""
    return tiny_cifar_run[0]


def grey_image(label: int, h: int, w: int, generator) -> torch.Tensor:
    noise = torch.randint(0, 60, (1, h, w), generator=generator)
    if label == 0:
        image = noise + 20
    elif label == 1:
        image = noise + 170
    else:
        image = noise + 20 + 170 * (torch.arange(w) % 2).view(1, 1, w)
    return image.clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def grey_run(cli, tmp_path_factory):
    """Grey PNGs of mixed sizes, trained with --image-size 6: predict must resize and keep one channel."""
    root = tmp_path_factory.mktemp("grey")
    generator = torch.Generator().manual_seed(0)
    sizes = [(8, 8), (9, 7), (6, 6), (12, 12)]
    for split, count in (("train", 12), ("test", 6)):
        for label, name in enumerate(GREY_CLASSES):
            folder = root / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                write_png(grey_image(label, *sizes[i % len(sizes)], generator), str(folder / f"{i:02d}.png"))
    out = root / "run"
    result = cli("train", "--dataset", "imagefolder", "--data-dir", root / "data", "--image-size", 6, "--epochs", 2,
                 "--batch-size", 8, "--device", "cpu", "--out", out, "--quiet")
    assert result.exit_code == 0, plain(result.output)
    return out, root / "data"


def predict_json(cli, *args):
    result = cli("predict", *args, "--device", "cpu", "--json")
    assert result.exit_code == 0, plain(result.output)
    return json.loads(result.stdout)


def confusion_from(predictions, classes):
    """Rows: the folder each image is in (its true class); columns: the predicted class."""
    confusion = [[0] * len(classes) for _ in classes]
    for p in predictions:
        confusion[classes.index(Path(p["image"]).parent.name)][classes.index(p["class"])] += 1
    return confusion


@pytest.mark.parametrize("which", ["cifar", "grey"])
def test_predict_agrees_with_eval_image_for_image(cli, which, cifar_run, grey_run, tiny_cifar_session):
    out, test_dir = (cifar_run, tiny_cifar_session / "test") if which == "cifar" else (grey_run[0], grey_run[1] / "test")
    metrics = json.loads((out / "metrics.json").read_text())
    classes = metrics["classes"]
    got = predict_json(cli, out / "best.safetensors", test_dir)
    assert len(got["predictions"]) == metrics["test"]["count"]
    # the whole confusion matrix training measured on the test split, rebuilt from predict's answers
    assert confusion_from(got["predictions"], classes) == metrics["test_detail"]["confusion"]
    correct = sum(Path(p["image"]).parent.name == p["class"] for p in got["predictions"])
    evaluated = cli("eval", out, "--split", "test", "--device", "cpu", "--json")
    assert evaluated.exit_code == 0, plain(evaluated.output)
    assert correct / len(got["predictions"]) == json.loads(evaluated.stdout)["test"]["top1"]


@pytest.mark.parametrize("which", ["cifar", "grey"])
def test_probabilities_are_those_of_the_training_pipeline(cli, which, cifar_run, grey_run, tiny_cifar_session):
    """The softmax of the scores the model gives the test split as training and eval prepared it (decoded
    cache, Batches' normalization), image for image, to float precision."""
    from imgcls.runs import checkpoint as ckpt
    from imgcls.data.batches import Batches
    from imgcls.data.prepare import prepare
    from imgcls.data.types import Normalization
    from imgcls.runs.evaluate import data_config_of

    out, test_dir = (cifar_run, tiny_cifar_session / "test") if which == "cifar" else (grey_run[0], grey_run[1] / "test")
    loaded = ckpt.load(out / "best.safetensors")
    data = prepare(data_config_of(loaded, None), loaded.meta["seed"])
    batches = Batches(data.test, Normalization(loaded.mean, loaded.std), len(data.test), torch.device("cpu"),
                      shuffle=False)
    with torch.inference_mode():
        scores = torch.cat([loaded.model()(batch[0]).float() for batch in batches.epoch()])
    expected = torch.softmax(scores.double(), dim=1)
    got = predict_json(cli, out, test_dir, "--top-k", len(loaded.classes))["predictions"]
    assert [loaded.classes.index(Path(p["image"]).parent.name) for p in got] == data.test.labels.tolist()
    for row, p in enumerate(got):
        probabilities = {t["class"]: t["probability"] for t in p["top"]}
        for index, name in enumerate(loaded.classes):
            assert probabilities[name] == pytest.approx(float(expected[row, index]), abs=1e-7)


def test_json_holds_top_k_with_probabilities(cli, cifar_run, tiny_cifar_session):
    images = sorted((tiny_cifar_session / "test" / "cat").glob("*.jpg"))[:3]
    got = predict_json(cli, cifar_run, *images, "--top-k", 3)
    assert got["classes"] == list(CIFAR10_CLASSES)
    assert [p["image"] for p in got["predictions"]] == [str(p) for p in images]
    for p in got["predictions"]:
        probabilities = [t["probability"] for t in p["top"]]
        assert len(p["top"]) == 3 and len({t["class"] for t in p["top"]}) == 3
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) < 1
        assert p["class"] == p["top"][0]["class"] and p["probability"] == probabilities[0]
    every = predict_json(cli, cifar_run, images[0], "--top-k", 50)["predictions"][0]["top"]  # k is capped at K
    assert sorted(t["class"] for t in every) == sorted(CIFAR10_CLASSES)
    assert math.isclose(sum(t["probability"] for t in every), 1.0, rel_tol=1e-9)


def test_csv_and_table(cli, cifar_run, tiny_cifar_session, tmp_path):
    folder = tiny_cifar_session / "test" / "ship"
    target = tmp_path / "predictions.csv"
    result = cli("predict", cifar_run, folder, "--top-k", 2, "--csv", target, "--device", "cpu")
    assert result.exit_code == 0, plain(result.output)
    rows = list(csv.DictReader(target.open()))
    assert len(rows) == TINY_TEST_PER_CLASS
    assert list(rows[0]) == ["image", "class_1", "probability_1", "class_2", "probability_2"]
    got = predict_json(cli, cifar_run, folder, "--top-k", 2)["predictions"]
    for row, p in zip(rows, got):
        assert row["image"] == p["image"] and row["class_1"] == p["class"] and row["class_2"] == p["top"][1]["class"]
        assert float(row["probability_1"]) == pytest.approx(p["probability"], rel=1e-5)
    text = plain(result.stdout)
    assert "#1" in text and "#2" in text and "#3" not in text
    assert f"{got[0]['class']} {got[0]['probability']:.1%}" in text
    assert f"wrote {TINY_TEST_PER_CLASS} rows to" in plain(result.stderr)


def test_a_folder_is_searched_recursively_and_sorted(tiny_cifar_session):
    found = list_images([tiny_cifar_session / "test"])
    assert len(found) == 10 * TINY_TEST_PER_CLASS and found == sorted(found)


# --- preparing one image as training did ----------------------------------------------------------

def checkpoint(shape, image_size=None):
    k, features = 2, shape[0] * shape[1] * shape[2]
    return Checkpoint(torch.zeros(k, features), torch.zeros(k), torch.zeros(shape), torch.ones(shape),
                      {"dataset": "imagefolder", "classes": ["a", "b"], "input_shape": list(shape),
                       "config": {"data": {"image_size": image_size}}})


def png_bytes(image, tmp_path):
    path = tmp_path / "image.png"
    write_png(image, str(path))
    return path.read_bytes()


def test_a_grey_image_for_a_grey_model_keeps_its_pixels(tmp_path):
    image = torch.randint(0, 256, (1, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    prepared, resized = prepare_image(png_bytes(image, tmp_path), checkpoint((1, 6, 6)))
    assert torch.equal(prepared, image) and not resized


def test_a_colour_image_for_a_grey_model_becomes_its_luminance(tmp_path):
    from torchvision.transforms.v2.functional import rgb_to_grayscale

    image = torch.randint(0, 256, (3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    prepared, _ = prepare_image(png_bytes(image, tmp_path), checkpoint((1, 6, 6)))
    assert prepared.shape == (1, 6, 6) and torch.equal(prepared, rgb_to_grayscale(image))


def test_a_grey_image_for_a_colour_model_gets_three_equal_channels(tmp_path):
    image = torch.randint(0, 256, (1, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    prepared, _ = prepare_image(png_bytes(image, tmp_path), checkpoint((3, 6, 6)))
    assert prepared.shape == (3, 6, 6) and all(torch.equal(prepared[c], image[0]) for c in range(3))


def test_an_image_of_another_size_is_resized_to_the_input(tmp_path):
    from imgcls.data.decode import resize

    image = torch.randint(0, 256, (3, 20, 14), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    prepared, resized = prepare_image(png_bytes(image, tmp_path), checkpoint((3, 8, 8)))
    assert resized and torch.equal(prepared, resize(image, 8))
    wide, _ = prepare_image(png_bytes(image, tmp_path), checkpoint((3, 4, 10)))
    assert wide.shape == (3, 4, 10)
    # a run trained with --image-size resizes exactly as training did, and that is not a surprise to report
    same, resized = prepare_image(png_bytes(image, tmp_path), checkpoint((3, 8, 8), image_size=8))
    assert torch.equal(same, resize(image, 8)) and not resized


# --- user errors --------------------------------------------------------------------------------

def test_unreadable_images(cli, cifar_run, tiny_cifar_session, tmp_path, assert_user_error):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    good = sorted((tiny_cifar_session / "test" / "dog").glob("*.jpg"))[0]
    assert_user_error(cli("predict", cifar_run, good, bad), "cannot read image", "broken.jpg", "--skip-bad-images")
    result = cli("predict", cifar_run, good, bad, "--skip-bad-images", "--json")
    assert result.exit_code == 0, plain(result.output)
    got = json.loads(result.stdout)
    assert [p["image"] for p in got["predictions"]] == [str(good)]
    assert [s["image"] for s in got["skipped"]] == [str(bad)]
    assert_user_error(cli("predict", cifar_run, bad, "--skip-bad-images"), "no readable image")



def test_unreadable_images_get_short_clean_reasons(cli, cifar_run, tiny_cifar_session, tmp_path, assert_user_error):
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list")
    error = assert_user_error(cli("predict", cifar_run, notes), "notes.txt", "not an image file")
    assert "decode_avif" not in error
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(sorted((tiny_cifar_session / "test" / "dog").glob("*.jpg"))[0].read_bytes()[:300])
    error = assert_user_error(cli("predict", cifar_run, truncated), "cut.jpg", "truncated")
    assert ".cpp" not in error and "/__w/" not in error


def test_symlinks_to_nothing_loops_and_fifos_in_a_folder(cli, cifar_run, tiny_cifar_session, tmp_path,
                                                         assert_user_error):
    folder = tmp_path / "images"
    folder.mkdir()
    good = sorted((tiny_cifar_session / "test" / "dog").glob("*.jpg"))[0]
    (folder / "good.jpg").write_bytes(good.read_bytes())
    (folder / "gone.jpg").symlink_to("not-fetched.jpg")
    (folder / "again").symlink_to(".")
    os.mkfifo(folder / "pipe.png")
    assert_user_error(cli("predict", cifar_run, folder), "gone.jpg", "symbolic link", "does not exist")
    assert_user_error(cli("predict", cifar_run, folder / "pipe.png"), "pipe.png", "FIFO")
    result = cli("predict", cifar_run, folder, "--skip-bad-images", "--json")
    assert result.exit_code == 0, plain(result.output)
    got = json.loads(result.stdout)
    assert [p["image"] for p in got["predictions"]] == [str(folder / "good.jpg")]
    assert sorted(Path(s["image"]).name for s in got["skipped"]) == ["gone.jpg", "pipe.png"]

@pytest.mark.parametrize("case, words", [
    ("missing checkpoint", ["does not exist"]),
    ("missing image", ["nope.png", "does not exist"]),
    ("empty folder", ["holds no image files"]),
    ("csv in a missing folder", ["--csv", "does not exist"]),
    ("csv is a folder", ["--csv", "is a folder"]),
    ("top-k 0", ["--top-k", "at least 1"]),
    ("bad device", ["unknown device"]),
])
def test_predict_user_errors(cli, cifar_run, tiny_cifar_session, tmp_path, case, words, assert_user_error):
    image = sorted((tiny_cifar_session / "test" / "dog").glob("*.jpg"))[0]
    (tmp_path / "empty").mkdir()
    args = {
        "missing checkpoint": [tmp_path / "none.safetensors", image],
        "missing image": [cifar_run, tmp_path / "nope.png"],
        "empty folder": [cifar_run, tmp_path / "empty"],
        "csv in a missing folder": [cifar_run, image, "--csv", tmp_path / "no" / "such" / "p.csv"],
        "csv is a folder": [cifar_run, image, "--csv", tmp_path],
        "top-k 0": [cifar_run, image, "--top-k", 0],
        "bad device": [cifar_run, image, "--device", "tpu"],
    }[case]
    assert_user_error(cli("predict", *args), *words)
    assert not (tmp_path / "no").exists()


def test_predict_table_fits_80_columns_and_keeps_names_and_numbers_whole(cli, tiny_cifar_run, tiny_cifar_session,
                                                                          monkeypatch):
    """--top-k 10 at 80 columns: the lowest ranks are left out, said in the caption; every image's name and its
    best classes with their probabilities stay whole."""
    monkeypatch.setenv("COLUMNS", "80")
    out, _ = tiny_cifar_run
    folder = tiny_cifar_session / "test" / "cat"
    result = cli("predict", out, folder, "--top-k", 10, "--device", "cpu")
    assert result.exit_code == 0, plain(result.output)
    lines = plain(result.stdout).splitlines()
    assert max(map(len, lines)) <= 80
    expected = {p["image"]: p for p in json.loads(cli("predict", out, folder, "--top-k", 10, "--device", "cpu",
                                                      "--json").stdout)["predictions"]}
    text = " ".join(" ".join(lines).replace("│", " ").split())
    for image, prediction in expected.items():
        assert Path(image).name in text
        assert f"{prediction['class']} {prediction['probability']:.1%}" in text
    assert "not shown at 80 columns" in text and "#10" in text


def test_class_names_file_renames_the_classes_of_predict_and_eval(cli, tiny_cifar_run, tiny_cifar_session,
                                                                   tmp_path):
    out, _ = tiny_cifar_run
    names = tmp_path / "classes.txt"
    names.write_text("".join(f"kind {i}\n" for i in range(10)))
    folder = tiny_cifar_session / "test" / "cat"
    plain_json = json.loads(cli("predict", out, folder, "--device", "cpu", "--json").stdout)
    renamed = json.loads(cli("predict", out, folder, "--device", "cpu", "--json", "--class-names", names).stdout)
    assert renamed["classes"] == [f"kind {i}" for i in range(10)]
    for before, after in zip(plain_json["predictions"], renamed["predictions"]):
        assert after["class"] == f"kind {CIFAR10_CLASSES.index(before['class'])}"
        assert after["probability"] == before["probability"]
    table = plain(cli("eval", out, "--device", "cpu", "--per-class", "--class-names", names).stdout)
    assert "kind 3" in table and "cat" not in table.split("per-class")[-1]
    import shutil

    copy = shutil.copytree(out, tmp_path / "run")  # report --html rewrites the page: not the shared run's
    assert cli("report", copy, "--no-figures", "--html", "--class-names", names).exit_code == 0
    assert "kind 3" in (copy / "report.html").read_text()
    short = tmp_path / "short.txt"
    short.write_text("only\ntwo\n")
    result = cli("predict", out, folder, "--device", "cpu", "--class-names", short)
    assert result.exit_code == 2 and "error:" in plain(result.stderr)


def test_a_terminal_that_cannot_show_a_class_name_gets_it_escaped(cli, tmp_path, image_folder):
    """PYTHONIOENCODING=ascii and non-ASCII class names: report and predict print, escaping what cannot be shown."""
    from conftest import run_imgcls, train_image_folder

    root = image_folder(tmp_path / "data", {split: {"café": [(8, 8)] * count, "über": [(8, 8)] * count}
                                            for split, count in (("train", 6), ("test", 2))})
    run = tmp_path / "run"
    assert train_image_folder(cli, root, run, "--quiet").exit_code == 0
    ascii_only = {"PYTHONIOENCODING": "ascii"}
    image = sorted((root / "test" / "café").glob("*.png"))[0]
    for args in (("report", run, "--no-figures"), ("predict", run, image)):
        result = run_imgcls(*args, env=ascii_only)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        assert "caf\\xe9" in result.stdout or "\\xfcber" in result.stdout, result.stdout
