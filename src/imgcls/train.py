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
from imgcls.data.prepare import PreparedData, prepare
from imgcls.data.registry import SPECS
from imgcls.device import auto_batch_size, cpu_threads, resolve_device, set_precision, step_threads
from imgcls.errors import UserError
from imgcls.interrupt import StopRequest, stop_on_signals
from imgcls.losses import Loss, class_weights
from imgcls.metrics import Metrics, evaluate
from imgcls.model import LinearClassifier
from imgcls.optim import build_optimizer, build_scheduler
from imgcls.progress import Progress
from imgcls.report import Reporter
from imgcls.resume import check_same_run, data_fingerprint, restore
from imgcls.rundir import RunDir
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
    config.train.threads = step_threads(config.train.threads, batch_size, math.prod(data.shape), len(data.classes),
                                        device, shard.world)
    train_batches = make_batches(data.train, data.normalization, batch_size, device, config.train.seed, shard=shard)
    val_batches = make_eval_batches(data.val, data.normalization, device, shard)
    model = LinearClassifier(data.shape, len(data.classes), config.model.init, config.model.init_std).to(device)
    weights = class_weights(config.loss.class_weights, data.train.labels, len(data.classes), device)
    loss = Loss(config.loss.loss, weights)
    optimizer = build_optimizer(model, config.optim, device)
    scheduler = build_scheduler(optimizer, config.schedule, len(train_batches), config.train.epochs)
    progress = Progress()
    progress.start_epoch(device)
    if resume is None and shard.is_main:
        run.start()
        run.write_config(config.to_dict())
    if resume is not None:
        resume_from(run, config, data, model, optimizer, scheduler, progress, device, shard, len(train_batches))
        reporter.note(f"resuming {run.path} at epoch {progress.epoch + 1}, step {progress.step}")
    stepper = DistributedDataParallel(model) if shard.world > 1 else model

    with stop_on_signals() as stop:
        while progress.epoch < config.train.epochs and not finished_early(progress, config.train.patience):
            if not train_one_epoch(stepper, train_batches, loss, optimizer, scheduler, progress, reporter,
                                   autocast_dtype, stop, config.train.gradient):
                save_interrupted(run, model, data, config, progress, optimizer, scheduler, shard)
                raise Interrupted(run, progress, len(train_batches))
            val = evaluate(model, val_batches, loss, len(data.classes), data.superclass_of)
            check_finite_val(progress, val.loss)
            end_epoch(run, model, data, config, progress, optimizer, scheduler, val, reporter, shard)
            more = progress.epoch < config.train.epochs and not finished_early(progress, config.train.patience)
            if more and distributed.any_process(stop.requested, device):
                raise Interrupted(run, progress, len(train_batches))  # end_epoch has just written `last`

    if finished_early(progress, config.train.patience):
        reporter.note(f"stopped early: no better validation top-1 for {config.train.patience} epochs")
    return finish(run, data, loss, val_batches, progress, train_batches.batch_size, shard)


def resume_from(run: RunDir, config: Config, data: PreparedData, model, optimizer, scheduler, progress: Progress,
                device: torch.device, shard: distributed.Shard, steps_per_epoch: int) -> None:
    saved = ckpt.load(run.last)
    try:
        check_same_run(saved, config, data)
        restore(saved, model, optimizer, scheduler, progress, device, shard, steps_per_epoch)
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError, AttributeError) as error:
        raise UserError(f"{run.last} cannot resume this run ({type(error).__name__}: {str(error)[:200]}); it is "
                        f"damaged: start a new run") from None
    if shard.is_main and saved.meta["config"]["data"]["data_dir"] != config.data.data_dir:
        run.write_config(config.to_dict())  # the data was moved: the next resume looks where it is now


def prepare_once(config: Config, shard: distributed.Shard, progress: ProgressCallback | None = None) -> PreparedData:
    """The main process decodes (and caches) the dataset first; the others then map the cache."""
    if not shard.is_main:
        distributed.barrier()
    data = prepare(config.data, config.train.seed, progress)
    if shard.is_main:
        distributed.barrier()
    return data


def train_one_epoch(model, batches, loss: Loss, optimizer, scheduler, progress: Progress, reporter: Reporter,
                    autocast_dtype: torch.dtype | None, stop: StopRequest, gradient: str = "analytic") -> bool:
    """The rest of this epoch: ceil(N/B) SGD updates in all. False if asked to stop part-way."""
    model.train()
    device = batches.device
    step = make_step(model, loss, optimizer, autocast_dtype, gradient, batches.shard.world)
    sync_every = 1 if device.type == "cpu" else 50  # reading the loss back waits for the GPU: do it rarely
    reporter.epoch_start(progress.epoch, len(batches))
    started = time.perf_counter() - progress.seconds
    shown = 0.0  # when the progress bar was last updated: ten times a second is plenty
    for pixels, labels, batch_labels in batches.epoch(progress.epoch, progress.step):
        progress.lr_last = optimizer.param_groups[0]["lr"]  # the rate this update uses, before the schedule moves
        if progress.step == 0:
            progress.lr_first = progress.lr_last
        if len(labels) or batches.shard.world > 1:  # under torchrun every process takes part in each step
            progress.add(step(pixels, labels, batch_labels), len(labels))
        else:  # nothing readable in the whole batch (--skip-bad-images): no update, but still this step of the plan
            progress.step += 1
        scheduler.step()
        progress.seconds = time.perf_counter() - started
        if progress.step % sync_every == 0 or progress.step == len(batches):
            check_finite(progress)
            if progress.seconds - shown > 0.1 or progress.step == len(batches):
                shown = progress.seconds
                seen = progress.seen * batches.shard.world
                reporter.step(progress.step, float(progress.loss_sum) / max(float(progress.weight_sum), 1e-12),
                              seen / progress.seconds, images=seen)
        if distributed.any_process(stop.requested, device) and progress.step < len(batches):
            return False
    return True


