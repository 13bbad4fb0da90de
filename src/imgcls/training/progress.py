"""Where a run is, filled by the training loop (engine.py) and restored by resume.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from imgcls import distributed


@dataclass
class Progress:
    """Everything besides the weights, momentum and schedule that a resumed run needs."""

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

    def note_rate(self, rate: float) -> None:
        """The rate the update under way uses (epochs.jsonl's lr, its first, and lr_last)."""
        self.lr_last = rate
        if self.step == 0:
            self.lr_first = rate

    def advance(self, images: int, seconds: float) -> None:
        """One more step done, on this many images (this process's part), this long into the epoch."""
        self.seen += images
        self.step += 1
        self.seconds = seconds

    def start_epoch(self, device: torch.device) -> None:
        self.step, self.seen, self.seconds = 0, 0, 0.0
        self.loss_sum = torch.zeros((), device=device)
        self.weight_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
