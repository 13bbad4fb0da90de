"""P linear models f(x) = Wx + b trained at once on the same batches: the lecture's mathematics, in tensors alone.

The weights of all P models are one (P, K, D) tensor, so each step makes one product for the scores of all of
them, S = W X^T + b as (P, K, n), and one for all their gradients, dL/dW = G X / sum(w) with G = softmax(S) -
onehot(y) (losses.py). A single run is P = 1. Each model keeps its own rate, momentum, Nesterov, weight decay,
loss and class weights; the update is SGD's, with those as per-model columns:

    d = g + weight_decay * W,   v = momentum * v + d,   W -= lr * (d + momentum * v if nesterov else v)

(the bias has no weight decay). `--gradient autograd` takes g from PyTorch's backward pass instead: the reference
the lecture's formula is held to, and the path for bf16.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from imgcls.linear.losses import Loss, mean_denominator
from imgcls.linear.metrics import Metrics, MetricsAccumulator


class StepStats(NamedTuple):
    """Each model's loss sum over the batch, the sum of the samples' weights, and its correct top-1 count: (P,)."""
    loss_sum: torch.Tensor
    weight: torch.Tensor | float  # one number where it is every model's (the batch's size, without class weights)
    correct: torch.Tensor


class Gradient(NamedTuple):
    """dL/dW and dL/db of every model. The lecture's gradient keeps W's as the factors of its product,
    dL/dW = scale * G X with G the loss's gradient in the scores, so that momentum can take the product in place;
    autograd's, or one summed over processes, holds the products themselves."""
    scores: torch.Tensor | None = None  # G, (P, K, n)
    pixels: torch.Tensor | None = None  # X, (n, D)
    scale: float = 1.0
    weight: torch.Tensor | None = None  # dL/dW, (P, K, D)
    bias: torch.Tensor | None = None  # dL/db, (P, K)

    def products(self) -> Gradient:
        """The same gradient with its products taken."""
        if self.weight is not None:
            return self
        count, classes, size = self.scores.shape
        weight = torch.mm(self.scores.view(count * classes, size), self.pixels).view(count, classes, -1)
        bias = self.scores.sum(2)
        if self.scale != 1.0:
            weight.mul_(self.scale)
            bias.mul_(self.scale)
        return Gradient(weight=weight, bias=bias)


class Hyper(NamedTuple):
    """One model's update rule."""
    momentum: float
    nesterov: bool
    weight_decay: float


