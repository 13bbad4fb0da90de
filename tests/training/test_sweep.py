"""`imgcls sweep`: stacked models end where separate runs end, validation alone chooses, a diverging point stops
alone, an interrupted sweep resumes exactly, and every grid mistake is one line."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from imgcls.runs import checkpoint as ckpt
from imgcls.training import sweep as sweeping
from imgcls.config import build_config, settings
from imgcls.training.grid import Point, parse_values
from imgcls.training.engine import Engine
from imgcls.report.report import Reporter
from imgcls.training.selection import DECAYS
from imgcls.runs.sweepdir import SweepDir
from imgcls.training.train import train

EPOCHS = 3


def sweep_flags(out, **flags) -> dict:
    given = {"epochs": EPOCHS, "weight_decay": 0.01, "refit": "false", "device": "cpu", "out": out, **flags}
    return {name: None if given.get(name) is None else str(given[name]) for name in settings()}


def run_sweep(out, **flags) -> sweeping.SweepResult:
    target, spec = sweeping.plan(None, sweep_flags(out, **flags), overwrite=False)
    with target.locked():
        return sweeping.run(target, spec, Reporter(quiet=True), resume=False)


def resume_sweep(out) -> sweeping.SweepResult:
    target = SweepDir.for_resume(out)
    with target.locked():
        return sweeping.run(target, target.read_spec(), Reporter(quiet=True), resume=True)


def train_alone(out, values: dict):
    flags = {"epochs": EPOCHS, "weight_decay": 0.01, "refit": False, "device": "cpu", "out": str(out), **values}
    return train(build_config(None, flags), Reporter(quiet=True))


@pytest.mark.parametrize("grid", [
    {"lr": "0.002,0.02", "momentum": "0,0.9"},
    {"loss": "ce,mse", "nesterov": "true,false", "class_weights": "none,balanced", "lr": "0.00001"},
    {"schedule": "cosine,onecycle", "init": "zeros,default", "weight_decay": "0,0.05", "warmup_epochs": "0,1",
     "lr": "0.005"},
])
def test_each_stacked_model_ends_where_its_own_train_run_ends(tmp_path, grid):
    result = run_sweep(tmp_path / "sweep", **grid)
    assert len(result.groups) == 1, "points that share batches must train stacked, in one group"
    points = result.groups[0].points
    assert len(points) == len(result.records) > 1
    for point in points[:4] if len(points) <= 4 else points[::3]:
        singles = {name: values for name, values in grid.items() if "," not in values}
        alone = train_alone(tmp_path / f"alone{point.index}", {**singles, **point.values})
        swept = tmp_path / "sweep" / "points" / f"{point.index:03d}"
        for name in ("best.safetensors", "last.safetensors"):
            a, b = ckpt.load(alone.run_dir.path / name), ckpt.load(swept / name)
            scale = a.weight.abs().max().item()
            assert torch.allclose(a.weight, b.weight, rtol=1e-4, atol=1e-5 * scale), (point.label(), name)
            assert torch.allclose(a.bias, b.bias, rtol=1e-4, atol=1e-5 * max(scale, 1e-3)), (point.label(), name)
            assert a.meta["epoch"] == b.meta["epoch"]
        record = result.records[point.index]
        assert record["best_epoch"] == alone.best_epoch
        assert record["val_top1"] == pytest.approx(alone.val.top1, abs=2 / alone.val.count)
        lrs = [(r["lr"], r["lr_last"]) for r in alone.history]
        swept_lrs = [(r["lr"], r["lr_last"]) for r in map(json.loads, (swept / "epochs.jsonl").read_text().splitlines())]
        assert swept_lrs == lrs, "each model must follow its own schedule exactly"


def test_selection_reads_validation_only(tmp_path, monkeypatch):
    grid = {"lr": "0.0005,0.005,0.05"}
    honest = run_sweep(tmp_path / "honest", **grid)
    real = sweeping.make_eval_batches

    def scrambled_test(data, split, *args, **kwargs):
        batches = real(data, split, *args, **kwargs)
        if split == "test":  # every test label moved to the next class: test top-1 collapses, validation is as was
            batches.labels = (batches.labels + 1) % len(data.classes)
        return batches

    monkeypatch.setattr(sweeping, "make_eval_batches", scrambled_test)
    poisoned = run_sweep(tmp_path / "poisoned", **grid)
    assert [r["val_top1"] for r in poisoned.records] == [r["val_top1"] for r in honest.records]
    assert [r["test_top1"] for r in poisoned.records] != [r["test_top1"] for r in honest.records]
    assert poisoned.best == honest.best == max(honest.records, key=lambda r: (r["val_top1"], -r["val_loss"]))["point"]
    summary = json.loads((tmp_path / "honest" / "sweep.json").read_text())
    assert summary["test_used_for_selection"] is False and summary["best_point"] == honest.best


def test_select_takes_the_lowest_validation_loss_and_never_a_diverged_point():
    def record(point, val, loss, test, diverged=False):
        return {"point": point, "val_top1": val, "val_loss": loss, "test_top1": test, "diverged": diverged}

    records = [record(0, 0.5, 1.1, 0.9), record(1, 0.6, 1.2, 0.1), record(2, 0.4, 1.0, 0.2),
               record(3, 0.9, 0.5, 0.9, diverged=True), record(4, 0.7, 1.0, 0.3)]
    assert sweeping.select(records) == 2, "the lowest loss, not the best top-1; the earlier of equal losses"
    assert sweeping.select([record(0, None, None, None, diverged=True)]) is None


def test_a_diverging_point_stops_alone_and_is_never_chosen(tmp_path):
    result = run_sweep(tmp_path / "sweep", lr="0.0001,1e6", loss="mse", momentum="0")
    good, bad = result.records
    assert bad["diverged"] and not good["diverged"]
    assert (tmp_path / "sweep" / "points" / "001" / "diverged.txt").is_file()
    assert good["epochs_run"] == EPOCHS and bad["epochs_run"] < EPOCHS
    assert result.best == 0
    history = [json.loads(line) for line in (tmp_path / "sweep" / "points" / "000" / "epochs.jsonl").read_text()
               .splitlines()]
    assert history[-1]["train_loss"] < history[0]["train_loss"], "the other point must go on learning"


class InterruptAfter:
    """A real SIGINT to this process after the sweep's `steps`-th stacked step."""

    def __init__(self, monkeypatch, steps: int):
        real, count = Engine.step, {"n": 0}

        def counted(engine, *args):
            stats = real(engine, *args)
            count["n"] += 1
            if count["n"] == steps:
                os.kill(os.getpid(), signal.SIGINT)
            return stats

        monkeypatch.setattr(Engine, "step", counted)


