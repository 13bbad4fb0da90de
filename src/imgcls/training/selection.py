"""The default search of `--lr auto` and `--weight-decay auto` (alone: `imgcls lr-find`). Every (rate, weight decay)
setting trains stacked in one pass and the lowest held-out loss wins, as in scikit-learn's LogisticRegressionCV.
Small data is cross-validated (FOLDS folds of all images; the run then refits on all of them); larger data trains
each setting on at most SEARCH_IMAGES training images, measured on the validation split (docs/selection.md).
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
from imgcls.data.split import folds, joined, limited_rows, rows_of
from imgcls.data.types import PreparedData
from imgcls.training.engine import Diverged, Engine, Model, Quiet, new_model
from imgcls.training.interrupt import StopRequest

RATES = tuple(10.0 ** exponent for exponent in range(-4, 1))  # 1e-4 ... 1 by decades; mse: a decade lower
DECAYS = tuple(10.0 ** exponent for exponent in range(-4, 2))  # 1e-4 ... 10: C = 1 / (wd * n) over 5 decades
FOLDS = 5  # scikit-learn's LogisticRegressionCV default
CV_COST = 4e8  # cross-validation up to this many images x classes x inputs (10,000 CIFAR-10 images): an epoch of
#               the grid's models stays cheap, and a 10% validation split would be a few hundred images
SEARCH_IMAGES = 5_000  # above it, the settings train on this many training images
RATE_UPDATES = 50  # the first stage: every setting for at least this many updates (whole epochs)
SEARCH_UPDATES = 100  # larger data, the second stage: each decay at its rate for at least this many updates
# (on 60,000 images of 12,288 inputs in 200 classes the search then costs about a third of the run it tunes)


@dataclass
class Selection:
    """What the search chose, and how every setting did: `rows` for lr-find's table and figure."""

    rows: list[dict]  # lr, weight_decay, val_loss, val_top1, epochs, diverged: one per setting
    lr: float
    weight_decay: float  # at the scale of the run's training images
    how: str  # the held-out images, in words
    seconds: float
    epochs: int | None = None  # cross-validation: the epochs chosen, which the refit trains,
    history: list[dict] | None = None  # the chosen setting's epochs (its pooled held-out figures)
    val: dict | None = None  # and its pooled held-out metrics

    def chosen_row(self) -> dict:
        return next(row for row in self.rows if row["chosen"])


def rates(config: Config) -> tuple[float, ...]:
    if config.optim.lr != "auto":
        return (float(config.optim.lr),)
    return tuple(rate / 10 for rate in RATES) if config.loss.loss == "mse" else RATES  # mse's gradients are larger


def grid(config: Config) -> list[tuple[float, float]]:
    """(rate, weight decay) of every setting to try: the values given are fixed, 'auto' ones searched."""
    decays = DECAYS if config.optim.weight_decay == "auto" else (float(config.optim.weight_decay),)
    return [(rate, decay) for decay in decays for rate in rates(config)]


def cross_validates(data: PreparedData) -> bool:
    return (len(data.train) + len(data.val)) * len(data.classes) * math.prod(data.shape) <= CV_COST


def search(config: Config, data: PreparedData, batch_size: int, device: torch.device, stop: StopRequest,
           shard: distributed.Shard = distributed.Shard()) -> Selection:
    """The grid trained stacked in two stages: every setting for RATE_UPDATES picks each decay's rate (the lowest
    loss); then each decay at its rate, to its best epoch (cross-validation) or for SEARCH_UPDATES (a subset), picks
    the decay and, cross-validating, the epochs. Keeps no files."""
    started = time.perf_counter()
    place = _Place(config, data, batch_size, device, stop, shard)
    settings, rows = grid(config), []
    if len(rates(config)) > 1:
        first = place.train(settings, place.epochs_for(RATE_UPDATES), patience=None)
        rows = [_row(setting, members, "rates") for setting, members in zip(settings, first)]
        settings = [(min((row for row in rows if row["weight_decay"] == decay and _ranked(row)),
                         key=lambda row: row["val_loss"], default={"lr": min(rates(config))})["lr"], decay)
                    for decay in sorted({decay for _, decay in settings})]
    if place.cross_validates:  # each setting to its best epoch, the lowest loss chosen, as LogisticRegressionCV
        second = place.train(settings, config.train.epochs, config.train.patience)
    else:  # the subset's few updates barely separate the decays: the one-standard-error rule chooses
        second = place.train(settings, place.epochs_for(SEARCH_UPDATES), patience=None)
    finals = [_row(setting, members, "decays") for setting, members in zip(settings, second)]
    ranked = [i for i, row in enumerate(finals) if _ranked(row)]
    if not ranked:
        tried = ", ".join(f"{rate:g}" for rate in rates(config))
        raise Diverged(f"training diverged for every setting searched (lr {tried}): nothing was written; lower --lr "
                       f"and start again")
    chosen = distributed.from_main(choose(finals, ranked, one_se=not place.cross_validates))  # the main's, for all
    for index, row in enumerate(finals):
        row["chosen"] = index == chosen
    (rate, decay), lead = settings[chosen], second[chosen][0].progress
    selection = Selection(rows + finals, rate, decay, place.how, time.perf_counter() - started)
    if place.cross_validates:  # a ranked setting has a best epoch
        selection.epochs, selection.val, selection.history = lead.best_epoch + 1, lead.best_val, lead.history
    else:  # from the subset's images to the run's: half way (in log) from keeping wd to keeping C = 1 / (wd * n)
        selection.weight_decay = decay * math.sqrt(len(place.data.train) / len(data.train))
    return selection


