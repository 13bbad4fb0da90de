"""Minibatch SGD and its learning-rate schedule, built from the config.

Weight decay is the L2 penalty on W only: the bias is not regularized, as in the lecture.
Schedules advance once per update, so warmup and decay are smooth within an epoch; the plateau schedule
(the default) also hears at each epoch's end whether validation improved.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched

from imgcls.config import OptimConfig, ScheduleConfig
from imgcls.model import LinearClassifier


def _eager(method):
    """An Optimizer method without its torch.compile guard (torch._disable_dynamo's wrapper): the guard's first
    call imports torch._dynamo, 2-3 s of every run's start on these CPUs, for a compiler imgcls never calls.
    The method itself where a torch version guards it otherwise, or not at all."""
    guard = getattr(torch, "_disable_dynamo", None)
    guarded = guard(lambda: None).__code__ if callable(guard) else None
    code = getattr(method, "__code__", None)
    return method.__wrapped__ if code is guarded and hasattr(method, "__wrapped__") else method


class SGD(torch.optim.SGD):
    """torch.optim.SGD, its rule and its state_dict, made and saved without importing torch._dynamo. (Its
    step(), which only the autograd step calls, still imports it: torch guards that call otherwise.)"""

    add_param_group = _eager(Optimizer.add_param_group)
    state_dict = _eager(Optimizer.state_dict)
    load_state_dict = _eager(Optimizer.load_state_dict)
    zero_grad = _eager(Optimizer.zero_grad)


def build_optimizer(model: LinearClassifier, config: OptimConfig, device: torch.device) -> SGD:
    groups = [
        {"params": [model.linear.weight], "weight_decay": config.weight_decay},
        {"params": [model.linear.bias], "weight_decay": 0.0},
    ]
    fused = device.type == "cuda"
    return SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, fused=fused or None,
               foreach=None if fused else False)


class PlateauLR(sched.LRScheduler):
    """The rate stays as given until `patience` epochs in a row bring no better validation top-1; then it is
    multiplied by `gamma` (at most `decays` times), and after the last decay the same wait ends the run
    (`exhausted`): early stopping that first anneals, so the model kept is not a high rate's noisy iterate.
    Its counts are attributes, so state_dict() saves them and a resumed run decides as an unbroken one."""

    def __init__(self, optimizer: SGD, gamma: float, decays: int = 2):
        self.gamma, self.decays = gamma, decays
        self.factor, self.stale, self.decayed, self.exhausted = 1.0, 0, 0, False
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [base * self.factor for base in self.base_lrs]

    def epoch_end(self, improved: bool, patience: int | None) -> None:
        self.stale = 0 if improved else self.stale + 1
        if patience is None or self.stale < patience:
            return
        if self.decayed == self.decays:
            self.exhausted = True
            return
        self.factor *= self.gamma
        self.decayed, self.stale = self.decayed + 1, 0
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr


def build_scheduler(optimizer: SGD, config: ScheduleConfig, steps_per_epoch: int, epochs: int) -> sched.LRScheduler:
    if config.schedule == "plateau":
        return PlateauLR(optimizer, config.step_gamma)
    total = steps_per_epoch * epochs
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total - 1)
    if config.schedule == "onecycle":
        # torch's one-cycle rises for its own warmup share (warmup_epochs, else 30%) and anneals to ~0. Its rise
        # must end strictly inside the run (torch divides by the rise's length less one): two updates at least.
        share = max(warmup, 2) / total if warmup > 0 and total > 2 else 0.3
        max_lrs = [group["lr"] for group in optimizer.param_groups]
        return sched.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=total, pct_start=share,
                                cycle_momentum=False)
    after = total - warmup
    if config.schedule == "constant":
        main = sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif config.schedule == "step":
        main = sched.StepLR(optimizer, step_size=config.step_epochs * steps_per_epoch, gamma=config.step_gamma)
    else:
        main = sched.CosineAnnealingLR(optimizer, T_max=max(after, 1))
    if warmup == 0:
        return main
    ramp = sched.LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup)
    return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