@pytest.mark.parametrize("steps", [3, 8])  # inside the first epoch (8 steps of 128 of the sample), and at its end
def test_an_interrupted_sweep_resumes_to_the_same_models(tmp_path, monkeypatch, steps):
    grid = {"lr": "0.003,0.03", "momentum": "0,0.9", "batch_size": "128", "patience": "1"}
    whole = run_sweep(tmp_path / "whole", **grid)
    with monkeypatch.context() as patch:
        InterruptAfter(patch, steps)
        with pytest.raises(sweeping.SweepInterrupted):
            run_sweep(tmp_path / "cut", **grid)
    resumed = resume_sweep(tmp_path / "cut")
    assert resumed.best == whole.best
    for a, b in zip(whole.records, resumed.records):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    for index in range(4):
        for name in ("best.safetensors", "last.safetensors"):
            a = ckpt.load(tmp_path / "whole" / "points" / f"{index:03d}" / name)
            b = ckpt.load(tmp_path / "cut" / "points" / f"{index:03d}" / name)
            assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias), (index, name)


def test_the_chosen_point_is_a_run_that_other_commands_take_and_its_refit_is_imgcls_train(cli, tmp_path, assert_ok):
    """With the default weight decay ('auto') a sweep tries the search's decays; the chosen point, refit on all
    training images, is what `imgcls train --config POINT/config.yaml` gives, bit for bit."""
    result = cli("sweep", "--lr", "0.001,0.01", "--epochs", "2", "--device", "cpu", "--out", tmp_path / "s", "-q")
    assert_ok(result)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    best = tmp_path / "s" / "best"
    points = 2 * len(DECAYS)
    assert best.is_symlink() and summary["best_point"] in range(points)
    for name in ("config.yaml", "metrics.json", "best.safetensors", "curves.png", "report.html"):
        assert (best / name).is_file(), name
    assert (tmp_path / "s" / "sweep.png").is_file()
    rows = (tmp_path / "s" / "sweep.csv").read_text().splitlines()
    assert len(rows) == points + 1 and rows[0].startswith("point,group,lr,weight_decay,")
    refit = Path(summary["refit_run"])
    chosen = json.loads((refit / "selection.json").read_text())
    assert chosen["epochs"] == json.loads((best / "metrics.json").read_text())["best_epoch"]
    alone = cli("train", "--config", best / "config.yaml", "--out", tmp_path / "alone", "-q")
    assert_ok(alone)
    a, b = ckpt.load(refit / "best.safetensors"), ckpt.load(tmp_path / "alone" / "best.safetensors")
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert json.loads((refit / "metrics.json").read_text())["test"] == \
        json.loads((tmp_path / "alone" / "metrics.json").read_text())["test"]
    evaluated = cli("eval", best, "--split", "val", "--json")
    assert_ok(evaluated)
    metrics = json.loads((best / "metrics.json").read_text())
    assert json.loads(evaluated.stdout)["val"]["top1"] == pytest.approx(metrics["val"]["top1"])
    again = cli("sweep", "--lr", "0.001,0.01", "--out", tmp_path / "s")
    assert again.exit_code == 2 and "already holds a sweep" in again.stderr


