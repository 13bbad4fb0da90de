"""Training, read top to bottom: data, model, loss, optimizer, then epochs of SGD steps,
each followed by validation, checkpoints and the stopping rule; last, the test split once.

A run can stop at any step (Ctrl-C, SIGTERM): the step in flight finishes, a resumable
checkpoint is written, and `imgcls train --resume RUN_DIR` carries on to the same weights and
metrics, bit for bit on the CPU, as if nothing had happened.

Under torchrun the same code runs in every process: DistributedDataParallel averages the
gradients, each process takes its part of every global batch, and only the main process
writes the run folder.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel

from imgcls import checkpoint as ckpt
from imgcls import distributed
from imgcls.config import Config
from imgcls.data.batches import make_batches, make_eval_batches
from imgcls.data.decode import ProgressCallback
from imgcls.data.prepare import prepare
from imgcls.data.types import PreparedData
from imgcls.device import (
    cpu_threads,
    resolve_device,
    set_precision,
    step_threads,
)
from imgcls.errors import UserError
from imgcls.interrupt import StopRequest, stop_on_signals
from imgcls.lrsearch import CANDIDATES, search_lr
from imgcls.metrics import Metrics, evaluate
from imgcls.progress import Progress
from imgcls.report import Reporter
from imgcls.resume import check_same_run, restore
from imgcls.rundir import RunDir
from imgcls.runstate import (TrainState, end_epoch, new_model, new_state, resolve_batch_size, save_interrupted,
                             write_final_metrics)
from imgcls.step import make_step


@dataclass
class RunResult:
    run_dir: RunDir
    best_epoch: int  # counted from 1, as printed
    val: Metrics
    test: Metrics
    batch_size: int
    history: list[dict] = field(default_factory=list)


class Diverged(UserError):
    """The loss or the weights stopped being finite numbers: the run's checkpoints would diverge again."""


class Interrupted(Exception):
    def __init__(self, run_dir: RunDir, progress: Progress, steps: int):
        super().__init__(f"interrupted at epoch {progress.epoch + 1}, step {progress.step} of {steps}")
        self.run_dir = run_dir


def train(config: Config, reporter: Reporter, overwrite: bool = False, resume: RunDir | None = None) -> RunResult:
    with cpu_threads(config.train.threads):
        return _train(config, reporter, overwrite, resume)


def _train(config: Config, reporter: Reporter, overwrite: bool, resume: RunDir | None) -> RunResult:
    shard, device = distributed.setup(resolve_device(config.train.device))
    autocast_dtype = set_precision(config.train.precision, device)
    torch.manual_seed(config.train.seed)
    run = resume or distributed.from_main(RunDir.for_new_run(config.output.out, config.data.dataset, overwrite))
    with reporter.decoding() as decoding_progress:
        data = prepare_once(config, shard, decoding_progress)
    reporter.data_ready(data)

    batch_size = resolve_batch_size(config, data, device, reporter)
    if resume is None:  # a resumed run keeps its count; None (a run of an older imgcls) is torch's default
        config.train.threads = step_threads(config.train.threads, batch_size, math.prod(data.shape),
                                            len(data.classes), device, shard.world)
    if config.optim.lr == "auto":
        choose_lr(config, data, batch_size, device, shard, reporter)
    train_batches = make_batches(data, "train", batch_size, device, config.train.seed, shard=shard,
                                 augment=config.data.augment)
    val_batches = make_eval_batches(data, "val", device, shard)
    torch.manual_seed(config.train.seed)  # the init's draws, whatever ran before (the search draws its own)
    model = new_model(config, data, device)
    state = new_state(run, config, data, shard, model, len(train_batches), device)
    if resume is None and shard.is_main:
        run.start()
        run.write_config(config.to_dict())
    if resume is not None:
        resume_from(state, device, len(train_batches))
        reporter.note(f"resuming {run.path} at epoch {state.progress.epoch + 1}, step {state.progress.step}")
    stepper = DistributedDataParallel(model) if shard.world > 1 else model

    with stop_on_signals() as stop:
        while state.more_epochs():
            if not train_one_epoch(state, stepper, train_batches, autocast_dtype, reporter, stop):
                save_interrupted(state)
                raise Interrupted(run, state.progress, len(train_batches))
            val = evaluate(model, val_batches, state.loss, len(data.classes), data.superclass_of)
            check_finite_val(state.progress, val.loss)
            end_epoch(state, val, reporter)
            if state.more_epochs() and distributed.any_process(stop.requested, device):
                raise Interrupted(run, state.progress, len(train_batches))  # end_epoch has just written `last`

    if state.finished_early():
        decayed = " after the last decay of the rate" if config.schedule.schedule == "plateau" else ""
        reporter.note(f"stopped early: no better validation top-1 for {config.train.patience} epochs{decayed}")
    return finish(state, val_batches, train_batches.batch_size)


