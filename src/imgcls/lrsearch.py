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
from pathlib import Path

import torch

from imgcls.config import Config
from imgcls.data.batches import make_batches, make_eval_batches
from imgcls.data.types import PreparedData
from imgcls.interrupt import StopRequest
from imgcls.rundir import RunDir
from imgcls.stackedtrain import build_group, train_stacked

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


def search_lr(config: Config, data: PreparedData, batch_size: int, device: torch.device,
              candidates: tuple[float, ...] = CANDIDATES) -> LrSearch:
    """Each candidate rate trained for search_epochs with the config's other options (its schedule over that
    length, no early stopping); the best validation top-1 wins, ties to the lower validation loss."""
    started = time.perf_counter()
    steps = math.ceil(len(data.train) / max(1, min(batch_size, len(data.train))))
    epochs = search_epochs(config, steps)
    configs = [_candidate(config, lr, epochs) for lr in candidates]
    runs = [RunDir(Path(f"lr-search-{index}")) for index in range(len(configs))]  # never written: writes=False
    stack, states = build_group(runs, configs, data, batch_size, device, writes=False)
    train_stacked(stack, states, make_batches(data, "train", batch_size, device, config.train.seed,
                                              augment=config.data.augment),
                  make_eval_batches(data, "val", device), data, StopRequest(), lambda done, text: None)
    diverged = stack.diverged.tolist()
    best = [state.progress.best_val for state in states]
    top1 = [None if b is None else b["top1"] for b in best]
    loss = [None if b is None else b["loss"] for b in best]
    ranked = [i for i in range(len(candidates)) if top1[i] is not None and not diverged[i]]
    chosen = candidates[max(ranked, key=lambda i: (top1[i], -loss[i], -i))] if ranked else min(candidates)
    return LrSearch(list(candidates), top1, loss, diverged, chosen, epochs, time.perf_counter() - started)


def _candidate(config: Config, lr: float, epochs: int) -> Config:
    candidate = dataclasses.replace(config, optim=dataclasses.replace(config.optim, lr=lr),
                                    train=dataclasses.replace(config.train, epochs=epochs, patience=None))
    return candidate


def find_lr(config: Config, reporter) -> LrSearch:
    """`imgcls lr-find`: the data as `imgcls train` would load it, then the search."""
    from imgcls.data.prepare import prepare
    from imgcls.device import cpu_threads, resolve_device, step_threads
    from imgcls.runstate import resolve_batch_size

    device = resolve_device(config.train.device)
    with reporter.decoding() as decoding_progress:
        data = prepare(config.data, config.train.seed, progress=decoding_progress)
    reporter.data_ready(data)
    batch_size = resolve_batch_size(config, data, device, reporter)
    with cpu_threads(config.train.threads):
        step_threads(config.train.threads, batch_size, math.prod(data.shape), len(data.classes) * len(CANDIDATES),
                     device)
        return search_lr(config, data, batch_size, device)
