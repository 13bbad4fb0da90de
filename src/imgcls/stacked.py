"""P linear models trained at once on the same batches: their weights stacked into one (P*K, D) matrix.

Each step makes one product for the scores of all P models, S = W X^T + b as (P*K, n), and one for all their
gradients, dL/dW = G X (step.py's formula, G from losses.py per model). Each model keeps its own learning rate
and schedule, momentum, Nesterov, weight decay, loss and class weights: the update is torch.optim.SGD's rule with
those as per-model columns,

    d = g + weight_decay * w,   v = momentum * v + d,   w -= lr * (d + momentum * v if nesterov else v),

so each model ends where `imgcls train` of its own options ends (to float rounding). Each model is a real
LinearClassifier whose parameters are views into the stack, with its own torch SGD optimizer (momentum buffers are
views too) and scheduler: checkpoints, resuming and the learning rates are exactly train.py's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from imgcls.losses import Loss, mean_denominator
from imgcls.metrics import Metrics, MetricsAccumulator
from imgcls.model import LinearClassifier
from imgcls.runstate import TrainState


class StackedModels:
    """Build it from the models (their parameters become views of the stack), then build each model's optimizer
    and scheduler on those views (train.new_state), then attach the states."""

    def __init__(self, models: Sequence[LinearClassifier]):
        first = models[0].linear.weight
        self.weight = torch.empty(len(models), *first.shape, device=first.device)
        self.bias = torch.empty(len(models), first.shape[0], device=first.device)
        self.velocity = torch.zeros_like(self.weight)
        self.bias_velocity = torch.zeros_like(self.bias)
        with torch.no_grad():
            for index, model in enumerate(models):
                self.weight[index].copy_(model.linear.weight)
                self.bias[index].copy_(model.linear.bias)
                model.linear.weight = nn.Parameter(self.weight[index])
                model.linear.bias = nn.Parameter(self.bias[index])
        self.frozen = torch.zeros(len(models), dtype=torch.bool)  # stopped early or diverged: lr 0 from now on
        self.diverged = torch.zeros(len(models), dtype=torch.bool)
        self.states: list[TrainState] = []
        self.loss_groups: list[tuple[torch.Tensor, Loss]] = []

    def attach(self, states: Sequence[TrainState]) -> None:
        """The models' run states, in the stack's order; their momentum buffers become views of the stack too."""
        self.states = list(states)
        for index, state in enumerate(self.states):
            self.adopt_momentum(index)
            # The LR scheduler warns unless optimizer.step() has run once; the update rule runs here instead.
            state.optimizer._opt_called = True
        # grouped by loss (and class weights): each loss runs once per step, on all of its models
        self.loss_groups = _loss_groups([state.loss for state in self.states], self.weight.device)

    def adopt_momentum(self, index: int) -> None:
        """Model `index`'s momentum buffers as views of the stack (copied in where the optimizer holds some, as
        after resume.restore), so that the optimizer, and a checkpoint of it, sees what the stack updates."""
        state = self.states[index]
        if state.optimizer.param_groups[0]["momentum"] == 0:
            return
        linear = state.model.linear
        for param, velocity in ((linear.weight, self.velocity[index]), (linear.bias, self.bias_velocity[index])):
            saved = state.optimizer.state[param].get("momentum_buffer")
            if saved is not None and saved.data_ptr() != velocity.data_ptr():
                velocity.copy_(saved)
            state.optimizer.state[param]["momentum_buffer"] = velocity

    def scores(self, pixels: torch.Tensor, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None) -> torch.Tensor:
        """Every model's scores, (P, K, n), from one product: the stack's weights, or the given stack's."""
        weight = self.weight if weight is None else weight
        bias = self.bias if bias is None else bias
        count, classes, features = weight.shape
        flat = torch.addmm(bias.view(-1, 1), weight.view(-1, features), pixels.t())
        return flat.view(count, classes, -1)

    @torch.no_grad()
    def step(self, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One SGD update of every model on this batch: each model's loss sum, weight sum and correct count (P,)."""
        scores = self.scores(pixels)
        count, classes, _ = scores.shape
        loss_sums = torch.empty(count, device=scores.device)
        weights = torch.empty(count, device=scores.device)
        correct = (scores.argmax(1) == labels).sum(1)
        single = len(self.loss_groups) == 1
        gradient = None if single else torch.empty_like(scores)
        for rows, loss in self.loss_groups:
            loss_sum, weight, group_gradient = loss.stacked_loss_and_gradient(
                scores if single else scores.index_select(0, rows), labels)
            group_gradient.div_(mean_denominator(weight))  # the mean over the batch's (weighted) samples
            if single:
                gradient = group_gradient
            else:
                gradient.index_copy_(0, rows, group_gradient)
            loss_sums.index_copy_(0, rows, loss_sum)
            if torch.is_tensor(weight):
                weights.index_copy_(0, rows, weight.to(weights.dtype).expand(len(rows)))
            else:
                weights.index_fill_(0, rows, weight)
        weight_gradient = torch.mm(gradient.view(count * classes, -1), pixels).view_as(self.weight)
        self._update(self.weight, self.velocity, weight_gradient, 0)
        self._update(self.bias, self.bias_velocity, gradient.sum(2), 1)
        return loss_sums, weights, correct

    def _update(self, param: torch.Tensor, velocity: torch.Tensor, gradient: torch.Tensor, group: int) -> None:
        """torch.optim.SGD's rule for every model at once, each with its own optimizer's hyperparameters."""
        shape = (len(param),) + (1,) * (param.dim() - 1)
        groups = [state.optimizer.param_groups[group] for state in self.states]
        column = self._column
        lr = column([g["lr"] for g in groups], shape).masked_fill_(self.frozen.to(param.device).view(shape), 0.0)
        decay = [g["weight_decay"] for g in groups]
        if any(decay):
            gradient.add_(param * column(decay, shape))
        momentum = column([g["momentum"] for g in groups], shape)
        velocity.mul_(momentum).add_(gradient)
        nesterov = [g["nesterov"] for g in groups]
        if any(nesterov):  # d + momentum * v for these models, v for the others
            mask = column(nesterov, shape)
            direction = velocity * (momentum * mask + (1 - mask)) + gradient * mask
        else:
            direction = velocity
        param.addcmul_(direction, lr, value=-1.0)

    def _column(self, values: list, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.tensor(values, dtype=self.weight.dtype).view(shape).to(self.weight.device, non_blocking=True)

    def freeze(self, index: int, zero: bool = False) -> None:
        """No more updates for this model (stopped early, or diverged: then its rows are zeroed, so that its NaNs
        cannot reach any product's other rows through a NaN * 0)."""
        self.frozen[index] = True
        if zero:
            for tensor in (self.weight, self.bias, self.velocity, self.bias_velocity):
                tensor[index].zero_()

    @torch.inference_mode()
    def evaluate(self, batches, superclass_of: list[int] | None = None,
                 weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> list[Metrics]:
        """Every model's metrics on every image of `batches` (the current weights, or the given stack's)."""
        count, classes, _ = self.weight.shape
        accumulators = [MetricsAccumulator(classes, batches.device, superclass_of) for _ in range(count)]
        for pixels, labels, _ in batches.epoch():
            scores = self.scores(pixels, weight, bias)
            for index, (accumulator, state) in enumerate(zip(accumulators, self.states)):
                model_scores = scores[index].t()
                accumulator.add(model_scores, labels, *state.loss.sum_and_weight(model_scores, labels))
        return [accumulator.result() for accumulator in accumulators]


def _loss_groups(losses: list[Loss], device: torch.device) -> list[tuple[torch.Tensor, Loss]]:
    """(rows, loss) for each distinct loss: the same name and class weights."""
    groups: dict[tuple, list[int]] = {}
    representative: dict[tuple, Loss] = {}
    for index, loss in enumerate(losses):
        weights = None if loss.class_weights is None else tuple(loss.class_weights.tolist())
        key = (loss.name, weights)
        groups.setdefault(key, []).append(index)
        representative.setdefault(key, loss)
    return [(torch.tensor(rows, device=device), representative[key]) for key, rows in groups.items()]
