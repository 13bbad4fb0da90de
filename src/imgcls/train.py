"""Training, read top to bottom: data, model, loss, optimizer, then epochs of SGD steps,
each followed by validation, checkpoints and the stopping rule; last, the test split once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from imgcls import checkpoint as ckpt
from imgcls.config import Config
from imgcls.data.batches import EVAL_BATCH, Batches
from imgcls.data.prepare import PreparedData, prepare
from imgcls.device import auto_batch_size, resolve_device, set_precision
from imgcls.errors import UserError
from imgcls.losses import Loss, class_weights
from imgcls.metrics import Metrics, MetricsAccumulator, evaluate
from imgcls.model import LinearClassifier
from imgcls.optim import build_optimizer, build_scheduler
from imgcls.report import Reporter
from imgcls.rundir import RunDir


@dataclass
class RunResult:
    run_dir: RunDir
    best_epoch: int  # counted from 1, as printed
    val: Metrics
    test: Metrics
    batch_size: int
    history: list[dict] = field(default_factory=list)


@dataclass
class EpochStats:
    loss: float
    top1: float
    seconds: float
    images: int


def train(config: Config, reporter: Reporter, overwrite: bool = False) -> RunResult:
    device = resolve_device(config.train.device)
    autocast_dtype = set_precision(config.train.precision, device)
    torch.manual_seed(config.train.seed)
    data = prepare(config.data, config.train.seed)
    reporter.data_ready(data)
    run = RunDir.create(config.output.out, config.data.dataset, overwrite)
    run.write_config(config.to_dict())

    batch_size = resolve_batch_size(config, data, device, reporter)
    train_batches = Batches(data.train, data.normalization, batch_size, device, seed=config.train.seed)
    val_batches = Batches(data.val, data.normalization, EVAL_BATCH, device, shuffle=False)
    model = LinearClassifier(data.shape, len(data.classes), config.model.init, config.model.init_std).to(device)
    loss = Loss(config.loss.loss, class_weights(config.loss.class_weights, data.train.labels, len(data.classes)))
    optimizer = build_optimizer(model, config.optim, device)
    scheduler = build_scheduler(optimizer, config.schedule, len(train_batches), config.train.epochs)

    history: list[dict] = []
    best: tuple[int, Metrics] | None = None
    for epoch in range(config.train.epochs):
        stats = train_one_epoch(model, train_batches, loss, optimizer, scheduler, epoch, reporter, autocast_dtype)
        val = evaluate(model, val_batches, loss, len(data.classes), data.superclass_of)
        record = epoch_record(epoch, stats, val, optimizer)
        history.append(record)
        run.append_epoch(record)
        improved = best is None or (val.top1, -val.loss) > (best[1].top1, -best[1].loss)
        if improved:
            best = (epoch, val)
            ckpt.save(run.best, make_checkpoint(model, data, config, epoch, val))
        ckpt.save(run.last, make_checkpoint(model, data, config, epoch, val))
        reporter.epoch_done(record, improved)
        if should_stop(history, best[0], config.train.patience):
            reporter.note(f"stopping early: no better validation top-1 for {config.train.patience} epochs")
            break

    best_model = ckpt.load(run.best).model().to(device)
    test_batches = Batches(data.test, data.normalization, EVAL_BATCH, device, shuffle=False)
    test = evaluate(best_model, test_batches, loss, len(data.classes), data.superclass_of)
    run.write_metrics({"best_epoch": best[0] + 1, "val": best[1].summary(), "test": test.summary(),
                       "test_detail": {"per_class": test.per_class, "confusion": test.confusion},
                       "classes": data.classes})
    return RunResult(run, best[0] + 1, best[1], test, train_batches.batch_size, history)


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


def train_one_epoch(model, batches: Batches, loss: Loss, optimizer, scheduler, epoch: int, reporter: Reporter,
                    autocast_dtype: torch.dtype | None, start_step: int = 0) -> EpochStats:
    """One pass over the training set in this epoch's order: ceil(N/B) SGD updates."""
    model.train()
    device = batches.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    sync_every = 1 if device.type == "cpu" else 50  # reading the loss back waits for the GPU: do it rarely
    started = time.perf_counter()
    reporter.epoch_start(epoch, len(batches))
    for step, (pixels, labels) in enumerate(batches.epoch(epoch, start_step), start=start_step):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            scores = model(pixels)
        batch_loss = loss(scores, labels)
        optimizer.zero_grad(set_to_none=True)
        batch_loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += batch_loss.detach() * len(labels)
        correct += (scores.detach().argmax(1) == labels).sum()
        seen += len(labels)
        if (step + 1) % sync_every == 0 or step + 1 == len(batches):
            check_finite(loss_sum, step, epoch)
            reporter.step(step + 1, float(loss_sum) / seen, seen / (time.perf_counter() - started))
    seconds = time.perf_counter() - started
    return EpochStats(float(loss_sum) / max(seen, 1), float(correct) / max(seen, 1), seconds, seen)


def check_finite(loss_sum: torch.Tensor, step: int, epoch: int) -> None:
    if not torch.isfinite(loss_sum):
        raise UserError(f"the loss became {float(loss_sum)} at epoch {epoch + 1}, step {step + 1}: training diverged; "
                        f"lower --lr (the last good checkpoints are kept)")


def epoch_record(epoch: int, stats: EpochStats, val: Metrics, optimizer) -> dict:
    return {"epoch": epoch + 1, "train_loss": stats.loss, "train_top1": stats.top1, "val_loss": val.loss,
            "val_top1": val.top1, "val_top5": val.top5, "lr": optimizer.param_groups[0]["lr"],
            "seconds": stats.seconds, "images_per_s": stats.images / max(stats.seconds, 1e-9)}


def should_stop(history: list[dict], best_epoch: int, patience: int | None) -> bool:
    """Early stopping: `patience` epochs in a row without a better validation top-1."""
    return patience is not None and len(history) - 1 - best_epoch >= patience


def make_checkpoint(model: LinearClassifier, data: PreparedData, config: Config, epoch: int,
                    val: Metrics) -> ckpt.Checkpoint:
    meta = {"dataset": data.dataset, "classes": data.classes, "input_shape": list(data.shape),
            "superclass_of": data.superclass_of, "config": config.to_dict(), "seed": config.train.seed,
            "epoch": epoch + 1, "val": val.summary()}
    return ckpt.Checkpoint(model.linear.weight.detach().clone(), model.linear.bias.detach().clone(),
                           data.normalization.mean, data.normalization.std, meta)
