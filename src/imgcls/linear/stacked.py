"""P linear models f(x) = Wx + b trained at once on the same batches (a single run is P = 1): all weights are one
(P, K, D) tensor, so one product gives every score S = W X^T + b (P, K, n) and one every gradient dL/dW = G X with
G = (softmax(S) - onehot(y)) / sum(w) (losses.py); each model keeps its own rate, loss and SGD settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from imgcls.linear.losses import Loss, mean_denominator
from imgcls.linear.metrics import Metrics, MetricsAccumulator

Masks = tuple[torch.Tensor, torch.Tensor]  # each model's weight of each sample: (P, n) of this part, (P, N) of all


class StepStats(NamedTuple):
    """Each model's loss sum over the batch, the sum of the samples' weights, and its correct top-1 count: (P,)."""
    loss_sum: torch.Tensor
    weight: torch.Tensor | float  # one number where it is every model's (the batch's size, without class weights)
    correct: torch.Tensor


class Gradient(NamedTuple):
    """dL/dW and dL/db of every model: as the factors of dL/dW = G X, so that momentum can take the product in place,
    or (autograd's, or one summed over processes) as the products themselves."""
    scores: torch.Tensor | None = None  # G, (P, K, n)
    pixels: torch.Tensor | None = None  # X, (n, D)
    weight: torch.Tensor | None = None  # dL/dW, (P, K, D)
    bias: torch.Tensor | None = None  # dL/db, (P, K)

    def products(self) -> Gradient:
        """The same gradient with its products taken."""
        if self.weight is not None:
            return self
        count, classes, size = self.scores.shape
        weight = torch.mm(self.scores.view(count * classes, size), self.pixels).view(count, classes, -1)
        return Gradient(weight=weight, bias=self.scores.sum(2))


class Hyper(NamedTuple):
    """One model's update rule."""
    momentum: float
    nesterov: bool
    weight_decay: float


class Stack:
    """The P models' weights and momentum, their losses, and the one update rule (SGD's, with weight decay on W):
    d = g + weight_decay * W,   v = momentum * v + d,   W -= lr * (d + momentum * v if nesterov else v)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, losses: Sequence[Loss], hyper: Sequence[Hyper]):
        self.weight, self.bias = weight, bias  # (P, K, D), (P, K)
        self.velocity, self.bias_velocity = torch.zeros_like(weight), torch.zeros_like(bias)
        self.losses = list(losses)
        self.loss_groups = _loss_groups(self.losses, weight.device)
        self.momentum = _column([h.momentum for h in hyper], weight)  # one number when all share it
        self.nesterov = torch.tensor([h.nesterov for h in hyper], device=weight.device)
        self.decay = torch.tensor([h.weight_decay for h in hyper], dtype=weight.dtype, device=weight.device)
        self.any_nesterov = any(h.nesterov for h in hyper)
        self.frozen = [False] * len(hyper)  # stopped early or diverged: rate 0 from now on

    def scores(self, pixels: torch.Tensor, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None) -> torch.Tensor:
        """Every model's scores, (P, K, n), from one product: the stack's weights, or the given ones."""
        weight = self.weight if weight is None else weight
        bias = self.bias if bias is None else bias
        count, classes, features = weight.shape
        return torch.addmm(bias.reshape(-1, 1), weight.reshape(-1, features), pixels.t()).view(count, classes, -1)

    @torch.no_grad()
    def gradient(self, pixels: torch.Tensor, labels: torch.Tensor, batch_labels: torch.Tensor,
                 masks: Masks | None = None) -> tuple[Gradient, StepStats]:
        """dL/dW (P, K, D) and dL/db (P, K) of each model's mean loss over the whole batch `batch_labels` (of which
        `pixels`, `labels` may be this process's part), by the lecture's formula; a mask 0 hides a sample from a
        model (the folds of a cross-validation, in one stack)."""
        scores = self.scores(pixels)
        if len(self.loss_groups) == 1:  # every model the same loss: no gathering of rows
            sums, weights, gradient = _mean_loss_gradient(self.losses[0], scores, labels, batch_labels, masks)
        else:
            sums, weights = scores.new_empty(len(scores)), scores.new_empty(len(scores))
            gradient = torch.empty_like(scores)
            for rows, loss in self.loss_groups:
                group_masks = None if masks is None else tuple(mask.index_select(0, rows) for mask in masks)
                sums[rows], weights[rows], gradient[rows] = _mean_loss_gradient(
                    loss, scores.index_select(0, rows), labels, batch_labels, group_masks)
        return Gradient(gradient, pixels), StepStats(sums, weights, _correct(scores, labels, masks))

    def autograd_gradient(self, pixels: torch.Tensor, labels: torch.Tensor, batch_labels: torch.Tensor,
                          autocast: torch.dtype | None = None,
                          masks: Masks | None = None) -> tuple[Gradient, StepStats]:
        """`--gradient autograd`: the same gradients from PyTorch's backward pass, the reference the formula is held
        to (and the path for bf16, under autocast)."""
        weight, bias = self.weight.detach().requires_grad_(), self.bias.detach().requires_grad_()
        with torch.autocast(pixels.device.type, dtype=autocast, enabled=autocast is not None):
            scores = self.scores(pixels, weight, bias)
        sums, weights, total = [], [], 0
        for index, loss in enumerate(self.losses):
            seen = slice(None) if masks is None else masks[0][index] > 0
            loss_sum, loss_weight = loss.sum_and_weight(scores[index].t()[seen], labels[seen])
            denominator = loss.weight_of(batch_labels, None if masks is None else masks[1][index])
            total = total + loss_sum / mean_denominator(denominator)
            sums.append(loss_sum.detach())
            weights.append(torch.as_tensor(loss_weight, dtype=torch.float32, device=pixels.device))
        weight_gradient, bias_gradient = torch.autograd.grad(total, (weight, bias))
        stats = StepStats(torch.stack(sums).float(), torch.stack(weights), _correct(scores.detach(), labels, masks))
        return Gradient(weight=weight_gradient, bias=bias_gradient), stats

    @torch.no_grad()
    def update(self, gradient: Gradient, rates: Sequence[float]) -> None:
        """SGD's rule for every model at once, at the rates this update uses (none for a frozen model)."""
        rate = _column([0.0 if frozen else rate for rate, frozen in zip(rates, self.frozen)], self.weight)
        if gradient.weight is None and not torch.is_tensor(self.momentum) and not self.any_nesterov:
            count, classes, size = gradient.scores.shape  # one momentum: v = momentum * v + G X, in place
            self.velocity.view(count * classes, -1).addmm_(gradient.scores.view(count * classes, size),
                                                           gradient.pixels, beta=self.momentum)
            self.bias_velocity.mul_(self.momentum).add_(gradient.scores.sum(2))
            self.velocity.addcmul_(self.weight, _per_model(self.decay, self.weight))  # + weight_decay * W
            directions = [self.velocity, self.bias_velocity]
        else:
            gradient = gradient.products()
            gradient.weight.addcmul_(self.weight, _per_model(self.decay, self.weight))  # d = g + weight_decay * W
            directions = [self._direction(velocity, d) for velocity, d in ((self.velocity, gradient.weight),
                                                                            (self.bias_velocity, gradient.bias))]
        for param, direction in zip((self.weight, self.bias), directions):
            _descend(param, direction, rate)

    def _direction(self, velocity: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """v = momentum * v + d, then the step's direction: d + momentum * v for Nesterov's models, v for others."""
        momentum = _per_model(self.momentum, velocity)
        velocity.mul_(momentum).add_(gradient)
        if not self.any_nesterov:
            return velocity
        return torch.where(_per_model(self.nesterov, velocity), gradient + momentum * velocity, velocity)

    def freeze(self, index: int, zero: bool = False) -> None:
        """No more updates for this model (stopped early, or diverged: then its rows are zeroed, so that its NaNs
        cannot reach any other model's rows through a NaN * 0)."""
        self.frozen[index] = True
        if zero:
            for tensor in (self.weight, self.bias, self.velocity, self.bias_velocity):
                tensor[index].zero_()

    @torch.inference_mode()
    def evaluate(self, batches, superclass_of: list[int] | None = None, weight: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, heldout: torch.Tensor | None = None) -> list[Metrics]:
        """Every model's metrics on every image of `batches` (the current weights, or the given ones); with
        `heldout` (P, N) of booleans, each model's on its own rows only (its fold of a cross-validation)."""
        count, classes, _ = self.weight.shape
        accumulators = [MetricsAccumulator(classes, batches.device, superclass_of) for _ in range(count)]
        for pixels, labels, _, rows in batches.epoch():
            scores = self.scores(pixels, weight, bias).float()
            for index, (accumulator, loss) in enumerate(zip(accumulators, self.losses)):
                model_scores, model_labels = scores[index].t(), labels
                if heldout is not None:
                    mine = heldout[index].index_select(0, rows)
                    model_scores, model_labels = model_scores[mine], labels[mine]
                losses = loss.per_sample(model_scores, model_labels)  # once: the sums and their spread
                accumulator.add(model_scores, model_labels, *loss.weighted_sum(losses, model_labels), losses=losses)
        return [accumulator.result() for accumulator in accumulators]


def _mean_loss_gradient(loss: Loss, scores: torch.Tensor, labels: torch.Tensor, batch_labels: torch.Tensor,
                        masks: Masks | None) -> tuple[torch.Tensor, torch.Tensor | float, torch.Tensor]:
    """Models of one loss: their loss sums, weight sums, and the gradient in the scores of the mean over the whole
    batch (P, K, n)."""
    mine, whole = (None, None) if masks is None else masks
    sums, weights, gradient = loss.stacked_loss_and_gradient(scores, labels, mine)
    denominator = mean_denominator(loss.weight_of(batch_labels, whole))
    return sums, weights, gradient.div_(denominator if whole is None else denominator.view(-1, 1, 1))


def _correct(scores: torch.Tensor, labels: torch.Tensor, masks: Masks | None) -> torch.Tensor:
    """Each model's count of right top-1 answers among the samples it sees; max(1) is faster than argmax(1)."""
    right = scores.max(1).indices == labels
    return (right if masks is None else right & (masks[0] > 0)).sum(1)


def _descend(param: torch.Tensor, direction: torch.Tensor, rate: torch.Tensor | float) -> None:
    """param -= rate * direction, each model at its own rate (a (P,) column) or all at one."""
    if torch.is_tensor(rate):
        param.addcmul_(direction, _per_model(rate, param), value=-1.0)
    else:
        param.add_(direction, alpha=-rate)


def _column(values: list[float], like: torch.Tensor) -> torch.Tensor | float:
    """One number when every model has it (the cheaper update), else a (P,) column on the weights' device."""
    if all(value == values[0] for value in values):
        return float(values[0])
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def _per_model(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """A (P,) column shaped to multiply each model's slice of `like`; a number as it is."""
    return value.view((-1,) + (1,) * (like.dim() - 1)) if torch.is_tensor(value) else value


def _loss_groups(losses: list[Loss], device: torch.device) -> list[tuple[torch.Tensor, Loss]]:
    """(rows, loss) for each distinct loss (its name and class weights): each runs once per step on its models."""
    groups: dict[tuple, tuple[Loss, list[int]]] = {}
    for index, loss in enumerate(losses):
        weights = None if loss.class_weights is None else tuple(loss.class_weights.tolist())
        groups.setdefault((loss.name, weights), (loss, []))[1].append(index)
    return [(torch.tensor(rows, device=device), loss) for loss, rows in groups.values()]