class _Place:
    """Where the settings train and are measured: FOLDS folds of all the images (small data), or a subset of the
    training images measured on the validation split."""

    def __init__(self, config, data, batch_size, device, stop, shard):
        self.config, self.device, self.stop, self.shard = config, device, stop, shard
        self.cross_validates = cross_validates(data)
        if self.cross_validates:
            self.data = joined(data)
            self.fold = folds(self.data.train.labels, FOLDS, config.train.seed)
            self.eval_batches = make_eval_batches(self.data, "train", device, shard)
            self.how = f"{FOLDS}-fold cross-validation of {len(self.data.train):,} images"
        else:
            rows = limited_rows(data.train.labels, SEARCH_IMAGES, config.train.seed)
            self.data = data if rows is None else dataclasses.replace(data, train=rows_of(data.train, rows))
            held = limited_rows(data.val.labels, SEARCH_IMAGES // 2, config.train.seed)  # evaluating costs too
            measured = data if held is None else dataclasses.replace(data, val=rows_of(data.val, held))
            self.eval_batches = make_eval_batches(measured, "val", device, shard)
            self.how = f"{len(self.data.train):,} training images, measured on {len(measured.val):,} validation images"
        self.batches = make_batches(self.data, "train", batch_size, device, config.train.seed, shard=shard,
                                    augment=config.data.augment)

    def epochs_for(self, updates: int) -> int:
        return min(self.config.train.epochs, max(1, math.ceil(updates / len(self.batches))))

    def train(self, settings, epochs: int, patience: int | None) -> list[list[Model]]:
        """The settings trained stacked (FOLDS models each when cross-validating): each setting's models."""
        per_setting = []
        for number, (rate, decay) in enumerate(settings):
            config = dataclasses.replace(self.config, optim=dataclasses.replace(self.config.optim, lr=rate,
                                                                                 weight_decay=decay),
                                         train=dataclasses.replace(self.config.train, epochs=epochs, patience=patience))
            members = [new_model(config, self.data, None, len(self.batches), self.device)
                       for _ in range(FOLDS if self.cross_validates else 1)]
            if self.cross_validates:
                for held, model in enumerate(members):
                    model.sample_mask, model.heldout, model.group = self.fold != held, self.fold == held, number
            per_setting.append(members)
        Engine([model for members in per_setting for model in members], self.data, self.batches, self.eval_batches,
               self.device, None, self.stop, Quiet(), self.shard).train()
        return per_setting


def choose(rows: list[dict], ranked: list[int], one_se: bool) -> int:
    """The lowest held-out loss or, `one_se`, the strongest weight decay within one standard error of it (the
    one-standard-error rule of Hastie et al.: the simplest model the held-out loss cannot tell from the best)."""
    best = min(ranked, key=lambda i: (rows[i]["val_loss"], -rows[i]["weight_decay"], rows[i]["lr"]))
    limit = rows[best]["val_loss"] + ((rows[best]["val_loss_se"] or 0.0) if one_se else 0.0)
    return max((i for i in ranked if rows[i]["val_loss"] <= limit),
               key=lambda i: (rows[i]["weight_decay"], -rows[i]["val_loss"], -rows[i]["lr"]))


def _ranked(row: dict) -> bool:
    return row["val_loss"] is not None and not row["diverged"]


def _row(setting: tuple[float, float], members: list[Model], stage: str) -> dict:
    progress = members[0].progress
    best = progress.best_val or {}
    return {"stage": stage, "lr": setting[0], "weight_decay": setting[1], "chosen": False,
            "val_loss": best.get("loss"), "val_loss_se": best.get("loss_se"), "val_top1": best.get("top1"),
            "epochs": None if progress.best_epoch is None else progress.best_epoch + 1,
            "diverged": any(model.diverged is not None for model in members)}
