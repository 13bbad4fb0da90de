"""Defaults that fit the data (selection.py): the rate and weight decay searched together, stacked, chosen by the
lowest held-out loss (5-fold cross-validation on small data, a subset on larger data), then a refit on all the
training images; recorded so that a run repeats from its config.yaml; `imgcls lr-find`; the plateau schedule."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
import torch
import yaml

from conftest import plain, start_python
from imgcls.runs import checkpoint as ckpt
from imgcls.training import selection
from imgcls.config import ScheduleConfig, build_config
from imgcls.data.batches import Batches
from imgcls.data.prepare import prepare
from imgcls.data.split import folds
from imgcls.data.types import LabelledImages, Normalization
from imgcls.training.interrupt import StopRequest
from imgcls.linear.losses import Loss
from imgcls.linear.metrics import better, pooled
from imgcls.linear.schedule import Plateau, Schedule
from imgcls.linear.stacked import Hyper, Stack

EPOCHS = "3"
SMALL = ("--limit", "600", "--epochs", EPOCHS, "--device", "cpu")  # 600 images: cross-validated


def search_of(**flags) -> tuple[selection.Selection, object]:
    config = build_config(None, {"limit": 600, "epochs": 3, "device": "cpu", **flags})
    data = prepare(config.data, config.train.seed)
    return selection.search(config, data, 128, torch.device("cpu"), StopRequest()), data


def test_the_search_is_recorded_and_a_rerun_from_config_yaml_gives_the_same_weights(cli, tmp_path, assert_ok):
    result = cli("train", *SMALL, "--out", tmp_path / "auto")
    assert_ok(result)
    saved = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    assert saved["optim"]["lr"] in selection.RATES and saved["optim"]["weight_decay"] in selection.DECAYS
    assert "30 settings" in plain(result.stderr) and "5-fold cross-validation of 600 images" in plain(result.stderr)
    chosen = json.loads((tmp_path / "auto" / "selection.json").read_text())
    metrics = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert metrics["refit"] == {"images": 600, "epochs": chosen["epochs"], "chosen_on": chosen["how"]}
    assert metrics["val"] == chosen["val"] and metrics["best_epoch"] == chosen["epochs"] <= 3
    assert set(metrics["seconds"]) == {"search", "refit"}
    assert (tmp_path / "auto" / "lr-search.png").stat().st_size > 10_000, "the search's figure is kept in the run"
    assert not (tmp_path / "auto" / "refit.safetensors").exists(), "the refit's state becomes last.safetensors"
    for name in ("best.safetensors", "last.safetensors"):  # both are the refit, trained on the validation images
        evaluated = cli("eval", tmp_path / "auto" / name, "--split", "val", "--device", "cpu")
        assert_ok(evaluated)
        assert "not held out" in plain(evaluated.stderr), name
    assert "not held out" not in plain(cli("eval", tmp_path / "auto", "--device", "cpu").stderr), "test is"
    again = cli("train", "--config", tmp_path / "auto" / "config.yaml", "--out", tmp_path / "again")
    assert_ok(again)
    assert "choosing the epochs of lr" in plain(again.stderr), "recorded settings are not searched again, only epochs"
    for name in ("best.safetensors", "last.safetensors"):
        a, b = (ckpt.load(tmp_path / run / name) for run in ("auto", "again"))
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias), name


def test_cross_validation_chooses_each_decays_rate_then_the_lowest_held_out_loss():
    search, _ = search_of()
    first = [row for row in search.rows if row["stage"] == "rates"]
    final = [row for row in search.rows if row["stage"] == "decays"]
    assert len(first) == len(selection.RATES) * len(selection.DECAYS) and len(final) == len(selection.DECAYS)
    for row in final:  # each decay goes on at the rate whose held-out loss was lowest in the first stage
        mine = [r for r in first if r["weight_decay"] == row["weight_decay"] and r["val_loss"] is not None
                and not r["diverged"]]
        assert row["lr"] == min(mine, key=lambda r: r["val_loss"])["lr"]
    chosen = [row for row in final if row["chosen"]]
    assert len(chosen) == 1 and chosen[0]["val_loss"] == min(r["val_loss"] for r in final if not r["diverged"])
    assert 0 < chosen[0]["val_loss_se"] < chosen[0]["val_loss"]
    assert (search.lr, search.weight_decay, search.epochs) == (chosen[0]["lr"], chosen[0]["weight_decay"],
                                                               chosen[0]["epochs"])
    assert search.val["count"] == 600, "every image is held out once"


@pytest.mark.parametrize("stronger_loss, chosen_decay", [(1.04, 0.1), (1.06, 0.01)])
def test_the_one_standard_error_rule_takes_the_strongest_decay_the_noise_cannot_tell_from_the_best(stronger_loss,
                                                                                                  chosen_decay):
    rows = [{"lr": 0.1, "weight_decay": 0.001, "val_loss": 1.02, "val_loss_se": 0.05},
            {"lr": 0.1, "weight_decay": 0.01, "val_loss": 1.0, "val_loss_se": 0.05},
            {"lr": 0.01, "weight_decay": 0.1, "val_loss": stronger_loss, "val_loss_se": 0.05},
            {"lr": 0.01, "weight_decay": 1.0, "val_loss": 0.9, "val_loss_se": 0.05}]  # diverged: not ranked
    assert rows[selection.choose(rows, [0, 1, 2], one_se=True)]["weight_decay"] == chosen_decay
    assert rows[selection.choose(rows, [0, 1, 2], one_se=False)]["weight_decay"] == 0.01


def test_given_values_are_fixed_and_the_rest_searched():
    rates_only, _ = search_of(weight_decay=0.01)
    assert {row["weight_decay"] for row in rates_only.rows} == {0.01} and rates_only.weight_decay == 0.01
    decays_only, _ = search_of(lr=0.003)
    assert {row["lr"] for row in decays_only.rows} == {0.003}
    assert [row["stage"] for row in decays_only.rows] == ["decays"] * len(selection.DECAYS), "no rate stage"
    mse, _ = search_of(loss="mse")
    assert {row["lr"] for row in mse.rows} == {rate / 10 for rate in selection.RATES}


def test_on_larger_data_the_search_takes_a_subset_and_scales_the_decay_to_the_run(monkeypatch):
    """A decay chosen on n_s images becomes wd * sqrt(n_s / n) on the run's n training images."""
    monkeypatch.setattr(selection, "CV_COST", 100)
    monkeypatch.setattr(selection, "SEARCH_IMAGES", 200)
    search, data = search_of()
    assert search.epochs is None and search.val is None, "the run's validation split chooses the epochs"
    chosen = next(row for row in search.rows if row["chosen"])
    assert search.weight_decay == pytest.approx(chosen["weight_decay"] * (200 / len(data.train)) ** 0.5)
    final = [row for row in search.rows if row["stage"] == "decays" and not row["diverged"]]
    best = min(final, key=lambda row: row["val_loss"])  # the subset's few updates: the one-standard-error rule
    near = [row for row in final if row["val_loss"] <= best["val_loss"] + best["val_loss_se"]]
    assert chosen["weight_decay"] == max(row["weight_decay"] for row in near)
    assert "200 training images" in search.how and f"{len(data.val)} validation images" in search.how


