"""`imgcls train` read top to bottom: the data, batch size and threads; the search of the settings left 'auto'
(selection.py); the fit, whose validation split chooses the epochs (skipped where cross-validation chose them); the
refit on all training images; last the test split, once. Under torchrun only the main process writes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from imgcls import distributed
from imgcls.config import AUTO_EPOCHS, AUTO_UPDATES, Config
from imgcls.data.batches import make_batches, make_eval_batches
from imgcls.data.decode import ProgressCallback
from imgcls.data.prepare import prepare
from imgcls.data.split import joined
from imgcls.data.types import PreparedData
from imgcls.device import auto_batch_size, cpu_threads, resolve_device, set_precision, step_threads
from imgcls.errors import UserError
from imgcls.files import move
from imgcls.linear.metrics import Metrics, top_k
from imgcls.runs import checkpoint as ckpt
from imgcls.runs.rundir import RunDir
from imgcls.training import selection
from imgcls.training.engine import Engine, Interrupted, new_model, write_final_metrics
from imgcls.training.interrupt import StopRequest, stop_on_signals
from imgcls.training.selection import Selection, cross_validates


@dataclass
class RunResult:
    run_dir: RunDir
    best_epoch: int  # counted from 1, as printed
    val: Metrics
    test: Metrics | None  # None: a fit that a refit follows
    history: list[dict] = field(default_factory=list)


class RunInterrupted(Interrupted):
    """A run stopped by a signal; `resumable`: its folder holds a last.safetensors to resume from."""

    def __init__(self, message: str, run_dir: RunDir, resumable: bool):
        super().__init__(message)
        self.run_dir, self.resumable = run_dir, resumable


def train(config: Config, reporter, overwrite: bool = False, resume: RunDir | None = None) -> RunResult:
    with cpu_threads(config.train.threads), stop_on_signals() as stop:
        shard, device = distributed.setup(resolve_device(config.train.device))
        autocast = set_precision(config.train.precision, device)
        run = resume or distributed.from_main(RunDir.for_new_run(config.output.out, config.data.dataset, overwrite))
        data = load_data(config, shard, stop, reporter)
        if distributed.any_process(stop.requested, device):  # the signal rule, before anything new is written
            kept = "the run folder is as it was" if resume is not None else "nothing was written"
            raise RunInterrupted(f"interrupted while the data was loaded; {kept}", run, resume is not None)
        batch_size = resolve_batch_size(config, data, device, reporter)
        if resume is None:  # a resumed run keeps its count; None (a run of an older imgcls) is torch's default
            config.train.threads = step_threads(config.train.threads, batch_size, math.prod(data.shape),
                                                len(data.classes), device, shard.world)
            resolve_epochs(config, math.ceil(len(data.train) / batch_size))
        phases = Phases(config, data, batch_size, device, shard, run, stop, reporter, autocast)
        chosen = None if resume is None else read_choice(config, run)
        if resume is None and needs_search(config, data):
            search = phases.search()
            if search.epochs is not None and config.train.refit:  # cross-validation chose the epochs too
                chosen = phases.choose(search.epochs, search.history, search.lr, search.val, search.how, shown=True)
        if chosen is None:
            fit = phases.fit(resume is not None)
            if not config.train.refit:
                return fit
            chosen = phases.choose(fit.best_epoch, fit.history, float(config.optim.lr), fit.val.summary(),
                                   f"the {fit.val.count:,} validation images")
        return phases.refit(chosen)


def read_choice(config: Config, run: RunDir) -> dict | None:
    """A resumed run's choices are made: config.yaml records its values ('auto' there was put back by hand) and
    selection.json what its refit trains."""
    auto = [name for name, value in (("optim.lr", config.optim.lr), ("optim.weight_decay", config.optim.weight_decay),
                                     ("train.epochs", config.train.epochs)) if value == "auto"]
    if auto:
        raise UserError(f"{run.config} says {auto[0]}: auto, but a run records the values it chose; put the number "
                        f"back, or start a new run (--overwrite) to choose again")
    chosen = run.read_selection()
    if chosen is not None and chosen["epochs"] > config.train.epochs:
        raise UserError(f"{run.selection} says {chosen['epochs']} epochs, more than the {config.train.epochs} of "
                        f"{run.config}; it is damaged: start the run again with --overwrite")
    return chosen


def needs_search(config: Config, data: PreparedData) -> bool:
    """The grid runs for a setting left 'auto', and on small data with a refit for its epochs (cross-validated)."""
    return "auto" in (config.optim.lr, config.optim.weight_decay) or (config.train.refit and cross_validates(data))


def resolve_epochs(config: Config, steps_per_epoch: int) -> None:
    """--epochs auto: AUTO_EPOCHS, or with the plateau schedule AUTO_UPDATES updates where an epoch is a few (small
    data converges in updates, not epochs; a schedule with a horizon decays over AUTO_EPOCHS)."""
    if config.train.epochs == "auto":
        plateau = config.schedule.schedule == "plateau"
        config.train.epochs = max(AUTO_EPOCHS, math.ceil(AUTO_UPDATES / max(steps_per_epoch, 1)) if plateau else 0)


@dataclass
class Phases:
    """The stages of a run after its data: the search, the fit on the training part, the refit on all."""

    config: Config
    data: PreparedData
    batch_size: int
    device: torch.device
    shard: distributed.Shard
    run: RunDir
    stop: StopRequest
    reporter: object
    autocast: torch.dtype | None = None
    seconds: dict = field(default_factory=dict)
    search_result: Selection | None = None

    def search(self) -> Selection:
        """The grid (selection.py); config.yaml records its choice, so `imgcls train --config RUN/config.yaml`
        repeats the run without searching again."""
        config, data, settings = self.config, self.data, selection.grid(self.config)
        if len(settings) > 1:
            what = f"searching {len(settings)} settings (lr {_span([rate for rate, _ in settings])} x weight decay " \
                   f"{_span([decay for _, decay in settings])})"
        else:
            what = f"choosing the epochs of lr {config.optim.lr:g}, weight decay {config.optim.weight_decay:g}"
        held_out = f"{selection.FOLDS}-fold cross-validation of all {len(data.train) + len(data.val):,} images" if \
            cross_validates(data) else f"at most {selection.SEARCH_IMAGES:,} training images, on the validation split"
        self.reporter.note(f"{what} by held-out loss ({held_out})")
        try:
            search = selection.search(config, data, self.batch_size, self.device, self.stop, self.shard)
        except Interrupted:
            searched = "the search of --lr/--weight-decay auto" if len(settings) > 1 else "the choice of the epochs"
            raise RunInterrupted(f"interrupted during {searched}; nothing was written: run the command again",
                                 self.run, False) from None
        config.optim.lr, config.optim.weight_decay = search.lr, search.weight_decay
        row = search.chosen_row()
        top1 = "-" if row["val_top1"] is None else f"{row['val_top1']:.2%}"
        scaled = "" if search.weight_decay == row["weight_decay"] else \
            f" ({row['weight_decay']:g} on the search's images, scaled to the run's)"
        self.reporter.note(f"chose lr {search.lr:g}, weight decay {search.weight_decay:g}{scaled} (held-out loss "
                           f"{row['val_loss']:.4f}, top-1 {top1}; {search.seconds:.1f} s); config.yaml records them")
        self.seconds["search"] = search.seconds
        self.search_result = search
        return search

    def start_run(self) -> None:
        if self.shard.is_main:
            self.run.start()
            self.run.write_config(self.config.to_dict())

    def keep_figure(self) -> None:
        """The search's figure, drawn once what resumes the run is written (it takes a second)."""
        if self.search_result is not None and self.shard.is_main:
            self.reporter.search_figure(self.run.lr_search, self.search_result.rows, self.search_result.how)

    def fit(self, resumed: bool) -> RunResult:
        """One model on the training part, its epochs chosen on the validation split: the whole run with
        --no-refit; with a refit, where its epochs come from."""
        config, data, run, device, shard = self.config, self.data, self.run, self.device, self.shard
        started = time.perf_counter()
        train_batches = make_batches(data, "train", self.batch_size, device, config.train.seed, shard=shard,
                                     augment=config.data.augment)
        model = new_model(config, data, run, len(train_batches), device)
        engine = Engine([model], data, train_batches, make_eval_batches(data, "val", device, shard), device, run.last,
                        self.stop, self.reporter, shard, self.autocast)
        if resumed:
            engine.resume()
            if shard.is_main and run.read_config().get("data", {}).get("data_dir") != config.data.data_dir:
                run.write_config(config.to_dict())  # the data was moved: the next resume looks where it is now
            self.reporter.note(f"resuming {run.path} at epoch {model.progress.epoch + 1}, step {model.progress.step}")
        else:
            self.start_run()
            if self.search_result is not None:  # stopped before its first epoch's end, it resumes here, not searching
                engine.save()
            self.keep_figure()
        self.train(engine)
        if model.finished_early():
            decayed = " after the last decay of the rate" if config.schedule.schedule == "plateau" else ""
            self.reporter.note(f"stopped early: no lower validation loss for {config.train.patience} epochs{decayed}")
        self.seconds["fit"] = time.perf_counter() - started
        progress = model.progress
        if config.train.refit:
            return RunResult(run, progress.best_epoch + 1, Metrics.of_summary(progress.best_val), None,
                             progress.history)
        val, test = engine.finish(make_eval_batches(data, "test", device, shard))[0]
        return RunResult(run, progress.best_epoch + 1, val, test, progress.history)

    def train(self, engine: Engine) -> None:
        try:
            engine.train()
        except Interrupted as stopped:
            raise RunInterrupted(str(stopped), self.run, True) from None

    def choose(self, epochs: int, history: list[dict], rate: float, val: dict, how: str, shown: bool = False) -> dict:
        """selection.json, written before the refit (a resumed refit reads it): the chosen epochs, the held-out
        figures that chose them and on what, and the chooser's rate of each epoch as a factor of `rate`, so that
        the refit decays where it did. `shown`: epochs.jsonl shows `history` (cross-validation's)."""
        chosen = {"epochs": epochs, "factors": [record["lr"] / rate for record in history[:epochs]], "val": val,
                  "how": how, "seconds": self.seconds}
        started = not self.run.config.is_file()
        if started:
            self.start_run()
        if self.shard.is_main:
            if shown:
                self.run.write_epochs(history, k=top_k(len(self.data.classes)))
            self.run.write_selection(chosen)
        if started:
            self.keep_figure()
        return chosen

    def refit(self, chosen: dict) -> RunResult:
        """The chosen settings for the chosen epochs on every training image, replaying the chooser's rates: the
        run's model, best.safetensors, whose metadata keeps the held-out figures that chose it. Resumable from
        run.refit, which becomes last.safetensors at the end."""
        config, data, run, device, shard = self.config, self.data, self.run, self.device, self.shard
        started = time.perf_counter()
        everything = joined(data)
        batches = make_batches(everything, "train", self.batch_size, device, config.train.seed, shard=shard,
                               augment=config.data.augment)
        model = new_model(config, everything, None, len(batches), device)
        model.last_epoch, model.factors = chosen["epochs"], chosen["factors"]
        self.reporter.note(f"refit: {chosen['epochs']} epoch(s) on all {len(everything.train):,} training images "
                           f"(epochs and settings chosen on {chosen['how']})")
        engine = Engine([model], everything, batches, None, device, run.refit, self.stop, self.reporter, shard,
                        self.autocast)
        if run.refit.is_file():
            try:
                engine.resume()
            except UserError as error:
                raise UserError(f"{error}; or delete {run.refit} and --resume again, which redoes the refit") from None
        self.train(engine)
        test = engine.stack.evaluate(make_eval_batches(data, "test", device, shard), data.superclass_of)[0]
        if shard.is_main:
            checkpoint = engine.checkpoint(0)
            checkpoint.meta["val"] = chosen["val"]
            ckpt.save(run.best, checkpoint)
            move(run.refit, run.last)
            seconds = {**chosen.get("seconds", {}), **self.seconds, "refit": time.perf_counter() - started}
            refit = {"images": len(everything.train), "epochs": chosen["epochs"], "chosen_on": chosen["how"]}
            write_final_metrics(run, data, chosen["epochs"], chosen["val"], test, refit=refit, seconds=seconds)
        distributed.barrier()
        return RunResult(run, chosen["epochs"], Metrics.of_summary(chosen["val"]), test, model.progress.history)


