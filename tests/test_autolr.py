"""Defaults that fit the data: `--lr auto` (a short stacked search on the validation split, lrsearch.py), recorded
so that a run repeats from its config.yaml; `imgcls lr-find`; and the plateau schedule's early stopping."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
import torch
import yaml

from conftest import plain, start_python
from imgcls import checkpoint as ckpt
from imgcls.config import ScheduleConfig, build_config
from imgcls.lrsearch import CANDIDATES
from imgcls.schedule import Plateau, Schedule

EPOCHS = "3"


def test_lr_auto_is_recorded_and_a_rerun_from_config_yaml_gives_the_same_weights(cli, tmp_path, assert_ok):
    result = cli("train", "--epochs", EPOCHS, "--device", "cpu", "--out", tmp_path / "auto")
    assert_ok(result)
    saved = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    chosen = saved["optim"]["lr"]
    assert isinstance(chosen, float) and chosen in CANDIDATES
    assert f"--lr auto chose {chosen:g}" in result.stderr
    again = cli("train", "--config", tmp_path / "auto" / "config.yaml", "--out", tmp_path / "again")
    assert_ok(again)
    assert "--lr auto" not in again.stderr, "a recorded rate is not searched again"
    assert (tmp_path / "auto" / "lr-search.png").stat().st_size > 10_000, "the search's figure is kept in the run"
    assert not (tmp_path / "again" / "lr-search.png").exists()
    for name in ("best.safetensors", "last.safetensors"):
        a, b = (ckpt.load(tmp_path / run / name) for run in ("auto", "again"))
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias), name


def test_lr_find_suggests_the_rate_with_the_best_validation_top1_and_auto_takes_it(cli, tmp_path, assert_ok):
    figure = tmp_path / "lr.png"
    found = cli("lr-find", "--epochs", EPOCHS, "--device", "cpu", "--figure", figure)
    assert_ok(found)
    assert figure.is_file() and figure.stat().st_size > 10_000
    rows = [line.split("\u2502")[1:-1] for line in found.stdout.splitlines() if line.startswith("\u2502")]
    table = {float(r[0]): (float(r[2].strip().rstrip("%")), r[3].strip()) for r in rows}
    assert sorted(table) == sorted(CANDIDATES)
    suggested = [lr for lr, (_, mark) in table.items() if mark == "suggested"]
    assert len(suggested) == 1 and table[suggested[0]][0] == max(top1 for top1, _ in table.values())
    assert f"suggested --lr {suggested[0]:g}" in found.stderr
    trained = cli("train", "--epochs", EPOCHS, "--device", "cpu", "--out", tmp_path / "run", "-q")
    assert_ok(trained)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["optim"]["lr"] == suggested[0]


def test_plateau_decays_after_patience_epochs_then_stops():
    schedule = Schedule(ScheduleConfig(), 0.1, steps_per_epoch=3, epochs=100)
    plateau = Plateau(decays=2)
    lrs = []
    for epoch, improved in enumerate((True, False, True, False, False, False, True, False, False, False)):
        plateau.epoch_end(improved, patience=2, gamma=0.5)
        rates = {schedule.rate(epoch * 3 + step, plateau.factor) for step in range(3)}
        assert len(rates) == 1, "constant within an epoch"
        lrs.append(rates.pop())
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025])
    assert not plateau.exhausted
    plateau.epoch_end(False, patience=2, gamma=0.5)  # the second epoch in a row without progress after the last decay
    assert plateau.exhausted and schedule.rate(40, plateau.factor) == pytest.approx(0.025)
    restored = Plateau(**plateau.state())
    assert (restored.factor, restored.decayed, restored.stale, restored.exhausted) == (0.25, 2, 2, True)


def test_the_default_run_anneals_on_a_plateau_and_stops(cli, tmp_path, assert_ok):
    """The default schedule with patience 1: each epoch without a better validation top-1 first halves the rate
    (twice), then the next one ends the run; epochs.jsonl shows the rates it used."""
    result = cli("train", "--lr", "0.05", "--patience", "1", "--step-gamma", "0.5", "--epochs", "40", "--device",
                 "cpu", "--out", tmp_path / "run")
    assert_ok(result)
    epochs = [json.loads(line) for line in (tmp_path / "run" / "epochs.jsonl").read_text().splitlines()]
    assert len(epochs) < 40 and "stopped early" in result.stderr
    rates = [e["lr"] for e in epochs]
    assert sorted(set(rates), reverse=True) == pytest.approx([0.05, 0.025, 0.0125])
    for index in range(1, len(epochs) - 1):
        best_before = max((e["val_top1"], -e["val_loss"]) for e in epochs[:index])
        improved = (epochs[index]["val_top1"], -epochs[index]["val_loss"]) > best_before
        decayed = epochs[index + 1]["lr"] < epochs[index]["lr"]
        assert decayed == (not improved and epochs[index]["lr"] > 0.0125 * 1.01), index  # patience 1


def test_plateau_has_no_warmup(assert_user_error, cli, tmp_path):
    result = cli("train", "--warmup-epochs", "1", "--out", tmp_path / "run")
    assert_user_error(result, "--warmup-epochs", "plateau")
    assert build_config(None, {"warmup_epochs": 1.0, "schedule": "cosine"}).schedule.warmup_epochs == 1.0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_rate_search_stops_within_seconds_and_writes_nothing(signum, mnist_root, tmp_path):
    """Online SGD's search is long (11 rates, 2 epochs of single images): the first Ctrl-C or SIGTERM ends it after
    the step in flight, with exit 130, one line saying nothing was written, and no run folder."""
    out = tmp_path / "run"
    process = start_python("-m", "imgcls", "train", "--dataset", "mnist", "--data-dir", mnist_root, "--batch-size",
                           "1", "--epochs", "2", "--limit", "3000", "--device", "cpu", "--out", out)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any("--lr auto: training" in line for line in lines):
        assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signum)
    sent = time.monotonic()
    process.wait(timeout=60)
    waited = time.monotonic() - sent
    reader.join(timeout=10)
    text = plain("".join(lines))
    assert process.returncode == 130, text
    assert waited < 10, f"{waited:.1f} s after the signal"
    assert "Traceback" not in text and "learning-rate search" in text.splitlines()[-1]
    assert "nothing was written" in text.splitlines()[-1]
    assert not (out / "config.yaml").exists() and not (out / "last.safetensors").exists()


def test_lr_find_draws_in_out_and_refuses_a_figure_it_cannot_write(cli, tmp_path, monkeypatch, assert_ok,
                                                                   assert_user_error):
    monkeypatch.chdir(tmp_path)
    assert_ok(cli("lr-find", "--epochs", 1, "--limit", 300, "--device", "cpu", "--out", tmp_path / "search"))
    assert (tmp_path / "search" / "lr-find.png").stat().st_size > 10_000
    assert not (tmp_path / "lr-find.png").exists(), "--out says where, not the current folder"
    assert_user_error(cli("lr-find", "--epochs", 1, "--figure", tmp_path / "x.jpg"), "x.jpg", "PNG", ".png")
    (tmp_path / "a-file").write_text("")
    assert_user_error(cli("lr-find", "--epochs", 1, "--figure", tmp_path / "a-file" / "lr.png"), "--figure",
                      "a-file")
    assert not (tmp_path / "x.jpg").exists()
