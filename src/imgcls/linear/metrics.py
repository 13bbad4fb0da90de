"""Top-k, per-class and superclass accuracy, the confusion matrix and the loss's standard error of an evaluation,
accumulated as counts on the device and read back once."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from imgcls.distributed import sum_across


def topk_correct(scores: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """How many targets are among the k highest scores of their row."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return (top == targets.unsqueeze(1)).any(dim=1).sum()


def top_k(num_classes: int) -> int:
    return min(5, num_classes)


def per_class_scores(confusion: list[list[int]]) -> list[dict]:
    """Precision, recall and F1 of every class from a confusion matrix (rows: true class), each 0 where it divides
    by 0 (scikit-learn's zero_division=0)."""
    matrix = torch.tensor(confusion, dtype=torch.float64).reshape(len(confusion), len(confusion))
    hits, support = matrix.diag(), matrix.sum(1)
    precision, recall = hits / matrix.sum(0).clamp_min(1), hits / support.clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-300)
    return [{"precision": p, "recall": r, "f1": f, "support": int(n)}
            for p, r, f, n in zip(precision.tolist(), recall.tolist(), f1.tolist(), support.tolist())]


@dataclass
class Metrics:
    loss: float
    top1: float
    top5: float  # top-k with k = min(5, classes); metrics.json names it by its k (summary)
    k: int
    count: int
    per_class: list[float] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)  # rows: true class, columns: predicted
    superclass_top1: float | None = None
    per_superclass: list[float] = field(default_factory=list)  # superclass top-1 of each superclass's images
    loss_se: float | None = None  # the standard error of `loss`, from the images' spread (class weights aside)

    @classmethod
    def of_summary(cls, summary: dict) -> Metrics:
        """The headline numbers back from a summary (metrics.json's val or test); top-k under `top{k}`, or `top5`
        as runs of older imgcls wrote it whatever k was."""
        k = summary.get("k", 5)
        return cls(summary["loss"], summary["top1"], summary.get(f"top{k}", summary.get("top5")), k,
                   summary.get("count", 0), superclass_top1=summary.get("superclass_top1"),
                   loss_se=summary.get("loss_se"))

    def summary(self) -> dict:
        """The headline numbers, as metrics.json and `eval --json` write them; top-k as `top{k}` (`top3`)."""
        keys = ("loss", "loss_se", "top1", "top5", "k", "count", "superclass_top1")
        return {(f"top{self.k}" if key == "top5" else key): value for key, value in asdict(self).items()
                if key in keys and value is not None}

    def detail(self) -> dict:
        """Per class (and per superclass, when the dataset has them) and the confusion matrix: metrics.json's
        test_detail."""
        detail = {"per_class": self.per_class, "confusion": self.confusion}
        if self.per_superclass:
            detail["per_superclass"] = self.per_superclass
        return detail


def pooled(folds: list[Metrics]) -> Metrics:
    """The headline metrics of the folds of a cross-validation as one held-out set: each fold weighs by its
    images (the per-class figures and confusion are left empty)."""
    count = sum(fold.count for fold in folds)
    def mean(key: str) -> float:
        return sum(getattr(fold, key) * fold.count for fold in folds) / max(count, 1)
    superclass = None if folds[0].superclass_top1 is None else mean("superclass_top1")
    loss, se = mean("loss"), None
    if all(fold.loss_se is not None for fold in folds):  # the folds' second moments pooled, then the spread
        square = sum((fold.loss_se ** 2 * fold.count + fold.loss ** 2) * fold.count for fold in folds)
        se = _standard_error(square / max(count, 1) - loss ** 2, count)
    return Metrics(loss, mean("top1"), mean("top5"), folds[0].k, count, superclass_top1=superclass, loss_se=se)


def _standard_error(variance: float, count: int) -> float:
    return math.sqrt(max(variance, 0.0) / max(count, 1))


THRESHOLD = 1e-4  # a relative fall smaller than this is no better (torch's ReduceLROnPlateau's default)


def better(val: Metrics | dict, best: dict | None) -> bool:
    """The choice statistic of every choice imgcls makes on validation (the best epoch, early stopping, the
    settings of the default search and of a sweep): a lower validation loss. Unlike top-1, it moves with
    every image's confidence, so a few dozen validation images still rank settings; see docs/selection.md."""
    loss = val["loss"] if isinstance(val, dict) else val.loss
    return best is None or loss < best["loss"] * (1 - THRESHOLD)


class MetricsAccumulator:
    """An evaluation's counts and sums, batch by batch, on the device."""

    def __init__(self, num_classes: int, device: torch.device, superclass_of: list[int] | None = None):
        self.num_classes, self.k = num_classes, top_k(num_classes)
        # the sums of the images' weighted losses, of their squared losses, and of their weights
        self.loss_sum, self.square_sum, self.weight_sum = torch.zeros(3, dtype=torch.float64, device=device)
        self.topk = torch.zeros((), dtype=torch.int64, device=device)
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
        self.superclass_of = torch.tensor(superclass_of, device=device) if superclass_of else None

    def add(self, scores: torch.Tensor, targets: torch.Tensor, loss_sum: torch.Tensor, weight: torch.Tensor,
            losses: torch.Tensor | None = None) -> None:
        """A batch's counts; `losses`, each image's loss, for the standard error of the mean loss."""
        self.loss_sum += loss_sum.double()
        if losses is not None:
            self.square_sum += losses.double().square().sum()
        self.weight_sum += weight
        self.topk += topk_correct(scores, targets, self.k)
        predicted = scores.argmax(dim=1)
        self.confusion += torch.bincount(targets * self.num_classes + predicted, minlength=self.num_classes ** 2)

    def result(self) -> Metrics:
        """The metrics over everything added, here and (under torchrun) in every other process."""
        sums = [t.clone() for t in (self.loss_sum, self.square_sum, self.weight_sum, self.topk, self.confusion)]
        sum_across(*sums)
        loss_sum, square_sum, weight_sum, topk, confusion = sums
        confusion = confusion.view(self.num_classes, self.num_classes).cpu()
        count = int(confusion.sum())
        top1, per_class = _accuracies(confusion)
        superclass, per_superclass = None, []
        if self.superclass_of is not None:  # rows and columns summed by superclass: right if in the true superclass
            members = torch.nn.functional.one_hot(self.superclass_of.cpu()).to(confusion.dtype)  # (K, S)
            superclass, per_superclass = _accuracies(members.t() @ confusion @ members)
        loss = float(loss_sum) / max(float(weight_sum), 1e-12)
        se = _standard_error(float(square_sum) / max(count, 1) - loss ** 2, count) if square_sum else None
        return Metrics(loss, top1, float(topk) / max(count, 1), self.k, count, per_class, confusion.tolist(),
                       superclass, per_superclass, se)


def _accuracies(confusion: torch.Tensor) -> tuple[float, list[float]]:
    """Top-1 over all images, and over each true class's images, from a confusion matrix."""
    hits = confusion.diag().double()
    return float(hits.sum()) / max(int(confusion.sum()), 1), (hits / confusion.sum(1).clamp_min(1)).tolist()
