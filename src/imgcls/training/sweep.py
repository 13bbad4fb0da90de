"""`imgcls sweep`: a grid of models and the point that validation prefers. Points whose batches are the same
(grid.py) train stacked (engine.py), each in a run folder as `imgcls train` writes one; a group's state is one file,
so `imgcls sweep --resume DIR` ends exactly as an unbroken sweep. The sweep folder (sweepdir.py) gets the results.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from imgcls import distributed
from imgcls.config import AUTO_EPOCHS, GIVEN_NONE, Config, build_config
from imgcls.data.batches import make_batches, make_eval_batches
from imgcls.device import cpu_threads, resolve_device, step_threads
from imgcls.training.engine import Engine, Interrupted, Model, Quiet, new_model
from imgcls.errors import UserError
from imgcls.training.grid import Point, describe, grid_points, group_key, parse_axes, point_config
from imgcls.training.interrupt import StopRequest, stop_on_signals
from imgcls.memory import available_memory
from imgcls.linear.metrics import Metrics, top_k
from imgcls.training.resume import config_changes
from imgcls.runs.sweepdir import REFIT, SweepDir
from imgcls.training.selection import DECAYS, rates
from imgcls.training.train import Phases, prepare_once, resolve_batch_size, resolve_epochs

SELECTED_BY = "the lowest validation loss (ties: the earlier point); the test split is reported for every point but " \
              "never used to choose"


@dataclass
class Group:
    """Points whose batches are the same: they train stacked."""

    number: int
    points: list[Point]
    configs: list[Config]

    @property
    def epochs(self) -> int:
        """At most (the progress bar's length): --epochs auto is resolved with the data, in run_group."""
        epochs = self.configs[0].train.epochs
        return AUTO_EPOCHS if epochs == "auto" else epochs


@dataclass
class SweepResult:
    sweep: SweepDir
    records: list[dict]  # one per point, in grid order
    best: int | None  # the chosen point's index; None when every point diverged
    seconds: float = 0.0
    groups: list[Group] = field(default_factory=list)
    refit: dict | None = None  # the chosen point's refit on all training images: its folder and test figures


class SweepInterrupted(Exception):
    def __init__(self, sweep: SweepDir):
        super().__init__(f"sweep interrupted; resumable checkpoints of every model are in {sweep.path}")
        self.sweep = sweep


def make_groups(base: Config, points: list[Point]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for point in points:
        config = point_config(base, point)
        if config.output.tensorboard:
            raise UserError("a sweep writes no TensorBoard events; drop --tensorboard (compare its points with "
                            "`imgcls compare DIR/points/000 DIR/points/001 ...`)")
        if config.train.precision != "fp32" or config.train.gradient != "analytic":
            raise UserError("a sweep trains its models stacked with the analytic float32 step; drop --precision and "
                            "--gradient (train the chosen point with them afterwards)")
        group = groups.setdefault(group_key(config), Group(len(groups), [], []))
        group.points.append(point)
        group.configs.append(config)
    return list(groups.values())


def select(records: list[dict]) -> int | None:
    """The point with the lowest validation loss (metrics.better's statistic), ties to the earlier point. Only
    validation is read; a diverged point is never chosen (point_record makes a non-finite loss None)."""
    eligible = [(r["val_loss"], r["point"]) for r in records if not r["diverged"] and r["val_loss"] is not None]
    return min(eligible)[1] if eligible else None


def run_group(sweep: SweepDir, group: Group, shard: distributed.Shard, device: torch.device, resume: bool,
              stop: StopRequest, bar) -> list[dict]:
    config = group.configs[0]
    data = prepare_once(config, shard, stop)
    batch_size = resolve_batch_size(config, data, device, Quiet())
    features, classes = math.prod(data.shape), len(data.classes)
    check_group_fits(len(group.points), classes, features, batch_size, device)
    saved = saved_threads(sweep, group) if resume else None
    with cpu_threads(saved or config.train.threads):
        threads = saved or step_threads(config.train.threads, batch_size, features, classes * len(group.points),
                                        device, shard.world)
        for point_config_ in group.configs:
            point_config_.train.threads = threads
            resolve_epochs(point_config_, math.ceil(len(data.train) / batch_size))
        train_batches = make_batches(data, "train", batch_size, device, config.train.seed, shard=shard,
                                     augment=config.data.augment)
        models = [new_model(point_config_, data, sweep.point(point.index), len(train_batches), device)
                  for point, point_config_ in zip(group.points, group.configs)]
        state = sweep.group_state(group.number)
        engine = Engine(models, data, train_batches, make_eval_batches(data, "val", device, shard), device, state,
                        stop, Quiet(bar), shard)
        if resume and state.is_file():
            engine.resume("sweep.yaml")
            check_points_unedited(models)
        elif resume and any(model.run.last.is_file() for model in models):
            raise UserError(f"{sweep.path} was written by an older imgcls, whose sweeps kept no {state.name}; it "
                            f"cannot resume: start a new sweep (its finished points' run folders stay usable)")
        else:
            engine.start_runs()
        try:
            engine.train()
        except Interrupted:
            raise SweepInterrupted(sweep) from None
        results = engine.finish(make_eval_batches(data, "test", device, shard))  # metrics.json of each point
        k = top_k(len(data.classes))
        return [point_record(point, group.number, model, *(result or (None, None)), k=k)
                for point, model, result in zip(group.points, engine.models, results)]


def check_points_unedited(models: list[Model]) -> None:
    """A point's config.yaml says what the point is: a resume refuses one edited since the sweep wrote it."""
    for model in models:
        if model.run.config.is_file():
            changed = config_changes(model.config.to_dict(), model.run.read_config())
            if changed:
                raise UserError(f"{model.run.config} no longer matches the sweep it belongs to: "
                                f"{'; '.join(changed[:3])}; put it back as it was, or start a new sweep")


def saved_threads(sweep: SweepDir, group: Group) -> int | None:
    """The thread count an interrupted group chose (its points' config.yaml): a resumed group uses it again."""
    for point in group.points:
        run = sweep.point(point.index)
        if run.config.is_file():
            return run.read_config().get("train", {}).get("threads")
    return None


def check_group_fits(points: int, classes: int, features: int, batch_size: int, device: torch.device) -> None:
    """Weights, momentum, gradient and best weights (4 copies of P*K*D floats), and the scores (P*K per image)."""
    per_point = 4 * (4 * classes * features + 3 * classes * batch_size)
    available = available_memory() if device.type == "cpu" else torch.cuda.mem_get_info(device)[0]
    if available is not None and per_point * points > available:
        fit = max(available // per_point, 0)
        raise UserError(f"{points} stacked models of {classes}x{features} weights would need about "
                        f"{per_point * points / 1e9:.1f} GB of {device.type} memory, more than the "
                        f"{available / 1e9:.1f} GB available; about {fit} points fit at once: give fewer values")


def point_record(point: Point, group: int, model: Model, val: Metrics | None, test: Metrics | None,
                 k: int = 5) -> dict:
    """The point's row of sweep.json and sweep.csv; top-k named by the data's k (val_top3 for 3 classes)."""
    history, best_epoch = model.progress.history, model.progress.best_epoch
    record = {"point": point.index, "group": group, "options": {name: describe(value) for name, value in
                                                                point.values.items()},
              "best_epoch": None if best_epoch is None else best_epoch + 1, "epochs_run": len(history),
              "diverged": model.diverged is not None, "seconds": round(sum(r["seconds"] for r in history), 3),
              "run": str(model.run.path.relative_to(model.run.path.parent.parent))}
    for split, metrics in (("val", val), ("test", test)):
        for key in ("top1", "top5", "loss"):
            value = None if metrics is None else getattr(metrics, key)
            name = f"top{k}" if key == "top5" else key
            record[f"{split}_{name}"] = value if value is None or math.isfinite(value) else None
    return record


def refit_best(sweep: SweepDir, result: SweepResult, reporter, shard: distributed.Shard,
               device: torch.device) -> dict:
    """The chosen point's refit (train.py's) in SWEEP/refit: the sweep's model, resumable as a run's refit is."""
    point = sweep.point(result.best)
    config = Config.from_dict(point.read_config(), str(point.config))  # its resolved epochs and threads
    with cpu_threads(config.train.threads), stop_on_signals() as stop:
        data = prepare_once(config, shard, stop)
        phases = Phases(config, data, resolve_batch_size(config, data, device, Quiet()), device, shard, sweep.refit,
                        stop, reporter)
        chosen = sweep.refit.read_selection() or phases.choose(
            result.records[result.best]["best_epoch"], point.read_epochs(), float(config.optim.lr),
            point.read_metrics()["val"], f"the validation split, as point {result.best} of the sweep")
        try:
            test = phases.refit(chosen).test
        except Interrupted:  # train.py's RunInterrupted
            raise SweepInterrupted(sweep) from None
    return {"run": REFIT, "point": result.best, "epochs": chosen["epochs"], "images": len(data.train) + len(data.val),
            "test": test.summary()}


def plan(config_file, flags: dict[str, str | None], overwrite: bool, check: bool = True) -> tuple[SweepDir, dict]:
    """A new sweep's folder and spec: options given one value join the base config (defaults, then --config);
    options given several make the grid. `check`: refuse a folder that holds other files (the main process's
    job: under torchrun the others take its folder)."""
    axes = parse_axes(flags)
    singles = {name: GIVEN_NONE if values[0] is None else values[0]
               for name, values in axes.items() if len(values) == 1}
    base = build_config(config_file, singles)
    grid = {name: values for name, values in axes.items() if len(values) > 1}
    for name, values in (("lr", rates(base)), ("weight_decay", DECAYS)):  # 'auto': the default search's values
        if getattr(base.optim, name) == "auto" and name not in grid:
            grid[name] = list(values)
    sweep = SweepDir.for_new_sweep(base.output.out, base.data.dataset, overwrite, check)
    base.output.out = None
    return sweep, {"base": base.to_dict(), "grid": grid}


def run(sweep: SweepDir, spec: dict, reporter, resume: bool) -> SweepResult:
    """Train the grid (or the rest of it), then write the figure, sweep.csv, the link to the best and sweep.json.
    Under torchrun every process trains its part of each batch; the main one writes."""
    if not all(isinstance(values, list) and values for values in spec["grid"].values()):
        raise UserError("sweep.yaml's grid must map each option to a list of values; start a new sweep")
    groups = make_groups(Config.from_dict(spec["base"], "sweep.yaml's base"), grid_points(spec["grid"]))
    shard, device = distributed.setup(resolve_device(groups[0].configs[0].train.device))
    sweep = SweepDir(Path(distributed.from_main(str(sweep.path))))  # the main process's folder, on every process
    if not resume and shard.is_main:
        sweep.start(spec)
    distributed.barrier()
    started, records, done = time.perf_counter(), [], 0.0
    try:
        with reporter.sweep_bar(sum(group.epochs for group in groups)) as bar, stop_on_signals() as stop:
            for group in groups:
                where = f"group {group.number + 1}/{len(groups)}, " if len(groups) > 1 else ""
                records += run_group(sweep, group, shard, device, resume, stop,
                                     lambda fraction, text: bar(done + fraction, where + text))
                done += group.epochs
    except UserError:
        if not resume and shard.is_main:
            sweep.remove_if_untrained()
        raise
    records.sort(key=lambda record: record["point"])
    result = SweepResult(sweep, records, select(records), time.perf_counter() - started, groups)
    if result.best is not None and groups[0].configs[0].train.refit:
        result.refit = refit_best(sweep, result, reporter, shard, device)
    if shard.is_main:
        shown_grid = {name: [describe(v) for v in values] for name, values in spec["grid"].items()}
        reporter.sweep_figure(sweep.figure, result.records, shown_grid, result.best)
        summary = {"selected_by": SELECTED_BY, "test_used_for_selection": False, "best_point": result.best,
                   "grid": shown_grid, "groups": len(result.groups), "seconds": round(result.seconds, 3)}
        if result.refit is not None:
            summary["refit"] = result.refit
        if result.best is not None:
            sweep.link_best(result.best)
        sweep.write_results(result.records, summary)  # sweep.json last: a finished sweep has it; --resume refuses it
    return result
