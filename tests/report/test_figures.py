"""Figures and `imgcls report`: train writes curves.png, confusion.png and templates.png beside its metrics, each
a valid PNG of the size the figure code sets; report prints the run's summary and redraws them."""

import json
import math
import shutil

import pytest
from PIL import Image

from conftest import TINY_CIFAR_EPOCHS, TINY_TEST_PER_CLASS, plain
from imgcls.data.registry import CIFAR10_CLASSES
from imgcls.report.figures import DPI, confusion_figsize, confusion_heatmap, learning_curves, write_run_figures
from imgcls.runs.rundir import CONFUSION, CURVES, FIGURE_FILES, TEMPLATES
from imgcls.report.runreport import confused_pairs
from imgcls.report.templates import GRID_DPI, grid_figsize, save_grid


def pixels(figsize, dpi=DPI):
    return round(figsize[0] * dpi), round(figsize[1] * dpi)


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # decodes every pixel: a truncated file fails here
        return image.size


@pytest.fixture
def run(tiny_cifar_run):
    """The shared tiny CIFAR-10 run (conftest): these tests read it and change only copies."""
    return tiny_cifar_run


def test_train_writes_the_three_figures_at_their_sizes(run):
    out, result = run
    assert png_size(out / CURVES) == pixels((14.0, 4.0))  # loss, top-1 and the learning rate
    assert png_size(out / CONFUSION) == pixels(confusion_figsize(10)) == (1050, 900)
    assert png_size(out / TEMPLATES) == pixels(grid_figsize(10, "x"), GRID_DPI) == (1040, 945)  # 4 x 3 cells
    assert "figures: curves.png, confusion.png, templates.png" in plain(result.output)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_quiet_train_still_writes_figures_and_prints_only_json(cli, tiny_cifar_session, tmp_path):
    out = tmp_path / "run"
    result = cli("train", "--dataset", "cifar10", "--data-dir", tiny_cifar_session, "--epochs", 1, "--device", "cpu",
                 "--out", out, "--quiet")
    assert result.exit_code == 0, plain(result.output)
    assert all((out / name).is_file() for name in FIGURE_FILES)
    assert not (out / "tensorboard").exists()  # only with --tensorboard
    assert json.loads(result.stdout)["run_dir"] == str(out)
    assert plain(result.stderr).strip() == ""


def test_figures_are_drawn_from_the_run_files(run, tmp_path):
    """Different data give different pictures: the figures are not a fixed image."""
    out, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["test_detail"]["confusion"] = [[10 if i == j else 0 for j in range(10)] for i in range(10)]
    (copy / "metrics.json").write_text(json.dumps(metrics))
    write_run_figures(copy)
    assert (copy / CONFUSION).read_bytes() != (out / CONFUSION).read_bytes()