@pytest.mark.parametrize("args, words", [
    (["--lr", "1:0.1:0"], ["--lr", "empty"]),
    (["--lr", "0.1,,0.2"], ["--lr", "empty value"]),
    (["--lr", "fast"], ["--lr", "number"]),
    (["--lr", "0:1:3"], ["log range"]),
    (["--epochs", "1:10:3"], ["--epochs", "list"]),
    (["--loss", "ce,hinge"], ["unknown loss", "hinge"]),
    (["--lr", "0.1,-1"], ["--lr", "greater than 0"]),
    (["--lr", "0.1,0.1"], ["twice"]),
    (["--lr", "1e-9:1:200000"], ["more than"]),
    (["--precision", "bf16", "--lr", "0.01"], ["analytic float32"]),
    (["--lr", "auto,0.1"], ["--lr", "'auto'", "numbers only"]),
    (["--lr", "0.01", "--weight-decay", "0.1,auto"], ["--weight-decay", "'auto'", "numbers only"]),
])
def test_grid_mistakes_are_one_error_line(cli, tmp_path, args, words, assert_user_error):
    epochs = [] if "--epochs" in args else ["--epochs", "1"]
    result = cli("sweep", *args, "--out", tmp_path / "s", *epochs)
    assert_user_error(result, *words)
    assert not (tmp_path / "s" / "sweep.yaml").exists()