class Stack:
    """The P models' weights and momentum, their losses, and the one update rule."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, losses: Sequence[Loss], hyper: Sequence[Hyper]):
        self.weight, self.bias = weight, bias  # (P, K, D), (P, K)
        self.velocity, self.bias_velocity = torch.zeros_like(weight), torch.zeros_like(bias)
        self.losses = list(losses)
        self.loss_groups = _loss_groups(self.losses, weight.device)
        self.momentum = _column([h.momentum for h in hyper], weight)
        self.nesterov = _column([float(h.nesterov) for h in hyper], weight)
        self.decay = _column([h.weight_decay for h in hyper], weight)
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
                 masks: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[Gradient, StepStats]:
        """dL/dW (P, K, D) and dL/db (P, K) of each model's mean loss over the whole batch `batch_labels` (of
        which `pixels`, `labels` may be this process's part), by the lecture's formula. `masks`: each model's
        weight of each sample, (P, n) of this part and (P, N) of the whole batch; 0 hides a sample from a model
        (the folds of a cross-validation, in one stack)."""
        if masks is not None:
            return self._masked_gradient(pixels, labels, batch_labels, *masks)
        scores = self.scores(pixels)
        count, classes, _ = scores.shape
        scale = 1.0
        if len(self.loss_groups) == 1:  # every model the same loss: no gathering of rows
            loss = self.losses[0]
            sums, weights, gradient = loss.stacked_loss_and_gradient(scores, labels)
            denominator = mean_denominator(loss.weight_of(batch_labels))  # the mean over the whole batch
            if torch.is_tensor(denominator):
                gradient.div_(denominator)
            else:
                scale = 1.0 / denominator  # folded into the product below
        else:
            sums, weights, gradient = self._grouped_loss_and_gradient(scores, labels, batch_labels)
        stats = StepStats(sums, weights, (scores.max(1).indices == labels).sum(1))  # max(1): faster than argmax(1)
        return Gradient(gradient, pixels, scale), stats

    def _grouped_loss_and_gradient(self, scores: torch.Tensor, labels: torch.Tensor, batch_labels: torch.Tensor,
                                   masks: tuple[torch.Tensor, torch.Tensor] | None = None
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each loss (name and class weights) on the rows of its models, with their masks if any: their loss sums,
        weight sums and mean loss's gradient, put back in the stack's order."""
        count = len(scores)
        sums, weights = torch.empty(count, device=scores.device), torch.empty(count, device=scores.device)
        gradient = torch.empty_like(scores)
        for rows, loss in self.loss_groups:
            mine, whole = (None, None) if masks is None else (mask.index_select(0, rows) for mask in masks)
            loss_sum, weight, group_gradient = loss.stacked_loss_and_gradient(scores.index_select(0, rows), labels,
                                                                              mine)
            denominator = mean_denominator(loss.weight_of(batch_labels, whole))  # the mean over the whole batch
            group_gradient.div_(denominator if whole is None else denominator.view(-1, 1, 1))
            gradient.index_copy_(0, rows, group_gradient)
            sums.index_copy_(0, rows, loss_sum)
            weights.index_copy_(0, rows, torch.as_tensor(weight, dtype=weights.dtype,
                                                         device=weights.device).expand(len(rows)))
        return sums, weights, gradient

    def _masked_gradient(self, pixels: torch.Tensor, labels: torch.Tensor, batch_labels: torch.Tensor,
                         mine: torch.Tensor, whole: torch.Tensor) -> tuple[Gradient, StepStats]:
        """gradient() with each model's samples weighted by its mask: the mean over the samples it sees."""
        scores = self.scores(pixels)
        sums, weights, gradient = self._grouped_loss_and_gradient(scores, labels, batch_labels, (mine, whole))
        correct = ((scores.max(1).indices == labels) & (mine > 0)).sum(1)
        return Gradient(gradient, pixels), StepStats(sums, weights, correct)

    def autograd_gradient(self, pixels: torch.Tensor, labels: torch.Tensor, batch_labels: torch.Tensor,
                          autocast: torch.dtype | None = None,
                          masks: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[Gradient, StepStats]:
        """The same gradients from PyTorch's backward pass of each model's mean loss (and in bf16 under autocast),
        over the samples each model's mask lets it see."""
        weight, bias = self.weight.detach().requires_grad_(), self.bias.detach().requires_grad_()
        with torch.autocast(pixels.device.type, dtype=autocast, enabled=autocast is not None):
            scores = self.scores(pixels, weight, bias)
        sums, weights, total = [], [], 0
        for index, loss in enumerate(self.losses):
            seen = slice(None) if masks is None else masks[0][index] > 0
            loss_sum, loss_weight = loss.sum_and_weight(scores[index].t()[seen], labels[seen])
            whole = None if masks is None else masks[1][index:index + 1]
            denominator = loss.weight_of(batch_labels, whole)
            total = total + loss_sum / mean_denominator(denominator if masks is None else denominator[0])
            sums.append(loss_sum.detach())
            weights.append(torch.as_tensor(loss_weight, dtype=torch.float32, device=pixels.device))
        weight_gradient, bias_gradient = torch.autograd.grad(total, (weight, bias))
        right = scores.detach().max(1).indices == labels
        correct = (right if masks is None else right & (masks[0] > 0)).sum(1)
        stats = StepStats(torch.stack(sums).float(), torch.stack(weights), correct)
        return Gradient(weight=weight_gradient, bias=bias_gradient), stats

    @torch.no_grad()
    def update(self, gradient: Gradient, rates: Sequence[float]) -> None:
        """SGD's rule for every model at once, at the rates this update uses (none for a frozen model)."""
        rate = _column([0.0 if frozen else rate for rate, frozen in zip(rates, self.frozen)], self.weight)
        momentum = self.momentum
        if gradient.weight is None and not torch.is_tensor(momentum) and momentum and \
                not torch.is_tensor(self.nesterov) and not self.nesterov:
            return self._momentum_update(gradient, momentum, rate)
        gradient = gradient.products()
        self._update(self.weight, self.velocity, gradient.weight, rate, self.decay)
        self._update(self.bias, self.bias_velocity, gradient.bias, rate, 0.0)

    def _momentum_update(self, gradient: Gradient, momentum: float, rate: torch.Tensor | float) -> None:
        """The same rule where every model has the same (heavy-ball) momentum: v = momentum * v + g takes W's
        gradient product in place, then v += weight_decay * W and W -= lr * v."""
        count, classes, size = gradient.scores.shape
        self.velocity.view(count * classes, -1).addmm_(gradient.scores.view(count * classes, size), gradient.pixels,
                                                       beta=momentum, alpha=gradient.scale)
        self.bias_velocity.mul_(momentum).add_(gradient.scores.sum(2), alpha=gradient.scale)
        if torch.is_tensor(self.decay):
            self.velocity.addcmul_(self.weight, self.decay.view(-1, 1, 1))
        elif self.decay:
            self.velocity.add_(self.weight, alpha=self.decay)
        for param, velocity in ((self.weight, self.velocity), (self.bias, self.bias_velocity)):
            _descend(param, velocity, rate)

    def _update(self, param: torch.Tensor, velocity: torch.Tensor, gradient: torch.Tensor,
                rate: torch.Tensor | float, decay: torch.Tensor | float) -> None:
        shape = (len(param),) + (1,) * (param.dim() - 1)
        momentum, nesterov = self.momentum, self.nesterov
        if torch.is_tensor(decay):  # d = g + weight_decay * W
            gradient.addcmul_(param, decay.view(shape))
        elif decay:
            gradient.add_(param, alpha=decay)
        direction = gradient
        if torch.is_tensor(momentum) or momentum:  # v = momentum * v + d
            if torch.is_tensor(momentum):
                momentum = momentum.view(shape)
                velocity.mul_(momentum).add_(gradient)
            else:
                torch.add(gradient, velocity, alpha=momentum, out=velocity)
            if torch.is_tensor(nesterov):  # d + momentum * v for the Nesterov models, v for the others
                direction = torch.where(nesterov.view(shape) > 0, gradient + velocity * momentum, velocity)
            elif nesterov:
                direction = gradient.add_(velocity * momentum)
            else:
                direction = velocity
        _descend(param, direction, rate)

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
                losses = loss.per_sample(model_scores.float(), model_labels)  # once: the sums and their spread
                accumulator.add(model_scores, model_labels, *loss.weighted_sum(losses, model_labels), losses=losses)
        return [accumulator.result() for accumulator in accumulators]


def _descend(param: torch.Tensor, direction: torch.Tensor, rate: torch.Tensor | float) -> None:
    """param -= rate * direction, each model at its own rate (a (P,) column) or all at one."""
    if torch.is_tensor(rate):
        param.addcmul_(direction, rate.view((-1,) + (1,) * (param.dim() - 1)), value=-1.0)
    else:
        param.add_(direction, alpha=-rate)


def _column(values: list[float], like: torch.Tensor) -> torch.Tensor | float:
    """One number when every model has it (the cheaper update), else a (P,) column on the weights' device."""
    if all(value == values[0] for value in values):
        return float(values[0])
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def _loss_groups(losses: list[Loss], device: torch.device) -> list[tuple[torch.Tensor, Loss]]:
    """(rows, loss) for each distinct loss (its name and class weights): each runs once per step on its models."""
    groups: dict[tuple, list[int]] = {}
    representative: dict[tuple, Loss] = {}
    for index, loss in enumerate(losses):
        weights = None if loss.class_weights is None else tuple(loss.class_weights.tolist())
        key = (loss.name, weights)
        groups.setdefault(key, []).append(index)
        representative.setdefault(key, loss)
    return [(torch.tensor(rows, device=device), representative[key]) for key, rows in groups.items()]
