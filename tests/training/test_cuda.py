"""The CUDA path, for a machine with a GPU (skipped everywhere else): the stack's analytic step on the GPU gives the
CPU's weights, its steps never make the host wait for the device, and whole runs and sweeps train there (fp32 and
bf16)."""

from __future__ import annotations

import pytest
import torch

from imgcls.config import OptimConfig, build_config
from imgcls.data.batches import Batches
from imgcls.data.types import LabelledImages, Normalization
from imgcls.linear.losses import Loss
from imgcls.linear.model import LinearClassifier
from imgcls.report.report import Reporter
from imgcls.linear.stacked import Hyper, Stack
from imgcls.training.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def small_data() -> tuple[LabelledImages, Normalization]:
    generator = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (300, 3, 8, 8), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 5, (300,), generator=generator)
    return LabelledImages(images, labels), Normalization(torch.full((3, 8, 8), 0.5), torch.full((3, 8, 8), 0.25))


def steps_on(device: torch.device, name: str, weighted: bool, nesterov: bool, models: int = 1):
    """A stack of `models` (rates 0.05, 0.025, ...), its step, and the batches."""
    torch.backends.cuda.matmul.allow_tf32 = False
    data, normalization = small_data()
    torch.manual_seed(3)
    starts = [LinearClassifier((3, 8, 8), 5, init="normal", init_std=0.1) for _ in range(models)]
    config = OptimConfig(lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    weights = torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0], device=device) if weighted else None
    stack = Stack(torch.stack([m.linear.weight.detach() for m in starts]).to(device),
                  torch.stack([m.linear.bias.detach() for m in starts]).to(device), [Loss(name, weights)] * models,
                  [Hyper(config.momentum, config.nesterov, config.weight_decay)] * models)
    rates = [config.lr / (index + 1) for index in range(models)]

    def step(pixels, labels, batch_labels):
        gradient, stats = stack.gradient(pixels, labels, batch_labels)
        stack.update(gradient, rates)
        return stats

    return stack, step, Batches(data, normalization, 32, device, seed=1)


@pytest.mark.parametrize("name, weighted, nesterov", [("ce", False, False), ("nll", True, True), ("mse", True, False)])
def test_the_analytic_step_on_the_gpu_gives_the_cpus_weights(name, weighted, nesterov):
    results = []
    for device in (torch.device("cpu"), CUDA):
        stack, step, batches = steps_on(device, name, weighted, nesterov, models=3)
        for epoch in range(2):
            for batch in batches.epoch(epoch):
                step(*batch)
        results.append(stack.weight.cpu())
    assert torch.allclose(results[0], results[1], atol=1e-5), (results[0] - results[1]).abs().max()


@pytest.mark.parametrize("weighted, nesterov", [(False, False), (True, True)])
def test_gpu_steps_never_wait_for_the_device(weighted, nesterov):
    """torch.cuda.set_sync_debug_mode('error') raises on any operation that synchronizes the host with the GPU."""
    stack, step, batches = steps_on(CUDA, "ce", weighted, nesterov)
    steps = batches.epoch(0)
    step(*next(steps))  # the epoch's permutation moves to the GPU and the momentum buffers are made here
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in steps:
            step(*batch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(stack.weight).all()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_run_trains_on_the_gpu_as_on_the_cpu(precision, mnist_root, tmp_path):
    settings = {"dataset": "mnist", "data_dir": str(mnist_root), "limit": 1000, "epochs": 3, "batch_size": 64,
                "lr": 0.01}
    results = {}
    for device in ("cpu", "cuda"):
        config = build_config(None, {**settings, "device": device, "out": str(tmp_path / device),
                                     "precision": precision if device == "cuda" else "fp32"})
        results[device] = train(config, Reporter(quiet=True))
    assert results["cuda"].test.top1 > 0.7
    assert results["cuda"].test.top1 == pytest.approx(results["cpu"].test.top1, abs=0.03)


def test_a_sweep_trains_on_the_gpu_as_on_the_cpu(mnist_root, tmp_path):
    from imgcls.training import sweep as sweeping
    from imgcls.config import settings

    results = {}
    for device in ("cpu", "cuda"):
        given = {"dataset": "mnist", "data_dir": str(mnist_root), "limit": "1000", "epochs": "2", "batch_size": "64",
                 "lr": "0.001,0.01", "momentum": "0,0.9", "device": device, "out": str(tmp_path / device)}
        target, spec = sweeping.plan(None, {name: given.get(name) for name in settings()}, overwrite=False)
        with target.locked():
            results[device] = sweeping.run(target, spec, Reporter(quiet=True), resume=False)
    for cpu, cuda in zip(results["cpu"].records, results["cuda"].records):
        assert cuda["val_top1"] == pytest.approx(cpu["val_top1"], abs=0.02)
