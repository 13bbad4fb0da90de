"""Choosing the settings a run does not give: the default search of `--lr auto` and `--weight-decay auto`, which
`imgcls lr-find` shows alone. Every setting of the grid (rate x weight decay) trains stacked, in one pass
(engine.py), and the lowest held-out loss wins (metrics.better), as scikit-learn's LogisticRegressionCV does:

- small data (images x classes x inputs at most CV_COST): FOLDS-fold cross-validation of all the images,
  each fold a model with its own sample mask, a setting's folds ranked and stopped as one; the choice is a
  setting and its number of epochs, and the run then refits on all the images (train.py);
- larger data: each setting trains on a stratified subset of at most SEARCH_IMAGES training images, measured
  on the validation split; the weight decay found is scaled to the run's n images by sqrt(n_s / n) (docs/selection.md
  says why), and the run's own validation split chooses its epochs.
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
    epochs: int | None = None  # cross-validation: the epochs chosen, which the refit trains
    history: list[dict] | None = None  # ... the chosen setting's epochs (its pooled held-out figures)
    val: dict | None = None  # cross-validation: the chosen setting's pooled held-out metrics

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
    """The grid trained stacked in every process of a torchrun world alike, in two stages: every setting for
    RATE_UPDATES, which chooses each weight decay's rate (the one that has gone furthest); then each decay at its
    rate until its held-out loss stops falling (cross-validation) or for SEARCH_UPDATES (a subset of larger
    data), which chooses the decay and, by cross-validation, the epochs. Keeps no files."""
    started = time.perf_counter()
    place = _Place(config, data, batch_size, device, stop, shard)
    settings = grid(config)
    rows = []
    if len(rates(config)) > 1:
        first = place.train(settings, place.epochs_for(RATE_UPDATES), patience=None)
        rows = [_row(rate, decay, members, "rates") for (rate, decay), members in zip(settings, first)]
        settings = [min(((row["lr"], decay) for row in rows if row["weight_decay"] == decay and _ranked(row)),
                        key=lambda setting: _loss_of(rows, setting), default=(min(rates(config)), decay))
                    for decay in sorted({decay for _, decay in settings})]
    second = place.train(settings, None if place.cross_validates else place.epochs_for(SEARCH_UPDATES),
                         patience="same" if place.cross_validates else None)
    finals = [_row(rate, decay, members, "decays") for (rate, decay), members in zip(settings, second)]
    ranked = [i for i, row in enumerate(finals) if _ranked(row)]
    if not ranked:
        tried = ", ".join(f"{rate:g}" for rate in rates(config))
        raise Diverged(f"training diverged for every setting searched (lr {tried}): nothing was written; lower --lr "
                       f"and start again")
    # cross-validation trains each setting to its best epoch: the lowest loss, as LogisticRegressionCV; the subset's
    # few updates barely separate the decays: the one-standard-error rule
    chosen = choose(finals, ranked, one_se=not place.cross_validates)
    chosen = distributed.from_main(chosen)  # every process trains with the main one's choice
    for index, row in enumerate(finals):
        row["chosen"] = index == chosen
    rate, decay = settings[chosen]
    lead = second[chosen][0]
    selection = Selection(rows + finals, rate, decay, place.how, time.perf_counter() - started)
    if place.cross_validates:
        selection.epochs = None if lead.progress.best_epoch is None else lead.progress.best_epoch + 1
        selection.val = lead.progress.best_val
        selection.history = lead.progress.history
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
            self.how = (f"{len(self.data.train):,} training images, measured on {len(measured.val):,} validation "
                        f"images")
        self.batches = make_batches(self.data, "train", batch_size, device, config.train.seed, shard=shard,
                                    augment=config.data.augment)

    def epochs_for(self, updates: int) -> int:
        return min(self.config.train.epochs, max(1, math.ceil(updates / len(self.batches))))

    def train(self, settings, epochs: int | None, patience) -> list[list[Model]]:
        """The settings trained stacked (FOLDS models each when cross-validating): each setting's models."""
        models, per_setting = [], []
        for number, (rate, decay) in enumerate(settings):
            config = _setting(self.config, rate, decay, epochs, patience)
            members = [new_model(config, self.data, None, len(self.batches), self.device)
                       for _ in range(FOLDS if self.cross_validates else 1)]
            if self.cross_validates:
                for held, model in enumerate(members):
                    model.sample_mask, model.heldout, model.group = self.fold != held, self.fold == held, number
            models += members
            per_setting.append(members)
        Engine(models, self.data, self.batches, self.eval_batches, self.device, None, self.stop, Quiet(),
               self.shard).train()
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


def _loss_of(rows: list[dict], setting: tuple[float, float]) -> float:
    return next(row["val_loss"] for row in rows if (row["lr"], row["weight_decay"]) == setting)


def _setting(config: Config, rate: float, decay: float, epochs: int | None = None, patience="same") -> Config:
    train = config.train if epochs is None else dataclasses.replace(config.train, epochs=epochs)
    if patience != "same":
        train = dataclasses.replace(train, patience=patience)
    return dataclasses.replace(config, optim=dataclasses.replace(config.optim, lr=rate, weight_decay=decay),
                               train=train)


def _row(rate: float, decay: float, members: list[Model], stage: str) -> dict:
    best = members[0].progress.best_val
    return {"stage": stage, "lr": rate, "weight_decay": decay, "chosen": False,
            "val_loss": None if best is None else best["loss"],
            "val_loss_se": None if best is None else best.get("loss_se"),
            "val_top1": None if best is None else best["top1"],
            "epochs": None if members[0].progress.best_epoch is None else members[0].progress.best_epoch + 1,
            "diverged": any(model.diverged is not None for model in members)}
