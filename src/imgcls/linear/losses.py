"""The three losses the course compares, per sample: ce = -log softmax(s)_y; nll, the same as LogSoftmax then
NLLLoss (it must give ce's numbers); mse = sum_j (s_j - [j = y])^2. Class weights are applied in one place (Loss)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from imgcls.errors import UserError

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# config.LOSSES names them (the config cannot import torch); a test holds the two together
PER_SAMPLE_LOSSES: dict[str, PerSampleLoss] = {
    "ce": lambda scores, targets: F.cross_entropy(scores, targets, reduction="none"),
    "nll": lambda scores, targets: F.nll_loss(F.log_softmax(scores, 1), targets, reduction="none"),
    "mse": lambda scores, targets: (scores - F.one_hot(targets, scores.shape[1]).to(scores.dtype)).square().sum(1),
}


class Loss:
    """The training objective: sum_i w[y_i] l_i / sum_i w[y_i] with optional class weights w, which is what
    nn.CrossEntropyLoss(weight=w) computes, so weighted ce and nll still agree."""

    def __init__(self, name: str, class_weights: torch.Tensor | None = None):
        if name not in PER_SAMPLE_LOSSES:
            raise ValueError(f"unknown loss {name}")
        self.name, self.per_sample, self.class_weights = name, PER_SAMPLE_LOSSES[name], class_weights

    def __call__(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        total, weight = self.sum_and_weight(scores, targets)
        return total / mean_denominator(weight)

    def sample_weights(self, targets: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor | None:
        """Each sample's class weight w[y_i] (n,), times each model's mask given masks (P, n); None if all are 1."""
        weights = None if self.class_weights is None else self.class_weights.to(targets.device)[targets]
        if masks is not None:
            weights = masks if weights is None else masks * weights
        return weights

    def weight_of(self, targets: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor | float:
        """The denominator of the weighted mean (a plain count when unweighted, free for the training step)."""
        weights = self.sample_weights(targets, masks)
        return float(len(targets)) if weights is None else weights.sum(-1)

    def score_gradient(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """d(sum_i w[y_i] l_i)/d scores for (n, K) scores: the training step's own formula, for one model."""
        return self.stacked_loss_and_gradient(scores.t().unsqueeze(0), targets)[2][0].t()

    def stacked_loss_and_gradient(self, scores: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor | None = None
                                  ) -> tuple[torch.Tensor, torch.Tensor | float, torch.Tensor]:
        """For P models' scores (P, K, n): each one's weighted loss sum (P,), its sum of weights, and d(loss sum)/d
        scores (P, K, n) in three operations: softmax(s) - onehot(y) for ce and nll, 2 (s - onehot(y)) for mse,
        each sample's column times its class weight (and its mask (P, n), given masks)."""
        picked = targets.view(1, 1, -1).expand(len(scores), 1, -1)
        if self.name == "mse":
            gradient = scores.clone().scatter_(1, picked, -1.0, reduce="add")  # s - onehot(y)
            per_sample = gradient.square().sum(1)
            gradient.mul_(2)
        else:
            log_probs = torch.log_softmax(scores, 1)
            per_sample = log_probs.gather(1, picked).squeeze(1).neg_()
            gradient = log_probs.exp_().scatter_(1, picked, -1.0, reduce="add")
        weights = self.sample_weights(targets, masks)
        if weights is not None:
            gradient.mul_(weights.unsqueeze(-2))  # (n,) or (P, n): each sample's column
        return *_weighted_sum(per_sample, weights), gradient

    def sum_and_weight(self, scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """The weighted sum of losses and the sum of weights, so batches can be combined exactly."""
        return self.weighted_sum(self.per_sample(scores.float(), targets), targets)

    def weighted_sum(self, losses: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """sum_and_weight of per-sample losses already computed."""
        return _weighted_sum(losses, self.sample_weights(targets))


def _weighted_sum(losses: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | float]:
    """sum_i w_i l_i and sum_i w_i over the last dimension (every w_i 1 where weights is None)."""
    if weights is None:
        return losses.sum(-1), float(losses.shape[-1])
    return (losses * weights).sum(-1), weights.sum(-1)


def mean_denominator(weight: torch.Tensor | float) -> torch.Tensor | float:
    """The sum of weights to divide by, never 0: a batch whose images all weigh 0 gives a zero gradient, not NaN."""
    return weight.clamp_min(torch.finfo(weight.dtype).tiny) if torch.is_tensor(weight) else weight


def class_weights(setting: str | list[float] | None, labels: torch.Tensor, num_classes: int,
                  device: torch.device | None = None) -> torch.Tensor | None:
    """'balanced' gives each class the weight N / (K * N_class), as scikit-learn does; made on the loss's `device`
    once, since moving them there at every step would make the host wait for a GPU each time."""
    if setting is None:
        return None
    if setting == "balanced":
        counts = torch.bincount(labels, minlength=num_classes).float()
        weights = torch.where(counts > 0, len(labels) / (num_classes * counts.clamp_min(1)), torch.zeros_like(counts))
    elif len(setting) != num_classes:
        raise UserError(f"--class-weights has {len(setting)} numbers but the dataset has {num_classes} classes")
    else:
        weights = torch.tensor(setting, dtype=torch.float32)
    return weights.to(device) if device is not None else weights
