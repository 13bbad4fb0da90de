"""`imgcls train` read top to bottom: device and data, the batch size and threads, the learning rate (searched
with --lr auto), then one model trained by the engine (engine.py, P = 1), and last the test split, once.

A run can stop at any moment (Ctrl-C, SIGTERM): the step in flight finishes, the run's last.safetensors is
written, and `imgcls train --resume RUN_DIR` carries on to the same weights and metrics, bit for bit on the CPU.
Under torchrun the same code runs in every process; each takes its part of every global batch, and only the
main process writes the run folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from imgcls import distributed
from imgcls.config import Config
from imgcls.data.batches import make_batches, make_eval_batches
from imgcls.data.decode import ProgressCallback
from imgcls.data.prepare import prepare
from imgcls.data.types import PreparedData
from imgcls.device import auto_batch_size, cpu_threads, resolve_device, set_precision, step_threads
from imgcls.engine import Diverged, Engine, Interrupted, new_model  # noqa: F401 (Diverged: the CLI's)
from imgcls.figures import lr_search_figure
from imgcls.interrupt import StopRequest, stop_on_signals
from imgcls.lrsearch import CANDIDATES, LrSearch, search_lr
from imgcls.metrics import Metrics
from imgcls.rundir import RunDir


@dataclass
class RunResult:
    run_dir: RunDir
    best_epoch: int  # counted from 1, as printed
    val: Metrics
    test: Metrics
    batch_size: int
    history: list[dict] = field(default_factory=list)


class RunInterrupted(Interrupted):
    """A run stopped by a signal; `resumable`: its folder holds a last.safetensors to resume from."""

    def __init__(self, message: str, run_dir: RunDir, resumable: bool):
        super().__init__(message)
        self.run_dir, self.resumable = run_dir, resumable


def train(config: Config, reporter, overwrite: bool = False, resume: RunDir | None = None) -> RunResult:
    with cpu_threads(config.train.threads), stop_on_signals() as stop:
        return _train(config, reporter, overwrite, resume, stop)


def _train(config: Config, reporter, overwrite: bool, resume: RunDir | None, stop: StopRequest) -> RunResult:
    shard, device = distributed.setup(resolve_device(config.train.device))
    autocast = set_precision(config.train.precision, device)
    run = resume or distributed.from_main(RunDir.for_new_run(config.output.out, config.data.dataset, overwrite))
    with reporter.decoding() as decoding_progress:
        data = prepare_once(config, shard, stoppable(decoding_progress, stop))
    reporter.data_ready(data)
    _stop_between_phases(stop, device, run, "while the data was loaded", resume is not None)

    batch_size = resolve_batch_size(config, data, device, reporter)
    if resume is None:  # a resumed run keeps its count; None (a run of an older imgcls) is torch's default
        config.train.threads = step_threads(config.train.threads, batch_size, math.prod(data.shape),
                                            len(data.classes), device, shard.world)
    search = choose_lr(config, data, batch_size, device, shard, reporter, stop, run) \
        if config.optim.lr == "auto" else None

    train_batches = make_batches(data, "train", batch_size, device, config.train.seed, shard=shard,
                                 augment=config.data.augment)
    val_batches = make_eval_batches(data, "val", device, shard)
    model = new_model(config, data, run, len(train_batches), device)
    engine = Engine([model], data, train_batches, val_batches, device, run.last, stop, reporter, shard, autocast)
    if resume is None:
        engine.start_runs()
        if search is not None and shard.is_main:
            keep_search_figure(search, run, reporter)
    else:
        engine.resume()
        if shard.is_main and run.read_config().get("data", {}).get("data_dir") != config.data.data_dir:
            run.write_config(config.to_dict())  # the data was moved: the next resume looks where it is now
        reporter.note(f"resuming {run.path} at epoch {model.progress.epoch + 1}, step {model.progress.step}")
    try:
        engine.train()
    except Interrupted as stopped:
        raise RunInterrupted(str(stopped), run, True) from None

    if model.finished_early():
        decayed = " after the last decay of the rate" if config.schedule.schedule == "plateau" else ""
        reporter.note(f"stopped early: no better validation top-1 for {config.train.patience} epochs{decayed}")
    val, test = engine.finish(make_eval_batches(data, "test", device, shard))[0]
    return RunResult(run, model.progress.best_epoch + 1, val, test, train_batches.batch_size, model.progress.history)


def stoppable(progress: ProgressCallback | None, stop: StopRequest) -> ProgressCallback:
    """The decoding's progress callback, which also obeys the signal rule: after a signal, decoding stops at the
    end of the chunk under way (as a second Ctrl-C would), and nothing is written."""
    def update(done: int, total: int) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        if progress is not None:
            progress(done, total)
    return update


def _stop_between_phases(stop: StopRequest, device: torch.device, run: RunDir, when: str, resumed: bool) -> None:
    """The signal rule between phases that write nothing: stop now, and say that nothing new was kept."""
    if distributed.any_process(stop.requested, device):
        kept = "the run folder is as it was" if resumed else "nothing was written"
        raise RunInterrupted(f"interrupted {when}; {kept}", run, resumed)


def choose_lr(config: Config, data: PreparedData, batch_size: int, device: torch.device, shard: distributed.Shard,
              reporter, stop: StopRequest, run: RunDir) -> LrSearch:
    """--lr auto: the short stacked search on the validation split (lrsearch.py) sets the rate that config.yaml
    records, so `imgcls train --config RUN/config.yaml` repeats the run without searching again."""
    reporter.note(f"--lr auto: training {len(CANDIDATES)} rates from {min(CANDIDATES):g} to {max(CANDIDATES):g} "
                  f"stacked, to pick one by validation top-1")
    try:
        search = search_lr(config, data, batch_size, device, stop, shard)
    except Interrupted:
        raise RunInterrupted("interrupted during the learning-rate search (--lr auto); nothing was written: run "
                             "the command again", run, False) from None
    config.optim.lr = search.chosen
    reporter.note(f"--lr auto chose {search.chosen:g} (validation top-1 {_chosen_top1(search)} after "
                  f"{search.epochs} epoch(s), {search.seconds:.1f} s); config.yaml records it")
    return search


def keep_search_figure(search: LrSearch, run: RunDir, reporter) -> None:
    """The search's figure in the run folder, as lr-find draws it; like the run's other figures, a failure is a
    warning, never the run's end."""
    try:
        lr_search_figure(search.rows(), search.chosen, run.lr_search, search.epochs)
    except Exception as error:  # noqa: BLE001 (a figure must not stop the training it describes)
        reporter.note(f"warning: could not draw {run.lr_search} ({type(error).__name__}: {error})")


