"""One update of minibatch SGD, two ways to the same numbers.

- AnalyticStep, the default in one process at float32: the lecture's gradient of f(x) = Wx + b.
  With scores S and G = d(loss sum)/dS from losses.py, dL/dW = G^T X / sum(w) and
  dL/db = the sum of G's rows / sum(w), then torch.optim.SGD's update rule on the optimizer's own
  momentum buffers, so checkpoints, resuming and schedules are those of torch.optim.SGD. With
  plain momentum the gradient's product accumulates straight into the momentum buffer; otherwise
  torch's sgd() applies the rule. No autograd graph and no optimizer.step() wrappers: a CPU
  minibatch step costs little more than its arithmetic.
- AutogradStep (`--gradient autograd`, bf16 autocast, and always under DDP, whose gradient
  averaging hooks into autograd): backward() and optimizer.step(), the reference the tests hold
  the analytic step to.

Both return StepStats, left on the device so that a GPU step needs no host sync.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.optim.sgd import sgd

from imgcls.losses import Loss, mean_denominator
from imgcls.model import LinearClassifier
from imgcls.optim import SGD


class StepStats(NamedTuple):
    loss_sum: torch.Tensor  # the batch's weighted sum of per-sample losses
    weight: torch.Tensor | float  # the sum of their weights (the count, when unweighted)
    correct: torch.Tensor  # how many top-1 predictions were right


class AnalyticStep:
    def __init__(self, model: LinearClassifier, loss: Loss, optimizer: SGD):
        self.weight, self.bias = model.linear.weight, model.linear.bias
        self.loss = loss
        self.optimizer = optimizer
        self.ones = torch.ones(0, 1, device=self.weight.device)
        # The LR scheduler warns unless optimizer.step() has run once; its update rule runs here instead.
        optimizer._opt_called = True

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, labels: torch.Tensor, batch_labels: torch.Tensor) -> StepStats:
        # Scores as (K, n) = W X^T + b, not (n, K): the same numbers, and with few classes the
        # products and the softmax over classes run 2-4x faster on the CPU in this layout.
        scores = torch.addmm(self.bias.unsqueeze(1), self.weight, pixels.t())
        loss_sum, weight, gradient = self.loss.loss_and_gradient(scores, labels, class_dim=0)
        if len(self.ones) < len(labels):
            self.ones = torch.ones(len(labels), 1, device=pixels.device)
        # dL/dW = G X / sum(w) and dL/db = G 1 / sum(w): the same product with another right-hand side.
        inputs = {self.weight: pixels, self.bias: self.ones[:len(labels)]}
        if torch.is_tensor(weight):  # class weights: divide on the device rather than read the sum back
            gradient.div_(mean_denominator(weight))
        self.update(gradient, inputs, 1.0 if torch.is_tensor(weight) else 1.0 / weight)
        return StepStats(loss_sum, weight, (scores.max(0).indices == labels).sum())

    def update(self, gradient: torch.Tensor, inputs: dict[torch.Tensor, torch.Tensor], scale: float) -> None:
        """torch.optim.SGD's rule for each parameter p, whose gradient is g = scale * gradient @ inputs[p]:
            d = g + weight_decay * p,  v = momentum * v + d,  p -= lr * (d + momentum * v if nesterov else v)."""
        for group in self.optimizer.param_groups:
            plain_momentum = group["momentum"] != 0 and not (group["nesterov"] or group["dampening"]
                                                             or group["maximize"])
            for param in group["params"]:
                if plain_momentum:
                    self.momentum_update(param, gradient, inputs[param], scale, group)
                else:
                    self.torch_update(param, torch.mm(gradient, inputs[param]).view_as(param).mul_(scale), group)

    def momentum_update(self, param: torch.Tensor, gradient: torch.Tensor, inputs: torch.Tensor, scale: float,
                        group: dict) -> None:
        """g is never formed: its product accumulates straight into v, one BLAS call for W's gradient and
        velocity. torch starts v at d on the first step; momentum * 0 + d is the same."""
        state = self.optimizer.state[param]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param)
        velocity = state["momentum_buffer"]
        velocity.view(len(gradient), -1).addmm_(gradient, inputs, beta=group["momentum"], alpha=scale)
        if group["weight_decay"]:
            velocity.add_(param, alpha=group["weight_decay"])
        param.add_(velocity, alpha=-group["lr"])

    def torch_update(self, param: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        """torch's own sgd() on this parameter, keeping its momentum buffer in the optimizer's state."""
        state = self.optimizer.state[param]
        buffers = [state.get("momentum_buffer")]
        sgd([param], [grad], buffers, foreach=group["foreach"], fused=group["fused"],
            weight_decay=group["weight_decay"], momentum=group["momentum"], lr=group["lr"],
            dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"])
        if group["momentum"] != 0:
            state["momentum_buffer"] = buffers[0]


class AutogradStep:
    def __init__(self, model: torch.nn.Module, loss: Loss, optimizer: SGD, autocast_dtype: torch.dtype | None,
                 world: int = 1):
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.autocast_dtype = autocast_dtype
        self.world = world

    def __call__(self, pixels: torch.Tensor, labels: torch.Tensor, batch_labels: torch.Tensor) -> StepStats:
        autocast = self.autocast_dtype is not None
        with torch.autocast(pixels.device.type, dtype=self.autocast_dtype, enabled=autocast):
            scores = self.model(pixels)
        loss_sum, weight = self.loss.sum_and_weight(scores, labels)
        # The mean over the whole global batch; DDP divides the summed gradients by the world size.
        batch_loss = loss_sum * self.world / mean_denominator(self.loss.weight_of(batch_labels))
        self.optimizer.zero_grad(set_to_none=True)
        batch_loss.backward()
        self.optimizer.step()
        return StepStats(loss_sum.detach(), weight, (scores.detach().argmax(1) == labels).sum())


def make_step(model: torch.nn.Module, loss: Loss, optimizer: SGD, autocast_dtype: torch.dtype | None,
              gradient: str, world: int = 1) -> AnalyticStep | AutogradStep:
    """The analytic step where it applies: the bare linear model (not DDP-wrapped) at float32."""
    if gradient == "analytic" and isinstance(model, LinearClassifier) and autocast_dtype is None:
        return AnalyticStep(model, loss, optimizer)
    return AutogradStep(model, loss, optimizer, autocast_dtype, world)
