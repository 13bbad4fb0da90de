"""One run's state and the bookkeeping at each epoch's end, shared by `imgcls train` (train.py) and the models of a
sweep or a learning-rate search (stackedtrain.py): what a run moves forward, how an epoch is recorded and kept
(best and last checkpoints, epochs.jsonl), and what a finished run writes (metrics.json)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.optim.lr_scheduler import LRScheduler

from imgcls import checkpoint as ckpt
from imgcls import distributed
from imgcls.config import Config
from imgcls.data.registry import SPECS
from imgcls.data.types import PreparedData
from imgcls.device import auto_batch_size
from imgcls.losses import Loss, class_weights
from imgcls.metrics import Metrics
from imgcls.model import LinearClassifier
from imgcls.optim import SGD, PlateauLR, build_optimizer, build_scheduler
from imgcls.progress import Progress
from imgcls.report import Reporter
from imgcls.resume import data_fingerprint
from imgcls.rundir import RunDir


@dataclass
class TrainState:
    """What the epochs share: the run they belong to (its folder, config, data and this process's part of it), the
    loss they minimize, and what they move forward and a checkpoint saves (model, optimizer, schedule, progress)."""
    run: RunDir
    config: Config
    data: PreparedData
    shard: distributed.Shard
    loss: Loss
    model: LinearClassifier
    optimizer: SGD
    scheduler: LRScheduler
    progress: Progress = field(default_factory=Progress)
    writes: bool = True  # False for the models of a learning-rate search, which keep nothing but their progress

    def more_epochs(self) -> bool:
        return self.progress.epoch < self.config.train.epochs and not self.finished_early()

    def finished_early(self) -> bool:
        """Early stopping: `patience` epochs in a row without a better validation top-1 (with the plateau schedule,
        after its last decay)."""
        if isinstance(self.scheduler, PlateauLR):
            return self.scheduler.exhausted
        patience, progress = self.config.train.patience, self.progress
        return patience is not None and progress.best_epoch is not None and \
            progress.epoch - 1 - progress.best_epoch >= patience

    def checkpoint(self, resumable: bool = False) -> ckpt.Checkpoint:
        """A checkpoint usable alone; a resumable one also holds the optimizer, scheduler and progress."""
        data, progress, model = self.data, self.progress, self.model
        meta = {"dataset": data.dataset, "classes": data.classes, "input_shape": list(data.shape),
                "superclass_of": data.superclass_of, "config": self.config.to_dict(), "seed": self.config.train.seed,
                "epoch": progress.epoch, "step": progress.step, "val": progress.best_val,
                "data_fingerprint": data_fingerprint(data)}
        checkpoint = ckpt.Checkpoint(model.linear.weight.detach().clone(), model.linear.bias.detach().clone(),
                                     data.normalization.mean, data.normalization.std, meta)
        if resumable:
            checkpoint.add_resume_state(self.optimizer.state_dict(), self.scheduler.state_dict(), progress)
        return checkpoint


def new_model(config: Config, data: PreparedData, device: torch.device) -> LinearClassifier:
    """The model as the config initializes it, drawn from the global generator (seeded by the caller)."""
    return LinearClassifier(data.shape, len(data.classes), config.model.init, config.model.init_std).to(device)


def new_state(run: RunDir, config: Config, data: PreparedData, shard: distributed.Shard, model: LinearClassifier,
              steps_per_epoch: int, device: torch.device) -> TrainState:
    """A run at its start: the loss, and an optimizer and schedule for `model`."""
    weights = class_weights(config.loss.class_weights, data.train.labels, len(data.classes), device)
    loss = Loss(config.loss.loss, weights)
    optimizer = build_optimizer(model, config.optim, device)
    scheduler = build_scheduler(optimizer, config.schedule, steps_per_epoch, config.train.epochs)
    state = TrainState(run, config, data, shard, loss, model, optimizer, scheduler)
    state.progress.start_epoch(device)
    return state


def end_epoch(state: TrainState, val: Metrics, reporter: Reporter) -> None:
    """Record the epoch, keep the best checkpoint, and move on; `last` is written last, so a crash
    anywhere here resumes by redoing this epoch's bookkeeping from the previous `last`."""
    progress, run = state.progress, state.run
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
    if isinstance(state.scheduler, PlateauLR):
        state.scheduler.epoch_end(improved, state.config.train.patience)
    if state.shard.is_main and state.writes:
        if improved:
            ckpt.save(run.best, state.checkpoint())
        run.write_epochs(progress.history)
        ckpt.save(run.last, state.checkpoint(resumable=True))
    distributed.barrier()  # the other processes read these files at the end, or when resuming
    reporter.epoch_done(record, improved)


def save_interrupted(state: TrainState) -> None:
    """A mid-epoch checkpoint; its running sums are the whole world's, and a resumed main process carries them."""
    progress = state.progress
    totals = [progress.loss_sum, progress.weight_sum, progress.correct]
    seen = torch.tensor(progress.seen, device=progress.correct.device)
    distributed.sum_across(*totals, seen)
    progress.seen = int(seen)
    if state.shard.is_main:
        ckpt.save(state.run.last, state.checkpoint(resumable=True))
    distributed.barrier()


def write_final_metrics(state: TrainState, val: Metrics, test: Metrics) -> None:
    """metrics.json: the best epoch's validation and test metrics; a finished run is one that has it."""
    data = state.data
    metrics = {"best_epoch": state.progress.best_epoch + 1, "val": val.summary(), "test": test.summary(),
               "test_detail": test.detail(), "classes": data.classes}
    superclasses = SPECS[data.dataset].superclass_names()
    if superclasses:
        metrics["superclasses"] = superclasses
    state.run.write_metrics(metrics)


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
