"""The fast training step (the lecture's analytic gradient) against the plain autograd reference loop."""

from __future__ import annotations

import pytest
import torch

from imgcls import checkpoint as ckpt
from imgcls.config import build_config
from imgcls.losses import Loss
from imgcls.report import Reporter
from imgcls.train import train


@pytest.mark.parametrize("name", ["ce", "nll", "mse"])
@pytest.mark.parametrize("weighted", [False, True])
def test_score_gradient_is_autograds(name, weighted):
    torch.manual_seed(1)
    scores = torch.randn(33, 7, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (33,))
    weights = torch.rand(7, dtype=torch.float64) + 0.1 if weighted else None
    loss = Loss(name, weights)
    total, _ = loss.sum_and_weight(scores, targets)
    total.backward()
    assert torch.allclose(loss.score_gradient(scores.detach(), targets), scores.grad, atol=1e-12)


@pytest.mark.parametrize("flags", [
    {"loss": "ce"},
    {"loss": "nll", "nesterov": True, "weight_decay": 0.05},
    {"loss": "mse", "lr": 0.001, "class_weights": "balanced"},
    {"loss": "ce", "batch_size": 1, "limit": 200, "momentum": 0.0, "schedule": "onecycle"},
])
def test_fast_step_trains_to_the_reference_loops_weights(flags, mnist_root, tmp_path):
    settings = {"dataset": "mnist", "data_dir": str(mnist_root), "limit": 600, "epochs": 2, "batch_size": 32,
                "lr": 0.01, "device": "cpu", **flags}
    runs = {}
    for gradient in ("analytic", "autograd"):
        config = build_config(None, {**settings, "gradient": gradient, "out": str(tmp_path / gradient)})
        runs[gradient] = train(config, Reporter(quiet=True))
    fast, reference = (ckpt.load(tmp_path / g / "last.safetensors") for g in ("analytic", "autograd"))
    assert not torch.equal(fast.weight, torch.zeros_like(fast.weight))
    assert torch.allclose(fast.weight, reference.weight, atol=1e-5, rtol=1e-4)
    assert torch.allclose(fast.bias, reference.bias, atol=1e-5, rtol=1e-4)
    assert runs["analytic"].test.top1 == pytest.approx(runs["autograd"].test.top1, abs=2e-3)
    losses = [[e["train_loss"] for e in runs[g].history] for g in ("analytic", "autograd")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