def test_folds_are_stratified_seeded_and_cover_every_image_once():
    labels = torch.tensor([0] * 13 + [1] * 7 + [2] * 5)
    fold = folds(labels, 5, seed=3)
    assert torch.equal(fold, folds(labels, 5, seed=3)) and not torch.equal(fold, folds(labels, 5, seed=4))
    for label in range(3):
        counts = torch.bincount(fold[labels == label], minlength=5)
        assert counts.max() - counts.min() <= 1, (label, counts)
    assert fold.shape == labels.shape and set(fold.tolist()) == set(range(5)), "one fold an image, every fold used"


def test_held_out_evaluation_counts_each_models_own_fold_only():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 2, 3), dtype=torch.uint8)
    labels = torch.arange(40) % 4
    normalization = Normalization(torch.full((1, 2, 3), 0.5), torch.full((1, 2, 3), 0.25))
    stack = Stack(torch.randn(2, 4, 6), torch.randn(2, 4), [Loss("ce", None)] * 2, [Hyper(0.0, False, 0.0)] * 2)
    fold = folds(labels, 2, seed=0)
    both = stack.evaluate(Batches(LabelledImages(images, labels), normalization, 7, torch.device("cpu"),
                                  shuffle=False), heldout=torch.stack([fold == 0, fold == 1]))
    for index in range(2):
        mine = fold == index
        alone = stack.evaluate(Batches(LabelledImages(images[mine], labels[mine]), normalization, 7,
                                       torch.device("cpu"), shuffle=False))[index]
        assert both[index].count == int(mine.sum())
        assert both[index].loss == pytest.approx(alone.loss) and both[index].top1 == alone.top1
    together = pooled(both)
    assert together.count == 40
    assert together.loss == pytest.approx(sum(m.loss * m.count for m in both) / 40)


