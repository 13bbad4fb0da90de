"""The held-out validation split, one function for every path (in memory, --stream, features): a seeded,
stratified --limit subset of the training split first, then a seeded, stratified validation part of what
is left, after checking there are enough training images to hold one out. The test split is never used
to choose anything.
"""

from __future__ import annotations

import torch

from imgcls.errors import UserError


def stratified_sample(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """A seeded sample of `fraction` of each class's indices (at least one of a class with two or more)."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in labels.unique():
        members = (labels == label).nonzero().squeeze(1)
        count = round(len(members) * fraction)
        count = min(max(count, 1 if len(members) >= 2 else 0), len(members) - 1 if len(members) >= 2 else 0)
        chosen.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(chosen).sort().values


def limited_rows(labels: torch.Tensor, limit: int | None, seed: int) -> torch.Tensor | None:
    """The rows --limit keeps (a stratified sample, ascending); None when it keeps them all."""
    if limit is None or limit >= len(labels):
        return None
    return stratified_sample(labels, limit / len(labels), seed)


def split_train_val(labels: torch.Tensor, num_classes: int, val_split: float, limit: int | None, seed: int, *,
                    name: str, unit: str = "images", more: str = "add images") -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, validation rows) of a training split with these labels, each ascending. Too few images to
    hold out one or more of each class is the user's mistake: `name`, `unit` and `more` word its message."""
    rows = limited_rows(labels, limit, seed)
    rows = torch.arange(len(labels)) if rows is None else rows
    if len(rows) < 2 * num_classes:
        fix = f"raise --limit to at least {2 * num_classes}" if limit else more
        raise UserError(f"{name}: {len(rows)} training {unit} for {num_classes} classes are too few to hold out a "
                        f"validation split; {fix}")
    val_rows = rows[stratified_sample(labels[rows], val_split, seed)]
    return rows[~torch.isin(rows, val_rows)], val_rows
