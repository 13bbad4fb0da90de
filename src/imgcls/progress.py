"""Where a run is: the epoch and step under way, the epoch's running sums, and the history so far.

Everything besides the model, optimizer and scheduler that a resumed run needs, in one place that the
training loop (train.py) fills and the resume code (resume.py) restores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from imgcls import distributed
from imgcls.step import StepStats


@dataclass
class Progress:
    """Where a run is: everything besides the model and optimizer that a resumed run needs."""

    epoch: int = 0  # the epoch under way, from 0
    step: int = 0  # the next step of that epoch
    loss_sum: torch.Tensor | None = None  # this epoch's running training loss and accuracy, so a
    weight_sum: torch.Tensor | None = None  # resumed epoch reports exactly what an unbroken one would
    correct: torch.Tensor | None = None
    seen: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None  # from 0
    best_val: dict | None = None
    lr_first: float | None = None  # the learning rates this epoch's first and latest updates used
    lr_last: float | None = None

    def totals(self) -> tuple[float, float, int]:
        """This epoch's training loss, top-1 and images so far, summed over all processes."""
        loss_sum, weight_sum, correct = self.loss_sum.clone(), self.weight_sum.clone(), self.correct.clone()
        seen = torch.tensor(self.seen, device=self.correct.device)
        distributed.sum_across(loss_sum, weight_sum, correct, seen)
        return float(loss_sum) / max(float(weight_sum), 1e-12), float(correct) / max(int(seen), 1), int(seen)

    def add(self, stats: StepStats, images: int) -> None:
        """One more step done, with its batch's loss sum, weight and correct count."""
        self.loss_sum += stats.loss_sum
        self.weight_sum += stats.weight
        self.correct += stats.correct
        self.seen += images
        self.step += 1

    def start_epoch(self, device: torch.device) -> None:
        self.step, self.seen, self.seconds = 0, 0, 0.0
        self.loss_sum = torch.zeros((), device=device)
        self.weight_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