def test_the_choice_statistic_is_the_validation_loss_with_a_relative_threshold():
    assert better({"loss": 0.5, "top1": 0.1}, None)
    assert better({"loss": 0.5, "top1": 0.1}, {"loss": 0.6, "top1": 0.9}), "a lower loss wins over a higher top-1"
    assert not better({"loss": 0.59999, "top1": 0.9}, {"loss": 0.6, "top1": 0.1}), "1.7e-5 relative is no better"


def test_no_refit_keeps_the_best_validation_epoch(cli, tmp_path, assert_ok):
    result = cli("train", *SMALL, "--lr", "0.001", "--weight-decay", "0.1", "--no-refit", "--out", tmp_path / "r")
    assert_ok(result)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    epochs = [json.loads(line) for line in (tmp_path / "r" / "epochs.jsonl").read_text().splitlines()]
    assert "refit" not in metrics and not (tmp_path / "r" / "selection.json").exists()
    assert metrics["best_epoch"] == 1 + min(range(len(epochs)), key=lambda i: epochs[i]["val_loss"])
    assert "searching" not in plain(result.stderr), "nothing to search: no cross-validation without a refit"


@pytest.mark.parametrize("refit_step", [1, 3, 8])  # the very first step, mid-epoch, and in the second epoch
def test_a_refit_stopped_part_way_resumes_to_the_same_weights(tmp_path, monkeypatch, refit_step):
    """The refit's state is refit.safetensors while it runs; selection.json keeps what was chosen, so a resumed run
    goes straight on with the refit and ends where an unbroken one does, bit for bit."""
    from imgcls.training.engine import Engine
    from imgcls.report.report import Reporter
    from imgcls.runs.rundir import RunDir
    from imgcls.training.train import Interrupted, train

    flags = {"limit": 600, "epochs": 4, "batch_size": 128, "lr": 0.001, "weight_decay": 0.01, "device": "cpu"}
    train(build_config(None, {**flags, "out": str(tmp_path / "whole")}), Reporter(quiet=True))
    assert json.loads((tmp_path / "whole" / "selection.json").read_text())["epochs"] >= 2, "precondition"
    step, count = Engine.step, []

    def counted(engine, *args, **kwargs):
        stats = step(engine, *args, **kwargs)
        if engine.val_batches is None:  # the refit's engine: no held-out images
            count.append(1)
            if len(count) == refit_step:
                signal.raise_signal(signal.SIGINT)
        return stats

    monkeypatch.setattr(Engine, "step", counted)
    out = tmp_path / "stopped"
    with pytest.raises(Interrupted):
        train(build_config(None, {**flags, "out": str(out)}), Reporter(quiet=True))
    monkeypatch.undo()
    assert (out / "refit.safetensors").is_file() and (out / "selection.json").is_file()
    assert not (out / "metrics.json").exists()
    train(build_config(out / "config.yaml", {}), Reporter(quiet=True), resume=RunDir.open_for_resume(out))
    for name in ("best.safetensors", "last.safetensors"):
        a, b = ckpt.load(tmp_path / "whole" / name), ckpt.load(out / name)
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias), name
    metrics = [json.loads((path / "metrics.json").read_text()) for path in (tmp_path / "whole", out)]
    assert metrics[0]["test"] == metrics[1]["test"] and metrics[0]["val"] == metrics[1]["val"]


