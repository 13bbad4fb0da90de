"""The learning rate of every update in closed form: each schedule is the formula torch.optim.lr_scheduler
documents for it (LinearLR warmup, StepLR, CosineAnnealingLR, OneCycleLR with its defaults); `plateau`, the
default, multiplies the rate by `gamma` when validation stops improving (PlateauLR)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from imgcls.config import ScheduleConfig


def _cosine(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2


@dataclass(frozen=True)
class Schedule:
    """The rate of each update (counted from 0 over the whole run) for a base rate and a run's length."""

    config: ScheduleConfig
    base: float
    steps_per_epoch: int
    epochs: int

    def rate(self, update: int, plateau_factor: float = 1.0) -> float:
        name, base, total = self.config.schedule, self.base, self.steps_per_epoch * self.epochs
        warmup = min(round(self.config.warmup_epochs * self.steps_per_epoch), total - 1)
        if name == "plateau":
            return base * plateau_factor
        if name == "onecycle":  # rise from base/25 for its share (the warmup, else 30%), then anneal to base/25e4
            share = max(warmup, 2) / total if warmup > 0 and total > 2 else 0.3
            rise_end = share * total - 1
            if update <= rise_end:
                return _cosine(base / 25, base, update / rise_end)
            return _cosine(base, base / 25e4, (update - rise_end) / (total - 1 - rise_end))
        if update < warmup:  # linear from base/warmup to base
            return base * (1 / warmup + (1 - 1 / warmup) * update / warmup)
        after = update - warmup
        if name == "step":
            return base * self.config.step_gamma ** (after // (self.config.step_epochs * self.steps_per_epoch))
        if name == "cosine":
            return _cosine(base, 0.0, after / max(total - warmup, 1))
        return base


@dataclass
class Plateau:
    """The plateau schedule's state: the rate's factor, epochs without a better validation score, decays done.
    After its last decay the same wait ends the run (`exhausted`): early stopping that first anneals."""

    factor: float = 1.0
    stale: int = 0
    decayed: int = 0
    exhausted: bool = False
    decays: int = 2

    def epoch_end(self, improved: bool, patience: int | None, gamma: float) -> None:
        self.stale = 0 if improved else self.stale + 1
        if patience is None or self.stale < patience:
            return
        if self.decayed == self.decays:
            self.exhausted = True
            return
        self.factor *= gamma
        self.decayed, self.stale = self.decayed + 1, 0

    def state(self) -> dict:
        return {"factor": self.factor, "stale": self.stale, "decayed": self.decayed, "exhausted": self.exhausted}