def _chosen_top1(search: LrSearch) -> str:
    top1 = search.val_top1[search.lrs.index(search.chosen)]
    return "-" if top1 is None else f"{top1:.2%}"


def find_lr(config: Config, reporter) -> LrSearch:
    """`imgcls lr-find`: the data as `imgcls train` would load it, then the search alone."""
    with cpu_threads(config.train.threads), stop_on_signals() as stop:
        shard, device = distributed.setup(resolve_device(config.train.device))
        with reporter.decoding() as decoding_progress:
            data = prepare_once(config, shard, stoppable(decoding_progress, stop))
        reporter.data_ready(data)
        batch_size = resolve_batch_size(config, data, device, reporter)
        step_threads(config.train.threads, batch_size, math.prod(data.shape), len(data.classes) * len(CANDIDATES),
                     device, shard.world)
        try:
            return search_lr(config, data, batch_size, device, stop, shard)
        except Interrupted:
            raise Interrupted("interrupted during the learning-rate search; nothing was written") from None


def prepare_once(config: Config, shard: distributed.Shard, progress: ProgressCallback | None = None) -> PreparedData:
    """The main process decodes (and caches) the dataset first; the others then map the cache."""
    if not shard.is_main:
        distributed.barrier()
    data = prepare(config.data, config.train.seed, progress=progress)
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