def test_log_ranges_lists_none_and_switches_parse_as_their_options_declare():
    options = settings()
    assert parse_values(options["lr"], "1e-4:1:5") == [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert parse_values(options["batch_size"], "32,full") == [32, "full"]
    assert parse_values(options["patience"], "none,3") == [None, 3]
    assert parse_values(options["nesterov"], "true,false") == [True, False]
    assert parse_values(options["class_weights"], "1,2,3") == [[1.0, 2.0, 3.0]]
    assert parse_values(options["class_weights"], "1,2;balanced") == [[1.0, 2.0], "balanced"]
    assert parse_values(options["augment"], "none;flip,translate:1") == [None, "flip,translate:1"]
    assert Point(0, {"lr": 0.01, "nesterov": True}).label() == "lr=0.01 nesterov=true"


def test_a_grid_too_large_for_memory_says_how_many_points_fit(cli, tmp_path, monkeypatch, assert_user_error):
    monkeypatch.setattr(sweeping, "available_memory", lambda: 10 ** 7)
    result = cli("sweep", "--lr", "1e-4:1:40", "--out", tmp_path / "s", "--epochs", "1", "--device", "cpu")
    message = assert_user_error(result, "40 stacked models", "points fit")
    assert "about 0 points" not in message


@pytest.mark.parametrize("args, words", [
    (["--lr", "0.01,0.1", "--out", "a,b"], ["--out takes one value"]),
    (["--lr", "0.01", "--seed", "0,1"], ["--seed takes one value", "validation"]),
    (["--lr", "0.01", "--momentum", "0,0.9", "--nesterov"], ["point 0", "momentum=0", "--nesterov"]),
    (["--lr", "0.01,0.1", "--tensorboard"], ["--tensorboard"]),
    (["--lr", "1e-9:1e9:30000000"], ["30,000,000 values"]),
])
def test_what_a_sweep_cannot_vary_is_one_error_line(cli, tmp_path, args, words, assert_user_error):
    assert_user_error(cli("sweep", *args, "--out" if "--out" not in args else "--epochs", tmp_path / "s"
                          if "--out" not in args else "1"), *words)


def test_a_folder_with_a_sweeps_files_is_not_replaced_without_overwrite(cli, tmp_path, assert_ok, assert_user_error):
    assert_ok(cli("sweep", "--lr", "0.01,0.1", "--epochs", "1", "--device", "cpu", "--out", tmp_path / "s", "-q"))
    (tmp_path / "s" / "sweep.yaml").unlink()
    assert_user_error(cli("sweep", "--lr", "0.5,0.05", "--epochs", "1", "--out", tmp_path / "s"), "already holds")
    best = tmp_path / "s" / "best"
    target = best.resolve()
    best.unlink()
    import shutil

    shutil.copytree(target, best)  # `best` as a real folder, as `cp -rL` leaves it
    assert_ok(cli("sweep", "--lr", "0.5,0.05", "--epochs", "1", "--device", "cpu", "--out", tmp_path / "s",
                  "--overwrite", "-q"))
    assert (tmp_path / "s" / "best").is_symlink()
    assert "lr=0.5" in (tmp_path / "s" / "sweep.csv").read_text() or "0.5" in (tmp_path / "s" / "sweep.csv").read_text()


def test_a_damaged_grid_in_sweep_yaml_is_one_error_line(cli, tmp_path, assert_user_error, monkeypatch):
    import yaml

    with monkeypatch.context() as patch:
        InterruptAfter(patch, 2)
        result = cli("sweep", "--lr", "0.01,0.1", "--epochs", "2", "--device", "cpu", "--out", tmp_path / "s")
    assert result.exit_code == 130
    spec = yaml.safe_load((tmp_path / "s" / "sweep.yaml").read_text())
    spec["grid"]["bogus"] = [1, 2]
    (tmp_path / "s" / "sweep.yaml").write_text(yaml.safe_dump(spec))
    assert_user_error(cli("sweep", "--resume", tmp_path / "s"), "bogus", "not an option")


# --- a sweep's state is always whole: kills, full disks, edits ---------------------------------------------------------

WHOLE_GRID = {"lr": "0.003,0.3", "momentum": "0.9", "batch_size": "64", "limit": "400", "patience": "1"}


class Killed(BaseException):
    """What SIGKILL does at that moment: nothing after it runs (here only `finally` clauses do)."""


def fail_write(monkeypatch, at: int, error: BaseException) -> dict:
    """Raise `error` in place of the `at`-th file write (every file imgcls writes whole ends in os.replace)."""
    real, count = os.replace, {"n": 0}

    def replace(source, target):
        count["n"] += 1
        if count["n"] == at:
            raise error
        return real(source, target)

    monkeypatch.setattr("imgcls.files.os.replace", replace)
    return count


def sweep_files(out: Path) -> tuple:
    """What a finished sweep is: its records but the seconds, its table but the seconds, every point's weights."""
    summary = json.loads((out / "sweep.json").read_text())
    records = [{k: v for k, v in record.items() if k != "seconds"} for record in summary["points"]]
    table = [line.rsplit(",", 1)[0] for line in (out / "sweep.csv").read_text().splitlines()]
    weights = []
    for record in summary["points"]:
        for name in ("best.safetensors", "last.safetensors"):
            checkpoint = ckpt.load(out / record["run"] / name)
            weights.append((checkpoint.weight, checkpoint.bias))
    return summary["best_point"], records, table, weights, os.readlink(out / "best")


def assert_same_sweep(a: tuple, b: tuple) -> None:
    assert a[:3] == b[:3] and a[4] == b[4]
    assert all(torch.equal(x, y) for pair_a, pair_b in zip(a[3], b[3]) for x, y in zip(pair_a, pair_b))


@pytest.fixture(scope="module")
def whole_sweep(tmp_path_factory) -> tuple[tuple, int]:
    """An unbroken sweep, and how many files it wrote."""
    folder = tmp_path_factory.mktemp("whole")
    run_sweep(folder / "first", **WHOLE_GRID)  # the data decoded and cached: no sweep below writes the cache
    with pytest.MonkeyPatch.context() as patch:
        count = fail_write(patch, 0, Killed())
        run_sweep(folder / "sweep", **WHOLE_GRID)
    return sweep_files(folder / "sweep"), count["n"]


def test_a_sweep_killed_at_any_of_its_file_writes_resumes_to_the_unbroken_sweep(whole_sweep, tmp_path,
                                                                                 monkeypatch):
    """Killed in place of each write it makes, in turn, then resumed (or started again, if not even sweep.yaml was
    written): every time the same points, table, weights and choice as a sweep never killed."""
    expected, writes = whole_sweep
    assert writes > 20
    for at in range(1, writes + 1):
        out = tmp_path / f"cut{at}"
        with monkeypatch.context() as patch, pytest.raises(Killed):
            fail_write(patch, at, Killed())
            run_sweep(out, **WHOLE_GRID)

        if (out / "sweep.yaml").is_file():
            resume_sweep(out)
        else:
            run_sweep(out, **WHOLE_GRID)
        assert_same_sweep(sweep_files(out), expected), at


def test_a_full_disk_stops_a_sweep_in_one_line_and_it_resumes_once_space_is_freed(whole_sweep, tmp_path, cli,
                                                                                  monkeypatch, assert_user_error):
    import errno

    expected, writes = whole_sweep
    flags = [item for name, value in WHOLE_GRID.items() for item in (settings()[name].flag, value)]
    for at in range(2, writes + 1, 5):
        out = tmp_path / f"full{at}"
        with monkeypatch.context() as patch:
            fail_write(patch, at, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
            assert_user_error(cli("sweep", *flags, "--epochs", EPOCHS, "--weight-decay", 0.01, "--no-refit",
                                  "--device", "cpu", "--out", out),
                              "No space left on device")
        monkeypatch.undo()
        result = cli("sweep", "--resume", out, "-q")
        assert result.exit_code == 0, result.output
        assert_same_sweep(sweep_files(out), expected), at


def test_a_ctrl_c_while_the_chosen_runs_figures_are_drawn_stops_them_at_once(tmp_path, cli, ctrl_c_in_figures):
    """The sweep's signal rule ends with its training: a Ctrl-C during the chosen run's figures stops them at once,
    and the line says how to draw them."""
    from conftest import plain

    flags = [item for name, value in WHOLE_GRID.items() for item in (settings()[name].flag, value)]
    result = cli("sweep", *flags, "--epochs", EPOCHS, "--weight-decay", 0.01, "--no-refit", "--device", "cpu",
                 "--out", tmp_path / "sweep")
    assert result.exit_code == 130 and not ctrl_c_in_figures, result.output
    assert "interrupted while drawing the chosen run's figures" in plain(result.stderr)
    assert (tmp_path / "sweep" / "sweep.json").is_file()


def test_a_sweep_killed_for_real_at_random_moments_resumes_to_the_unbroken_sweep(mnist_root, tmp_path):
    """SIGKILL to a real sweep process at seeded random moments, each resume killed again, until one finishes."""
    import random

    from conftest import run_imgcls, start_python

    args = ["--dataset", "mnist", "--data-dir", mnist_root, "--limit", "2000", "--epochs", "3", "--batch-size", "32",
            "--lr", "0.001,0.01", "--momentum", "0,0.9", "--device", "cpu", "--quiet"]
    whole = run_imgcls("sweep", *args, "--out", tmp_path / "whole", timeout=300)
    assert whole.returncode == 0, whole.stderr
    draw, out = random.Random(21), tmp_path / "cut"
    command = ["sweep", *args, "--out", out]
    for _ in range(3):
        process = start_python("-m", "imgcls", *command)
        try:
            process.wait(timeout=draw.uniform(2.5, 5.0))
        except Exception:
            process.kill()
            process.wait()
        if (out / "sweep.json").is_file():
            break
        command = ["sweep", "--resume", out, "--quiet"] if (out / "sweep.yaml").is_file() else command
    finished = run_imgcls(*command, timeout=300) if not (out / "sweep.json").is_file() else None
    assert finished is None or finished.returncode == 0, finished.stderr
    assert_same_sweep(sweep_files(out), sweep_files(tmp_path / "whole"))


def test_resume_refuses_an_edited_point_or_sweep_yaml_and_an_older_sweep(tmp_path, cli, monkeypatch,
                                                                         assert_user_error):
    import yaml

    with monkeypatch.context() as patch:
        InterruptAfter(patch, 3)
        with pytest.raises(sweeping.SweepInterrupted):
            run_sweep(tmp_path / "s", lr="0.01,0.1")
    point = tmp_path / "s" / "points" / "001" / "config.yaml"
    original = point.read_text()
    config = yaml.safe_load(original)
    config["optim"]["lr"] = 0.3
    point.write_text(yaml.safe_dump(config, sort_keys=False))
    assert_user_error(cli("sweep", "--resume", tmp_path / "s"), "points/001/config.yaml",
                      "optim.lr is 0.3 in config.yaml but 0.1 in the sweep")
    point.write_text(original)
    spec_file = tmp_path / "s" / "sweep.yaml"
    spec_text = spec_file.read_text()
    spec = yaml.safe_load(spec_text)
    spec["base"]["optim"]["weight_decay"] = 0.5
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert_user_error(cli("sweep", "--resume", tmp_path / "s"), "sweep.yaml", "optim.weight_decay")
    spec_file.write_text(spec_text)
    state = tmp_path / "s" / "resume" / "group-000.safetensors"
    state.rename(tmp_path / "s" / "points" / "000" / "last.safetensors")  # as an older imgcls left its sweeps
    assert_user_error(cli("sweep", "--resume", tmp_path / "s"), "older imgcls", "start a new sweep")


def test_a_one_point_sweep_is_imgcls_train_bit_for_bit(tmp_path):
    flags = {"lr": 0.02, "momentum": 0.9, "weight_decay": 0.001, "threads": 1}
    run_sweep(tmp_path / "sweep", **{name: str(value) for name, value in flags.items()})
    alone = train_alone(tmp_path / "alone", flags)
    for name in ("best.safetensors", "last.safetensors"):
        a, b = ckpt.load(alone.run_dir.path / name), ckpt.load(tmp_path / "sweep" / "points" / "000" / name)
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias), name


def test_a_sweep_refused_before_any_point_trained_leaves_the_folder_free(cli, tmp_path, assert_ok, assert_user_error):
    out = tmp_path / "s"
    assert_user_error(cli("sweep", "--lr", "0.01,0.1", "--epochs", 1, "--limit", 300, "--class-weights", "1,2,3",
                          "--device", "cpu", "--out", out), "--class-weights", "10 classes")
    assert not (out / "sweep.yaml").exists()
    assert_ok(cli("sweep", "--lr", "0.01,0.1", "--epochs", 1, "--limit", 300, "--device", "cpu", "--out", out, "-q"))


def test_a_sweep_with_batch_size_auto_trains(cli, tmp_path, assert_ok):
    """--batch-size auto is resolved once per group, as a run resolves it (its note has a view to go to)."""
    out = tmp_path / "s"
    assert_ok(cli("sweep", "--lr", "0.01,0.1", "--epochs", 1, "--limit", 300, "--batch-size", "auto", "--no-refit",
                  "--device", "cpu", "--out", out, "-q"))
    assert (out / "sweep.json").is_file()


def test_a_three_class_sweep_names_its_top3(tmp_path):
    from torchvision.io import write_png

    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 20), ("test", 6)):
        for name in ("ant", "bee", "cat"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for index in range(count):
                write_png(torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=generator),
                          str(tmp_path / "data" / split / name / f"{index:03d}.png"))
    run_sweep(tmp_path / "s", dataset="imagefolder", data_dir=str(tmp_path / "data"), lr="0.001,0.01")
    header = (tmp_path / "s" / "sweep.csv").read_text().splitlines()[0].split(",")
    assert "val_top3" in header and "test_top3" in header and not any("top5" in column for column in header)
    points = json.loads((tmp_path / "s" / "sweep.json").read_text())["points"]
    assert all("val_top3" in point and "val_top5" not in point for point in points)


def test_a_sweep_point_whose_best_checkpoint_is_gone_is_refused_on_resume(tmp_path, monkeypatch):
    """It resumed, left the point out of the choice without a word, and chose another point than the whole sweep."""
    from imgcls.errors import UserError

    grid = {"lr": "0.003,0.03", "batch_size": "128"}
    with monkeypatch.context() as patch:
        InterruptAfter(patch, 30)  # in the second epoch: each point has a best epoch
        with pytest.raises(sweeping.SweepInterrupted):
            run_sweep(tmp_path / "cut", **grid)
    (tmp_path / "cut" / "points" / "001" / "best.safetensors").unlink()
    with pytest.raises(UserError, match="best epoch .* gone or not a file"):
        resume_sweep(tmp_path / "cut")
