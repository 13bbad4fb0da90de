"""The held-out validation split, one function for every path: a seeded, stratified --limit subset, then a
seeded, stratified validation part of what is left. The test split is never used to choose anything."""

from __future__ import annotations

import dataclasses

import torch

from imgcls.data.types import LabelledImages
from imgcls.errors import UserError, shown


def stratified_sample(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """A seeded sample of `fraction` of each class's indices (at least one of a class with two or more)."""
    sizes = labels.unique(return_counts=True)[1].tolist()
    return _draw(labels, [min(max(round(n * fraction), 1), n - 1) if n >= 2 else 0 for n in sizes], seed)


def limited_rows(labels: torch.Tensor, limit: int | None, seed: int) -> torch.Tensor | None:
    """The rows --limit keeps: exactly `limit` of them (ascending), each class's share in proportion, and at least
    two of each class that has two when the limit allows; None when it keeps them all."""
    if limit is None or limit >= len(labels):
        return None
    return _draw(labels, _shares(labels.unique(return_counts=True)[1].tolist(), limit), seed)


def _draw(labels: torch.Tensor, counts: list[int], seed: int) -> torch.Tensor:
    """The first counts[k] of class k's indices in a seeded order (classes in ascending order), all ascending."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label, count in zip(labels.unique(), counts):
        members = (labels == label).nonzero().squeeze(1)
        chosen.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(chosen).sort().values


def _shares(counts: list[int], total: int) -> list[int]:
    """`total` split among classes of these sizes in proportion (largest remainders), then evened out so that
    each class has min(its size, 2) where the total allows, else one each while it allows."""
    size = sum(counts)
    quota = [count * total / size for count in counts]
    take = [int(q) for q in quota]
    for i in sorted(range(len(counts)), key=lambda i: take[i] - quota[i])[:total - sum(take)]:
        take[i] += 1
    for least in (2, 1):
        floor = [min(count, least) for count in counts]
        if sum(floor) > total:
            continue
        for i in range(len(take)):
            while take[i] < floor[i]:
                j = max(range(len(take)), key=lambda k: take[k] - floor[k])
                take[j], take[i] = take[j] - 1, take[i] + 1
        break
    return take


def split_train_val(labels: torch.Tensor, num_classes: int, val_split: float, limit: int | None, seed: int, *,
                    name: str, unit: str = "images", more: str = "add images") -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, validation rows) of a training split with these labels, each ascending. Too few images to
    hold out one or more of each class is the user's mistake: `name`, `unit` and `more` word its message."""
    if limit is not None and limit < 2 * num_classes:
        raise UserError(f"{name}: {limit} training {unit} for {num_classes} classes are too few to hold out a "
                        f"validation split; raise --limit to at least {2 * num_classes}")
    rows = limited_rows(labels, limit, seed)
    rows = torch.arange(len(labels)) if rows is None else rows
    if len(rows) < 2 * num_classes:
        fix = f"raise --limit to at least {2 * num_classes}" if limit else more
        raise UserError(f"{name}: {len(rows)} training {unit} for {num_classes} classes are too few to hold out a "
                        f"validation split; {fix}")
    val_rows = rows[stratified_sample(labels[rows], val_split, seed)]
    return rows[~torch.isin(rows, val_rows)], val_rows


def check_class_names(name: str, classes: list, where: object, fix: str = "") -> None:
    """At least two distinct text class names; `fix` ends the message (how to mend where they came from)."""
    fix = fix or f"check the class names in {where}"
    odd = next((i for i, c in enumerate(classes) if not isinstance(c, str)), None)
    if odd is not None:
        raise UserError(f"{name}: class {odd} in {where} is named {shown(classes[odd])}, not text; {fix}")
    seen: set[str] = set()
    twice = next((c for c in classes if c in seen or seen.add(c)), None)
    if twice is not None:
        raise UserError(f"{name}: {where} names two classes {shown(twice)}; {fix}")
    if len(classes) < 2:
        which = f"only the class {shown(classes[0])}" if classes else "no classes"
        raise UserError(f"{name}: {where} has {which}; a classifier needs at least 2 classes")


def check_labels(name: str, classes: list, splits: dict[str, torch.Tensor], where: object,
                 unit: str = "images") -> None:
    """What every source's labels must be, checked once for all: class names as check_class_names wants, every
    label one of their indices, and no label to evaluate that no training example has. `splits` maps a split's
    name to its labels, "train" first."""
    check_class_names(name, classes, where)
    for split, labels in splits.items():
        bad = ((labels < 0) | (labels >= len(classes))).nonzero()
        if len(bad):
            row = int(bad[0])
            raise UserError(f"{name}: {split} label {int(labels[row])} (row {row}) in {where} is not a class index "
                            f"0..{len(classes) - 1} of its {len(classes)} classes; fix or drop that row")
    trained = torch.bincount(splits["train"], minlength=len(classes)) > 0
    if int(trained.sum()) < 2:
        present = shown(classes[int(trained.nonzero()[0])]) if trained.any() else "none"
        raise UserError(f"{name}: the training {unit} in {where} are all of one class ({present}); a classifier needs "
                        f"at least 2 classes")
    for split, labels in splits.items():
        untrained = labels[~trained[labels]]
        if len(untrained):
            label = int(untrained[0])
            raise UserError(f"{name}: the {split} split has the label {label} ({shown(classes[label])}) in {where}, "
                            f"which no training {unit[:-1]} has; a model cannot learn a class it has no examples of: "
                            f"add training {unit} of it, or drop those rows")


def folds(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Each image's fold, 0 .. count-1, for a stratified cross-validation: every class's images, in a seeded
    order, dealt to the folds in turn, so that each fold holds its share of every class."""
    generator = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(labels), dtype=torch.int64)
    for label in labels.unique():
        members = (labels == label).nonzero().squeeze(1)
        fold[members[torch.randperm(len(members), generator=generator)]] = torch.arange(len(members)) % count
    return fold


def joined(data):
    """The training and validation images as one training split, and no validation images: what a refit trains
    on, after the choices (and what a cross-validation splits itself)."""
    train, val = data.train, data.val
    if hasattr(train, "listing"):  # --stream: files still to decode, listed in one listing
        train = dataclasses.replace(train, index=torch.cat([train.index, val.index]))
    else:
        train = LabelledImages(torch.cat([train.images, val.images]), torch.cat([train.labels, val.labels]))
    empty = LabelledImages(torch.empty((0, *data.shape), dtype=torch.uint8), torch.empty(0, dtype=torch.int64))
    return dataclasses.replace(data, train=train, val=empty)


def rows_of(split, rows: torch.Tensor):
    """These rows of a split, in memory or (--stream) files still to decode."""
    if hasattr(split, "listing"):
        return split.subset(rows)
    return LabelledImages(split.images[rows], split.labels[rows])