def _span(values: list[float]) -> str:
    return f"{min(values):g}" if min(values) == max(values) else f"{min(values):g} to {max(values):g}"


def find_lr(config: Config, reporter) -> Selection:
    """`imgcls lr-find`: the data as `imgcls train` would load it, then the search alone."""
    with cpu_threads(config.train.threads), stop_on_signals() as stop:
        shard, device = distributed.setup(resolve_device(config.train.device))
        data = load_data(config, shard, stop, reporter)
        batch_size = resolve_batch_size(config, data, device, reporter)
        step_threads(config.train.threads, batch_size, math.prod(data.shape),
                     len(data.classes) * len(selection.grid(config)), device, shard.world)
        resolve_epochs(config, math.ceil(len(data.train) / batch_size))
        try:
            return selection.search(config, data, batch_size, device, stop, shard)
        except Interrupted:
            raise Interrupted("interrupted during the search; nothing was written") from None


def load_data(config: Config, shard: distributed.Shard, stop: StopRequest, reporter) -> PreparedData:
    """The dataset decoded with the reporter's progress bar, then announced."""
    with reporter.decoding() as progress:
        data = prepare_once(config, shard, stop, progress)
    reporter.data_ready(data)
    return data


def prepare_once(config: Config, shard: distributed.Shard, stop: StopRequest,
                 progress: ProgressCallback | None = None) -> PreparedData:
    """The main process decodes (and caches) the dataset first; the others then map the cache. After a signal the
    decoding stops at the end of the chunk under way (as a second Ctrl-C would), and nothing is written."""
    def update(done: int, total: int) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        if progress is not None:
            progress(done, total)

    if not shard.is_main:
        distributed.barrier()
    data = prepare(config.data, config.train.seed, progress=update)
    if shard.is_main:
        distributed.barrier()
    return data


def resolve_batch_size(config: Config, data: PreparedData, device: torch.device, reporter) -> int:
    setting, num_images = config.optim.batch_size, len(data.train)
    if setting == "full":
        return num_images
    if setting == "auto":
        chosen = auto_batch_size(num_images, math.prod(data.shape), len(data.classes), device)
        reporter.note(f"--batch-size auto picked {chosen} (largest power of two that fits {device.type} memory, "
                      f"at most the {num_images} training images)")
        return chosen
    return min(setting, num_images)
