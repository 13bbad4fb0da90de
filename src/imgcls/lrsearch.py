"""The learning-rate search behind `--lr auto` and `imgcls lr-find`: a short sweep over a log range of rates,
all trained stacked in one pass (stacked.py), each measured on the validation split.

Why not the classic one-run ramp (Lightning's lr_find: one model, the rate raised every step, the suggestion at
the loss's steepest fall)? With stacked models a short real training run of every candidate costs about what the
ramp does, and it answers the question asked: which rate gives the best validation top-1 after training, with
the run's own schedule, momentum, weight decay and batch size. The ramp reads a noisy derivative of the training
loss of a model whose past used other rates, and its suggestion moves with smoothing and with where the ramp
starts.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from imgcls import distributed
from imgcls.config import Config
from imgcls.data.batches import make_batches, make_eval_batches
from imgcls.data.types import PreparedData
from imgcls.engine import Engine, Quiet, new_model
from imgcls.interrupt import StopRequest

# 1e-5 ... 1 in half decades: mean squared error on standardized pixels needs the smallest (on CIFAR-10), and no
# dataset here preferred a rate above 0.1 with cross-entropy
CANDIDATES = tuple(float(f"{10 ** (exponent / 2):.3g}") for exponent in range(-10, 1))
SEARCH_UPDATES = 200  # each candidate trains for at least this many updates (whole epochs), or the run's length


@dataclass
class LrSearch:
    lrs: list[float]
    val_top1: list[float | None]  # None: diverged before its first epoch ended
    val_loss: list[float | None]
    diverged: list[bool]
    chosen: float
    epochs: int
    seconds: float

    def rows(self) -> list[dict]:
        return [{"lr": lr, "val_top1": top1, "val_loss": loss, "diverged": diverged}
                for lr, top1, loss, diverged in zip(self.lrs, self.val_top1, self.val_loss, self.diverged)]


def search_epochs(config: Config, steps_per_epoch: int) -> int:
    return min(config.train.epochs, max(1, math.ceil(SEARCH_UPDATES / steps_per_epoch)))


def search_lr(config: Config, data: PreparedData, batch_size: int, device: torch.device, stop: StopRequest,
              shard: distributed.Shard = distributed.Shard(), candidates: tuple[float, ...] = CANDIDATES) -> LrSearch:
    """Each candidate rate trained for search_epochs with the config's other options (its schedule over that
    length, no early stopping), stacked, in every process of a torchrun world alike; the best validation top-1
    wins, ties to the lower validation loss, then to the lower rate. Keeps no files."""
    started = time.perf_counter()
    train_batches = make_batches(data, "train", batch_size, device, config.train.seed, shard=shard,
                                 augment=config.data.augment)
    epochs = search_epochs(config, len(train_batches))
    models = [new_model(_candidate(config, lr, epochs), data, None, len(train_batches), device) for lr in candidates]
    engine = Engine(models, data, train_batches, make_eval_batches(data, "val", device, shard), device, None, stop,
                    Quiet(), shard)
    engine.train()
    diverged = [model.diverged is not None for model in models]
    best = [model.progress.best_val for model in models]
    top1 = [None if b is None else b["top1"] for b in best]
    loss = [None if b is None else b["loss"] for b in best]
    ranked = [i for i in range(len(candidates)) if top1[i] is not None and not diverged[i]]
    chosen = candidates[max(ranked, key=lambda i: (top1[i], -loss[i], -i))] if ranked else min(candidates)
    chosen = distributed.from_main(chosen)  # every process trains with the main one's choice
    return LrSearch(list(candidates), top1, loss, diverged, chosen, epochs, time.perf_counter() - started)


def _candidate(config: Config, lr: float, epochs: int) -> Config:
    return dataclasses.replace(config, optim=dataclasses.replace(config.optim, lr=lr),
                               train=dataclasses.replace(config.train, epochs=epochs, patience=None))