@pytest.mark.parametrize("damage, words", [
    (lambda chosen: chosen.update(factors=[-1.0] * chosen["epochs"]), ["selection.json", "damaged", "--overwrite"]),
    (lambda chosen: chosen.update(factors=[1.0]), ["selection.json", "damaged"]),
    (lambda chosen: chosen.update(epochs=10 ** 9, factors=None), ["selection.json", "epochs", "damaged"]),
    (lambda chosen: chosen.pop("val"), ["selection.json", "damaged"]),
    (lambda chosen: chosen.update(val={}), ["selection.json", "val.loss", "damaged"]),  # was KeyError: 'loss'
    (lambda chosen: chosen["val"].update(top1="high"), ["selection.json", "val.top1", "damaged"]),
    ("lr: auto", ["config.yaml", "optim.lr: auto", "put the number back"]),
    ("weight_decay: auto", ["config.yaml", "optim.weight_decay: auto"]),
])
def test_a_damaged_choice_is_refused_on_resume_in_one_line(cli, tmp_path, monkeypatch, damage, words,
                                                          assert_user_error):
    """What a refit resumes from (selection.json, and the values config.yaml records) is checked: a hand-edited
    or damaged one is one error line and exit 2, never a traceback or a refit at a wrong rate."""
    from imgcls.training.engine import Engine
    from imgcls.report.report import Reporter
    from imgcls.training.train import Interrupted, train

    step = Engine.step

    def stop_in_the_refit(engine, *args, **kwargs):
        stats = step(engine, *args, **kwargs)
        if engine.val_batches is None:
            signal.raise_signal(signal.SIGINT)
        return stats

    monkeypatch.setattr(Engine, "step", stop_in_the_refit)
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(build_config(None, {"limit": 300, "epochs": 3, "lr": 0.001, "weight_decay": 0.01, "device": "cpu",
                                  "out": str(out)}), Reporter(quiet=True))
    monkeypatch.undo()
    if isinstance(damage, str):
        key = damage.split(":")[0]
        text = (out / "config.yaml").read_text()
        (out / "config.yaml").write_text("\n".join(f"  {damage}" if line.strip().startswith(f"{key}:") else line
                                                   for line in text.splitlines()) + "\n")
    else:
        chosen = json.loads((out / "selection.json").read_text())
        damage(chosen)
        (out / "selection.json").write_text(json.dumps(chosen))
    assert_user_error(cli("train", "--resume", out, "--device", "cpu"), *words)
    assert not (out / "metrics.json").exists()


def test_epochs_auto_is_at_least_100_or_ten_thousand_updates(cli, tmp_path, assert_ok):
    from imgcls.training.train import resolve_epochs

    config = build_config(None, {})
    resolve_epochs(config, steps_per_epoch=3)
    assert config.train.epochs == 3334
    config = build_config(None, {})
    resolve_epochs(config, steps_per_epoch=422)
    assert config.train.epochs == 100
    assert build_config(None, {"epochs": 7}).train.epochs == 7


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
    """The default schedule with patience 1: each epoch without a lower validation loss first halves the rate
    (twice), then the next one ends the run; epochs.jsonl shows the rates it used."""
    result = cli("train", "--lr", "0.05", "--weight-decay", "0.01", "--patience", "1", "--step-gamma", "0.5",
                 "--epochs", "40", "--no-refit", "--device", "cpu", "--out", tmp_path / "run")
    assert_ok(result)
    epochs = [json.loads(line) for line in (tmp_path / "run" / "epochs.jsonl").read_text().splitlines()]
    assert len(epochs) < 40 and "stopped early" in result.stderr
    rates = [e["lr"] for e in epochs]
    assert sorted(set(rates), reverse=True) == pytest.approx([0.05, 0.025, 0.0125])
    for index in range(1, len(epochs) - 1):
        improved = epochs[index]["val_loss"] < min(e["val_loss"] for e in epochs[:index]) * (1 - 1e-4)
        decayed = epochs[index + 1]["lr"] < epochs[index]["lr"]
        assert decayed == (not improved and epochs[index]["lr"] > 0.0125 * 1.01), index  # patience 1


def test_plateau_has_no_warmup(assert_user_error, cli, tmp_path):
    result = cli("train", "--warmup-epochs", "1", "--out", tmp_path / "run")
    assert_user_error(result, "--warmup-epochs", "plateau")
    assert build_config(None, {"warmup_epochs": 1.0, "schedule": "cosine"}).schedule.warmup_epochs == 1.0


@pytest.mark.parametrize("signum, fixed", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)])
def test_a_signal_during_the_search_stops_within_seconds_and_writes_nothing(signum, fixed, mnist_root, tmp_path):
    """Online SGD's search is long (30 settings x 5 folds, epochs of single images): the first Ctrl-C or SIGTERM
    ends it after the step in flight, with exit 130, one line saying nothing was written (and what it stopped: with
    a fixed rate and decay, the choice of the epochs), and no run folder."""
    out = tmp_path / "run"
    rates = ("--lr", "0.01", "--weight-decay", "0.001") if fixed else ()
    process = start_python("-m", "imgcls", "train", "--dataset", "mnist", "--data-dir", mnist_root, "--batch-size",
                           "1", "--epochs", "2", "--limit", "3000", "--device", "cpu", "--out", out, *rates)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any(("choosing the epochs" if fixed else "searching") in line for line in lines):
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
    stopped = "during the choice of the epochs" if fixed else "during the search of --lr/--weight-decay auto"
    assert "Traceback" not in text and stopped in text.splitlines()[-1]
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