def end_epoch(run: RunDir, model, data: PreparedData, config: Config, progress: Progress, optimizer, scheduler,
              val: Metrics, reporter: Reporter, shard: distributed.Shard) -> None:
    """Record the epoch, keep the best checkpoint, and move on; `last` is written last, so a crash
    anywhere here resumes by redoing this epoch's bookkeeping from the previous `last`."""
    train_loss, train_top1, seen = progress.totals()
    record = {"epoch": progress.epoch + 1, "train_loss": train_loss, "train_top1": train_top1, "val_loss": val.loss,
              "val_top1": val.top1, "val_top5": val.top5, "lr": progress.lr_first, "lr_last": progress.lr_last,
              "seconds": progress.seconds, "images_per_s": seen / max(progress.seconds, 1e-9)}
    improved = progress.best_val is None or (val.top1, -val.loss) > (progress.best_val["top1"],
                                                                      -progress.best_val["loss"])
    progress.history.append(record)
    if improved:
        progress.best_epoch, progress.best_val = progress.epoch, val.summary()
    progress.epoch += 1
    progress.start_epoch(progress.loss_sum.device)
    if shard.is_main:
        if improved:
            ckpt.save(run.best, make_checkpoint(model, data, config, progress))
        run.write_epochs(progress.history)
        ckpt.save(run.last, make_checkpoint(model, data, config, progress, optimizer, scheduler))
    distributed.barrier()  # the other processes read these files at the end, or when resuming
    reporter.epoch_done(record, improved)


def save_interrupted(run: RunDir, model, data: PreparedData, config: Config, progress: Progress, optimizer,
                     scheduler, shard: distributed.Shard) -> None:
    """A mid-epoch checkpoint; its running sums are the whole world's, and a resumed main process carries them."""
    totals = [progress.loss_sum, progress.weight_sum, progress.correct]
    seen = torch.tensor(progress.seen, device=progress.correct.device)
    distributed.sum_across(*totals, seen)
    progress.seen = int(seen)
    if shard.is_main:
        ckpt.save(run.last, make_checkpoint(model, data, config, progress, optimizer, scheduler))
    distributed.barrier()


def finish(run: RunDir, data: PreparedData, loss: Loss, val_batches, progress: Progress,
           batch_size: int, shard: distributed.Shard) -> RunResult:
    """The test split, measured once, on the checkpoint chosen by validation (and validation again, on it)."""
    best_model = ckpt.load(run.best).model().to(val_batches.device)
    test_batches = make_eval_batches(data.test, data.normalization, val_batches.device, shard)
    test = evaluate(best_model, test_batches, loss, len(data.classes), data.superclass_of)
    val = evaluate(best_model, val_batches, loss, len(data.classes), data.superclass_of)
    if shard.is_main:
        metrics = {"best_epoch": progress.best_epoch + 1, "val": val.summary(), "test": test.summary(),
                   "test_detail": test.detail(), "classes": data.classes}
        superclasses = SPECS[data.dataset].superclass_names()
        if superclasses:
            metrics["superclasses"] = superclasses
        run.write_metrics(metrics)
    return RunResult(run, progress.best_epoch + 1, val, test, batch_size, progress.history)


def resolve_batch_size(config: Config, data: PreparedData, device: torch.device, reporter: Reporter) -> int:
    setting, num_images = config.optim.batch_size, len(data.train)
    if setting == "full":
        return num_images
    if setting == "auto":
        chosen = auto_batch_size(num_images, math.prod(data.shape), len(data.classes), device)
        reporter.note(f"--batch-size auto picked {chosen} (largest power of two that fits {device.type} memory, "
                      f"at most the {num_images} training images)")
        return chosen
    return min(setting, num_images)


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


def finished_early(progress: Progress, patience: int | None) -> bool:
    """Early stopping: `patience` epochs in a row without a better validation top-1."""
    return patience is not None and progress.best_epoch is not None and \
        progress.epoch - 1 - progress.best_epoch >= patience


def make_checkpoint(model: LinearClassifier, data: PreparedData, config: Config, progress: Progress,
                    optimizer=None, scheduler=None) -> ckpt.Checkpoint:
    """A checkpoint usable alone; with the optimizer and scheduler it can also resume the run."""
    meta = {"dataset": data.dataset, "classes": data.classes, "input_shape": list(data.shape),
            "superclass_of": data.superclass_of, "config": config.to_dict(), "seed": config.train.seed,
            "epoch": progress.epoch, "step": progress.step, "val": progress.best_val,
            "data_fingerprint": data_fingerprint(data)}
    state = {}
    if optimizer is not None:
        optimizer_state = optimizer.state_dict()
        meta["resume"] = {"scheduler": scheduler.state_dict(), "param_groups": optimizer_state["param_groups"],
                          "seen": progress.seen, "seconds": progress.seconds, "history": progress.history,
                          "best_epoch": progress.best_epoch, "best_val": progress.best_val,
                          "lr_first": progress.lr_first}
        # No RNG state: nothing after the start of a run draws from torch's global generator (the data order
        # has its own, seeded by the seed and the epoch), as test_promises shows by scrambling it on resume.
        state = {"loss_sum": progress.loss_sum, "weight_sum": progress.weight_sum, "correct": progress.correct}
        for index, buffers in optimizer_state["state"].items():
            state.update({f"optimizer.{index}.{name}": value for name, value in buffers.items()})
    return ckpt.Checkpoint(model.linear.weight.detach().clone(), model.linear.bias.detach().clone(),
                           data.normalization.mean, data.normalization.std, meta, state)
