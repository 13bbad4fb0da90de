"""`imgcls compare`: runs side by side, read from their folders."""

from __future__ import annotations

import csv
import io
import json
import shutil
import struct

import pytest
import yaml

from conftest import plain
from imgcls.report.compare import differing_keys, labels


def _variant(source, target, lr: float, test_top1: float, epochs: int | None = None):
    """A copy of a finished run that looks as if trained with another --lr (and perhaps fewer epochs)."""
    shutil.copytree(source, target)
    config = yaml.safe_load((target / "config.yaml").read_text())
    config["optim"]["lr"] = lr
    (target / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    metrics = json.loads((target / "metrics.json").read_text())
    metrics["test"]["top1"] = test_top1
    (target / "metrics.json").write_text(json.dumps(metrics))
    if epochs is not None:
        lines = (target / "epochs.jsonl").read_text().splitlines()[:epochs]
        (target / "epochs.jsonl").write_text("".join(line + "\n" for line in lines))
    return target


@pytest.fixture
def two_runs(tiny_cifar_run, tmp_path):
    first = _variant(tiny_cifar_run[0], tmp_path / "lr-small", 0.001, 0.25)
    second = _variant(tiny_cifar_run[0], tmp_path / "lr-large", 0.1, 0.5, epochs=2)
    return first, second


def _png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_compare_json_csv_and_figure(cli, assert_ok, two_runs, tmp_path):
    first, second = two_runs
    figure, table = tmp_path / "curves.png", tmp_path / "runs.csv"
    result = cli("compare", first, second, "--figure", figure, "--csv", table, "--json")
    assert_ok(result)
    shown = json.loads(result.stdout)
    assert shown["differing"] == ["optim.lr"]  # epochs.jsonl differs, the config only in lr
    small, large = shown["runs"]
    assert (small["run"], large["run"]) == ("lr-small", "lr-large")
    assert (small["options"], large["options"]) == ({"optim.lr": 0.001}, {"optim.lr": 0.1})
    assert (small["test_top1"], large["test_top1"]) == (0.25, 0.5)
    assert (small["epochs"], large["epochs"]) == (3, 2)
    metrics = json.loads((first / "metrics.json").read_text())
    assert small["val_top1"] == metrics["val"]["top1"] and small["best_epoch"] == metrics["best_epoch"]
    epochs = [json.loads(line) for line in (first / "epochs.jsonl").read_text().splitlines()]
    assert small["seconds"] == pytest.approx(sum(e["seconds"] for e in epochs))
    assert shown["figure"] == str(figure) and _png_size(figure) == (1000, 400)
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert [(row["run"], row["optim.lr"], row["test_top1"]) for row in rows] == [("lr-small", "0.001", "0.25"),
                                                                                  ("lr-large", "0.1", "0.5")]


def test_compare_table(cli, assert_ok, two_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --figure is compare.png in the current folder
    monkeypatch.setenv("COLUMNS", "120")
    result = cli("compare", *two_runs)
    assert_ok(result)
    assert "2 runs on cifar10" in result.stdout
    for text in ("lr-small", "lr-large", "lr=0.001", "lr=0.1", "25.00%", "50.00%", "of 3", "of 2"):
        assert text in result.stdout
    assert (tmp_path / "compare.png").is_file()


def test_unfinished_run_is_shown_as_such(cli, assert_ok, two_runs):
    first, second = two_runs
    (second / "metrics.json").unlink()
    result = cli("compare", first, second, "--no-figure", "--json")
    assert_ok(result)
    shown = json.loads(result.stdout)
    assert shown["figure"] is None
    unfinished = shown["runs"][1]
    assert not unfinished["finished"] and unfinished["test_top1"] is None and unfinished["best_epoch"] is None
    assert "unfinished (2)" in cli("compare", first, second, "--no-figure").stdout


def test_a_diverged_run_is_shown_as_diverged_not_unfinished(cli, assert_ok, two_runs):
    first, second = two_runs
    (second / "metrics.json").unlink()
    (second / "diverged.txt").write_text("the loss became NaN at epoch 1\n")
    result = cli("compare", first, second, "--no-figure", "--json")
    assert_ok(result)
    assert json.loads(result.stdout)["runs"][1]["diverged"] is True
    table = plain(cli("compare", first, second, "--no-figure").stdout)
    assert "diverged (2)" in table and "unfinished" not in table


@pytest.mark.parametrize("mistake, words", [
    (lambda a, b, tmp: [a], ("at least two", "got 1")),
    (lambda a, b, tmp: [a, str(a) + "/"], ("given twice",)),
    (lambda a, b, tmp: [a, tmp], ("not a run folder",)),
    (lambda a, b, tmp: [a, tmp / "missing"], ("does not exist",)),
    (lambda a, b, tmp: [a, b, "--figure", tmp / "curves.svg"], ("--figure", ".png")),
    (lambda a, b, tmp: [a, b, "--csv", tmp], ("--csv", "is a folder")),
    (lambda a, b, tmp: [a, b, "--csv", tmp / "no" / "runs.csv"], ("--csv", "does not exist")),
])
def test_compare_mistakes(cli, assert_user_error, two_runs, tmp_path, mistake, words):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(cli("compare", *mistake(*two_runs, empty)), *words)


def test_differing_keys_and_labels(tmp_path):
    base = {"data": {"dataset": "cifar10"}, "optim": {"lr": 0.1}, "output": {"out": None}}
    other = {"data": {"dataset": "cifar10", "limit": 100}, "optim": {"lr": 0.1}, "output": {"out": "x"}}
    assert differing_keys([base, other]) == ["data.limit"]  # a key one run lacks differs; output.out never counts
    assert differing_keys([base, base]) == []
    assert labels([tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "c"]) == [
        str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run"), "c"]


def test_compare_at_80_columns_never_splits_a_value(cli, assert_ok, tiny_cifar_run, tmp_path, monkeypatch):
    """Two runs that differ only in weight decay: both values whole, in lines of at most 80 characters (a column
    that does not fit is left out, and the caption says so; an option is never folded inside its value)."""
    runs = []
    for name, decay in (("wd-small", 0.0003), ("wd-large", 0.03)):
        run = _variant(tiny_cifar_run[0], tmp_path / name, 0.005, 0.25)
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["optim"]["weight_decay"] = decay
        (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        runs.append(run)
    monkeypatch.setenv("COLUMNS", "80")
    result = cli("compare", *runs, "--no-figure")
    assert_ok(result)
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, result.stdout
    assert any("weight_decay=0.0003" in line for line in lines), result.stdout
    assert any("weight_decay=0.03" in line for line in lines), result.stdout
    assert "…" not in result.stdout


def test_compare_figure_names_runs_by_what_differs(two_runs, monkeypatch, tmp_path):
    from imgcls.report import figures
    from imgcls.report.compare import comparison_rows, draw_figure, load_runs

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda figure, path: drawn.append(figure))
    summaries = load_runs(list(two_runs))
    rows, _ = comparison_rows(summaries)
    draw_figure(summaries, rows, tmp_path / "compare.png")
    legend = [text.get_text() for text in drawn[0].axes[0].get_legend().get_texts()]
    assert legend == ["lr=0.001", "lr=0.1"]