@pytest.mark.parametrize("count, shape", [(1, (3, 32, 32)), (10, (1, 28, 28)), (13, (3, 6, 9)), (100, (3, 8, 8))])
def test_templates_grid_size(tmp_path, count, shape):
    import torch

    images = torch.rand((count, *shape), generator=torch.Generator().manual_seed(0))
    save_grid(images, [f"class {i}" for i in range(count)], tmp_path / "grid.png")
    assert png_size(tmp_path / "grid.png") == pixels(grid_figsize(count), GRID_DPI)
    columns = math.ceil(math.sqrt(count))  # about sqrt(K) a row, one title line
    assert grid_figsize(count) == pytest.approx((2.6 * columns, 3.0 * -(-count // columns) + 0.45))


@pytest.mark.parametrize("classes", [2, 10, 37, 160])
def test_confusion_heatmap_size_grows_with_the_classes(tmp_path, classes):
    names = [f"class {i}" for i in range(classes)]
    confusion = [[(i * 7 + j * 3) % 5 for j in range(classes)] for i in range(classes)]
    path = confusion_heatmap(confusion, names, tmp_path / "c.png", "title")
    assert png_size(path) == pixels(confusion_figsize(classes))
    assert confusion_figsize(2)[1] <= confusion_figsize(37)[1] <= confusion_figsize(100)[1]


def test_confusion_heatmap_refuses_a_matrix_of_another_size(tmp_path):
    with pytest.raises(ValueError, match="does not fit"):
        confusion_heatmap([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("count", [1, 2, 45])
def test_learning_curves_for_any_number_of_epochs(tmp_path, count):
    epochs = [{"epoch": e, "train_loss": 2.0 / e, "train_top1": 0.1 * e / count, "val_loss": 2.1 / e,
               "val_top1": 0.09 * e / count} for e in range(1, count + 1)]
    assert png_size(learning_curves(epochs, tmp_path / "c.png", best_epoch=count)) == pixels((10.0, 4.0))


@pytest.mark.parametrize("lrs", [[(0.1, 0.1), (0.1, 0.1)], [(0.001, 0.1), (0.1, 0.05), (0.05, 0.0001)]])
def test_learning_curves_have_an_lr_panel_when_the_records_have_lr(tmp_path, lrs):
    epochs = [{"epoch": e, "train_loss": 1.0, "train_top1": 0.5, "val_loss": 1.1, "val_top1": 0.4, "lr": first,
               "lr_last": last} for e, (first, last) in enumerate(lrs, 1)]
    assert png_size(learning_curves(epochs, tmp_path / "c.png", best_epoch=1)) == pixels((14.0, 4.0))


def test_confused_pairs_on_a_known_matrix():
    confusion = [[5, 3, 0],
                 [1, 6, 1],
                 [4, 0, 2]]
    pairs = confused_pairs(confusion, ["a", "b", "c"], 3)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("c", "a", 4), ("a", "b", 3), ("b", "a", 1)]
    assert pairs[0]["share"] == pytest.approx(4 / 6)
    assert confused_pairs([[3, 0], [0, 2]], ["a", "b"]) == []


# --- imgcls report ------------------------------------------------------------------------------

def test_report_prints_the_summary_and_redraws_the_figures(cli, run, tmp_path):
    out, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for name in FIGURE_FILES:
        (copy / name).unlink()
    result = cli("report", copy)
    assert result.exit_code == 0, plain(result.output)
    assert all((copy / name).is_file() for name in FIGURE_FILES)
    assert png_size(copy / CONFUSION) == pixels(confusion_figsize(10))
    text = plain(result.stdout)
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"best epoch {metrics['best_epoch']}" in text
    assert f"{metrics['test']['top1']:.2%}" in text and f"{metrics['val']['top1']:.2%}" in text
    assert "optim.lr" in text and "0.005" in text and "train.epochs" in text  # the config
    assert "per-class test top-1" in text and "most confused class pairs" in text
    for name in CIFAR10_CLASSES:
        assert name in text
    assert str(copy / CURVES) in text.replace("\n", "")


def test_report_json_matches_metrics(cli, run):
    out, _ = run
    result = cli("report", out, "--json", "--no-figures", "--pairs", 3)
    assert result.exit_code == 0, plain(result.output)
    report = json.loads(result.stdout)
    metrics = json.loads((out / "metrics.json").read_text())
    assert report["best_epoch"] == metrics["best_epoch"] and report["test"] == metrics["test"]
    assert report["per_class"] == dict(zip(CIFAR10_CLASSES, metrics["test_detail"]["per_class"]))
    assert report["confused_pairs"] == confused_pairs(metrics["test_detail"]["confusion"], CIFAR10_CLASSES, 3)
    assert len(report["confused_pairs"]) == 3 and report["figures"] == []
    assert report["epochs"] == TINY_CIFAR_EPOCHS and report["config"]["train"]["epochs"] == TINY_CIFAR_EPOCHS
    worst = report["confused_pairs"][0]
    assert worst["count"] == max(metrics["test_detail"]["confusion"][i][j] for i in range(10) for j in range(10)
                                 if i != j)
    assert sum(sum(row) for row in metrics["test_detail"]["confusion"]) == 10 * TINY_TEST_PER_CLASS


def test_report_of_an_unfinished_run(cli, run, tmp_path):
    """An interrupted run has epochs and checkpoints but no metrics.json: curves and templates, no confusion."""
    out, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for name in ("metrics.json",) + FIGURE_FILES:
        (copy / name).unlink()
    result = cli("report", copy)
    assert result.exit_code == 0, plain(result.output)
    assert "did not finish" in plain(result.stdout)
    assert (copy / CURVES).is_file() and (copy / TEMPLATES).is_file() and not (copy / CONFUSION).exists()


def test_report_user_errors(cli, run, tmp_path, assert_user_error):
    out, _ = run
    assert_user_error(cli("report", tmp_path / "nowhere"), "does not exist", "nowhere")
    assert_user_error(cli("report", tmp_path), "not a run folder")
    assert_user_error(cli("report", out, "--pairs", -1), "--pairs")
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    (damaged / "metrics.json").write_text("{not json")
    assert_user_error(cli("report", damaged), "metrics.json", "not valid JSON")


def _drop_val(m):
    m["val"] = {}


def _strings_in_confusion(m):
    m["test_detail"]["confusion"] = [[str(v) for v in row] for row in m["test_detail"]["confusion"]]


def _detail_as_list(m):
    m["test_detail"] = [1, 2]


def _short_per_class(m):
    m["test_detail"]["per_class"] = m["test_detail"]["per_class"][:3]


def _null_per_class(m):
    m["test_detail"]["per_class"][0] = None


def _classes_as_text(m):
    m["classes"] = "airplane"


def _best_epoch_as_text(m):
    m["best_epoch"] = "2"


def _best_epoch_huge(m):
    m["best_epoch"] = 10 ** 400


def _count_in_confusion_huge(m):
    m["test_detail"]["confusion"][0][0] = 10 ** 30


def _top1_as_list(m):
    m["test"]["top1"] = [0.5]


def _ragged_confusion(m):
    m["test_detail"]["confusion"][2] = [1]


@pytest.mark.parametrize("damage, words", [
    (_drop_val, ["metrics.json", "lacks 'val.loss'"]),
    (_strings_in_confusion, ["metrics.json", "'test_detail.confusion.0.0' is text"]),
    (_detail_as_list, ["metrics.json", "'test_detail' is a list"]),
    (_short_per_class, ["metrics.json", "'per_class'", "10 numbers"]),
    (_null_per_class, ["metrics.json", "'test_detail.per_class.0' is null"]),
    (_classes_as_text, ["metrics.json", "'classes' is text"]),
    (_best_epoch_as_text, ["metrics.json", "'best_epoch' is text"]),
    (_top1_as_list, ["metrics.json", "'test.top1' is a list"]),
    (_best_epoch_huge, ["metrics.json", "'best_epoch'"]),
    (_count_in_confusion_huge, ["metrics.json", "'test_detail.confusion.0.0'"]),
    (_ragged_confusion, ["metrics.json", "10x10"]),
])
def test_report_names_what_is_wrong_in_a_metrics_file_of_the_wrong_shape(cli, run, tmp_path, damage, words,
                                                                         assert_user_error):
    out, _ = run
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    metrics = json.loads((damaged / "metrics.json").read_text())
    damage(metrics)
    (damaged / "metrics.json").write_text(json.dumps(metrics))
    assert_user_error(cli("report", damaged), *words, "damaged")


@pytest.mark.parametrize("line, words", [
    ('{"epoch": 1}', ["epochs.jsonl", "line 1 lacks 'train_loss'"]),
    ("[1, 2]", ["epochs.jsonl", "line 1 is a list"]),
    ('{"epoch": "one", "train_loss": 1, "train_top1": 0, "val_loss": 1, "val_top1": 0, "val_top5": 0, "lr": 0.1, '
     '"seconds": 1}', ["epochs.jsonl", "'epoch' is text"]),
    ('{"epoch": 1e400, "train_loss": 1, "train_top1": 0, "val_loss": 1, "val_top1": 0, "val_top5": 0, "lr": 0.1, '
     '"seconds": 1}', ["epochs.jsonl", "'epoch'"]),
    ('{"epoch": ' + "9" * 400 + ', "train_loss": 1, "train_top1": 0, "val_loss": 1, "val_top1": 0, "val_top5": 0, '
     '"lr": 0.1, "seconds": 1}', ["epochs.jsonl", "'epoch'"]),
    ('{"epoch": 1, "train_loss": null, "train_top1": 0, "val_loss": 1, "val_top1": 0, "val_top5": 0, "lr": 0.1, '
     '"seconds": 1}', ["epochs.jsonl", "'train_loss' is null"]),
])
def test_report_names_what_is_wrong_in_an_epochs_file_of_the_wrong_shape(cli, run, tmp_path, line, words,
                                                                         assert_user_error):
    out, _ = run
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    (damaged / "epochs.jsonl").write_text(line + "\n")
    assert_user_error(cli("report", damaged), *words, "damaged")


@pytest.mark.parametrize("grid", [{"lr": ["0.01", "0.1"], "weight_decay": ["0.0", "0.1"]}, {"lr": ["0.01", "0.1", "10"]},
                                  {"lr": ["0.01", "10"], "weight_decay": ["0.0", "0.1", "0.2"], "epochs": ["2"]}])
def test_sweep_figure_is_large_and_marks_a_diverged_point(tmp_path, monkeypatch, grid):
    """A diverged point is drawn as diverged (its val top-1, none or that of its last good epoch, is not a score)."""
    import itertools

    from imgcls.report import figures

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda figure, path: (drawn.append(figure), path.write_bytes(b"")))
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    records = [{"point": i, "options": options, "val_top1": 0.055 if options["lr"] in ("0.1", "10") and i % 2 else 0.4,
                "diverged": options["lr"] == "10" or (options["lr"] == "0.1" and i % 2 == 1)}
               for i, options in enumerate(points)]
    if len(points) == 3:  # the line: one diverged point, out of three
        records[1]["diverged"] = False
    figures.sweep_figure(records[:4] if len(grid) == 3 else records, grid, tmp_path / "sweep.png", best=0)
    figure, = drawn
    width, height = figure.get_size_inches() * figures.DPI
    assert width >= 800 and height >= 500
    texts = [t.get_text() for axis in figure.axes for t in axis.texts]
    labels = [line.get_label() for axis in figure.axes for line in axis.lines]
    assert "diverged" in " ".join(texts + labels)
    assert "5.5" not in texts and "0.0" not in texts