def choose_lr(config: Config, data: PreparedData, batch_size: int, device: torch.device, shard: distributed.Shard,
              reporter: Reporter) -> None:
    """--lr auto: the short stacked search on the validation split (lrsearch.py) sets the rate that config.yaml
    records, so `imgcls train --config RUN/config.yaml` repeats the run without searching again."""
    if shard.world > 1:
        raise UserError("--lr auto searches in one process; run `imgcls lr-find` with the same config and pass the "
                        "rate it suggests as --lr")
    reporter.note(f"--lr auto: training {len(CANDIDATES)} rates from {min(CANDIDATES):g} to {max(CANDIDATES):g} "
                  f"stacked, to pick one by validation top-1")
    search = search_lr(config, data, batch_size, device)
    config.optim.lr = search.chosen
    reporter.note(f"--lr auto chose {search.chosen:g} (validation top-1 {_shown_top1(search)} after "
                  f"{search.epochs} epoch(s), {search.seconds:.1f} s); config.yaml records it")


def _shown_top1(search) -> str:
    top1 = search.val_top1[search.lrs.index(search.chosen)]
    return "-" if top1 is None else f"{top1:.2%}"


def resume_from(state: TrainState, device: torch.device, steps_per_epoch: int) -> None:
    run, config = state.run, state.config
    saved = ckpt.load(run.last)
    try:
        check_same_run(saved, config, state.data)
        restore(saved, state.model, state.optimizer, state.scheduler, state.progress, device, state.shard,
                steps_per_epoch)
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError, AttributeError) as error:
        raise UserError(f"{run.last} cannot resume this run ({type(error).__name__}: {str(error)[:200]}); it is "
                        f"damaged: start a new run") from None
    if state.shard.is_main and saved.meta["config"]["data"]["data_dir"] != config.data.data_dir:
        run.write_config(config.to_dict())  # the data was moved: the next resume looks where it is now


def prepare_once(config: Config, shard: distributed.Shard, progress: ProgressCallback | None = None) -> PreparedData:
    """The main process decodes (and caches) the dataset first; the others then map the cache."""
    if not shard.is_main:
        distributed.barrier()
    data = prepare(config.data, config.train.seed, progress=progress)
    if shard.is_main:
        distributed.barrier()
    return data


def train_one_epoch(state: TrainState, stepper, batches, autocast_dtype: torch.dtype | None, reporter: Reporter,
                    stop: StopRequest) -> bool:
    """The rest of this epoch: ceil(N/B) SGD updates in all. False if asked to stop part-way.
    stepper: the model as a step calls it (under torchrun, wrapped to average the gradients)."""
    progress, optimizer, world = state.progress, state.optimizer, batches.shard.world
    stepper.train()
    step = make_step(stepper, state.loss, optimizer, autocast_dtype, state.config.train.gradient, world)
    sync_every = 1 if batches.device.type == "cpu" else 50  # reading the loss back waits for the GPU: do it rarely
    reporter.epoch_start(progress.epoch, len(batches))
    started = time.perf_counter() - progress.seconds
    shown = 0.0  # when the progress bar was last updated: ten times a second is plenty
    for pixels, labels, batch_labels in batches.epoch(progress.epoch, progress.step):
        progress.lr_last = optimizer.param_groups[0]["lr"]  # the rate this update uses, before the schedule moves
        if progress.step == 0:
            progress.lr_first = progress.lr_last
        if len(labels) or world > 1:  # under torchrun every process takes part in each step
            progress.add(step(pixels, labels, batch_labels), len(labels))
        else:  # nothing readable in the whole batch (--skip-bad-images): no update, but still this step of the plan
            progress.step += 1
        state.scheduler.step()
        progress.seconds = time.perf_counter() - started
        if progress.step % sync_every == 0 or progress.step == len(batches):
            check_finite(progress)
            if progress.seconds - shown > 0.1 or progress.step == len(batches):
                shown = progress.seconds
                seen = progress.seen * world
                reporter.step(progress.step, float(progress.loss_sum) / max(float(progress.weight_sum), 1e-12),
                              seen / progress.seconds, images=seen)
        if distributed.any_process(stop.requested, batches.device) and progress.step < len(batches):
            return False
    return True


def finish(state: TrainState, val_batches, batch_size: int) -> RunResult:
    """The test split, measured once, on the checkpoint chosen by validation (and validation again, on it)."""
    run, data, progress, loss = state.run, state.data, state.progress, state.loss
    best_model = ckpt.load(run.best).model().to(val_batches.device)
    test_batches = make_eval_batches(data, "test", val_batches.device, state.shard)
    test = evaluate(best_model, test_batches, loss, len(data.classes), data.superclass_of)
    val = evaluate(best_model, val_batches, loss, len(data.classes), data.superclass_of)
    if state.shard.is_main:
        write_final_metrics(state, val, test)
    return RunResult(run, progress.best_epoch + 1, val, test, batch_size, progress.history)


def check_finite(progress: Progress) -> None:
    if not math.isfinite(float(progress.loss_sum)):
        raise Diverged(f"the loss became {float(progress.loss_sum)} at epoch {progress.epoch + 1}, step "
                        f"{progress.step}: training diverged; {_after_divergence(progress)}")


def check_finite_val(progress: Progress, val_loss: float) -> None:
    """An epoch's last update can make the weights infinite after its loss was measured; validation sees it."""
    if not math.isfinite(val_loss):
        raise Diverged(f"the validation loss became {val_loss} after epoch {progress.epoch + 1}, step "
                        f"{progress.step}: training diverged; {_after_divergence(progress)}")


def _after_divergence(progress: Progress) -> str:
    if progress.history:
        return "lower --lr (the last good checkpoints are kept)"
    return ("lower --lr and start again, with --overwrite to reuse --out (no epoch had finished, so no checkpoint "
            "was kept)")
