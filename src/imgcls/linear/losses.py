"""The three losses the course compares, as per-sample losses; class weights are applied in one place.

- ce:  cross-entropy of the softmax, -log softmax(s)_y  (nn.CrossEntropyLoss)
- nll: the same, spelled as LogSoftmax then NLLLoss; it must give the same numbers as ce
- mse: squared error between the raw scores and the one-hot target, sum_j (s_j - [j = y])^2
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _nll() -> PerSampleLoss:
    log_softmax, nll = nn.LogSoftmax(dim=1), nn.NLLLoss(reduction="none")
    return lambda scores, targets: nll(log_softmax(scores), targets)


def _mse() -> PerSampleLoss:
    return lambda scores, targets: (scores - F.one_hot(targets, scores.shape[1]).to(scores.dtype)).square().sum(1)


# config.LOSSES names them (the config cannot import torch); a test holds the two together
PER_SAMPLE_LOSSES: dict[str, Callable[[], PerSampleLoss]] = {
    "ce": lambda: nn.CrossEntropyLoss(reduction="none"),
    "nll": _nll,
    "mse": _mse,
}


def per_sample_loss(name: str) -> PerSampleLoss:
    if name not in PER_SAMPLE_LOSSES:
        raise ValueError(f"unknown loss {name}")
    return PER_SAMPLE_LOSSES[name]()


class Loss:
    """The training objective: a per-sample loss, averaged with optional class weights.

    With weights w, the loss is sum_i w[y_i] l_i / sum_i w[y_i], which is what
    nn.CrossEntropyLoss(weight=w) computes, so weighted ce and nll still agree.
    """

    def __init__(self, name: str, class_weights: torch.Tensor | None = None):
        self.name = name
        self.per_sample = per_sample_loss(name)
        self.class_weights = class_weights
        self._constants: dict = {}

    def __call__(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        total, weight = self.sum_and_weight(scores, targets)
        return total / mean_denominator(weight)

    def weight_of(self, targets: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor | float:
        """The sum of the weights of these targets: the denominator of the weighted mean (a plain count when
        unweighted, which costs the training step nothing); with masks (P, n), each model's sum (P,)."""
        if masks is not None:
            return masks.sum(1) if self.class_weights is None else masks @ self.class_weights.to(masks)[targets]
        if self.class_weights is None:
            return float(len(targets))
        return self.class_weights.to(targets.device)[targets].sum()

    def score_gradient(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """d(sum_i w[y_i] l_i)/d scores for (n, K) scores: the training step's own formula, for one model."""
        return self.stacked_loss_and_gradient(scores.t().unsqueeze(0), targets)[2][0].t()

    def stacked_loss_and_gradient(self, scores: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor | None = None
                                  ) -> tuple[torch.Tensor, torch.Tensor | float, torch.Tensor]:
        """For P models' scores (P, K, n): each model's weighted loss sum (P,), the sum of weights (the same for
        all, without masks), and d(loss sum)/d scores (P, K, n) by the lecture's formulas, sharing one softmax:
        softmax(s) - onehot(y) for ce and nll, 2 (s - onehot(y)) for mse, each sample's gradient times its class
        weight, and times each model's mask (P, n) of the samples when given."""
        picked = targets.view(1, 1, -1).expand(len(scores), 1, -1)
        minus_one = self._minus_one(scores).expand(picked.shape)
        if self.name == "mse":
            gradient = scores.clone().scatter_add_(1, picked, minus_one)  # s - onehot(y)
            per_sample = gradient.square().sum(1)
            gradient.mul_(2)
        else:
            log_probs = torch.log_softmax(scores, 1)
            per_sample = log_probs.gather(1, picked).squeeze(1).neg_()
            gradient = log_probs.exp_().scatter_add_(1, picked, minus_one)
        if masks is not None:  # each model's weight of each sample: its class weight times its mask
            weights = masks if self.class_weights is None else \
                masks * self.class_weights.to(scores.device, scores.dtype)[targets]
            gradient.mul_(weights.unsqueeze(1))
            return (per_sample * weights).sum(-1), weights.sum(-1), gradient
        if self.class_weights is None:
            return per_sample.sum(-1), self.weight_of(targets), gradient
        weights = self.class_weights.to(scores.device, scores.dtype)[targets]
        gradient.mul_(weights)  # each sample's column
        return (per_sample * weights).sum(-1), weights.sum(), gradient

    def _minus_one(self, like: torch.Tensor) -> torch.Tensor:
        """A -1 of the scores' type and device, made once: the one-hot's subtraction reads it at every step."""
        key = (like.dtype, like.device)
        if key not in self._constants:
            self._constants[key] = torch.tensor(-1.0, dtype=like.dtype, device=like.device)
        return self._constants[key]

    def sum_and_weight(self, scores: torch.Tensor,
                       targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """The weighted sum of losses and the sum of weights, so batches can be combined exactly."""
        losses = self.per_sample(scores.float(), targets)
        if self.class_weights is None:
            return losses.sum(), self.weight_of(targets)
        weights = self.class_weights.to(scores.device)[targets]
        return (losses * weights).sum(), weights.sum()


def mean_denominator(weight: torch.Tensor | float) -> torch.Tensor | float:
    """The sum of weights to divide by. A batch whose every image has class weight 0 has a loss sum of 0 and
    must count for nothing (a zero gradient), not 0/0: its NaN would spread into the weights."""
    return weight.clamp_min(torch.finfo(weight.dtype).tiny) if torch.is_tensor(weight) else weight


def class_weights(setting: str | list[float] | None, labels: torch.Tensor, num_classes: int,
                  device: torch.device | None = None) -> torch.Tensor | None:
    """'balanced' gives each class the weight N / (K * N_class), as scikit-learn does. On `device`, where the
    loss will use them: moving them there at every step would make the host wait for a GPU each time."""
    from imgcls.errors import UserError

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
