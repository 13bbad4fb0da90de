"""The fast training step (the lecture's analytic gradient) against the plain autograd reference loop."""

from __future__ import annotations

import pytest
import torch

from conftest import run_python
from imgcls.runs import checkpoint as ckpt
from imgcls.config import OptimConfig, build_config
from imgcls.linear.losses import Loss
from imgcls.linear.model import LinearClassifier
from imgcls.training.engine import Engine
from imgcls.report.report import Reporter
from imgcls.linear.stacked import Hyper, Stack
from imgcls.training.train import train


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


def stack_of(models: list[LinearClassifier], losses: list[Loss], configs: list[OptimConfig]) -> Stack:
    weight = torch.stack([m.linear.weight.detach().clone() for m in models])
    bias = torch.stack([m.linear.bias.detach().clone() for m in models])
    return Stack(weight, bias, losses, [Hyper(c.momentum, c.nesterov, c.weight_decay) for c in configs])


def torch_sgd(model: LinearClassifier, config: OptimConfig) -> torch.optim.SGD:
    """torch's own SGD, with weight decay on W only: the reference the stack's update rule is held to."""
    return torch.optim.SGD([{"params": [model.linear.weight], "weight_decay": config.weight_decay},
                            {"params": [model.linear.bias], "weight_decay": 0.0}], lr=config.lr,
                           momentum=config.momentum, nesterov=config.nesterov)


@pytest.mark.parametrize("momentum, nesterov, weight_decay", [
    (0.9, False, 0.0), (0.9, False, 0.05), (0.5, True, 0.05), (0.0, False, 0.0), (0.0, False, 0.05)])
@pytest.mark.parametrize("name, weighted", [("ce", False), ("nll", True), ("mse", True)])
@pytest.mark.parametrize("gradient", ["analytic", "autograd"])
def test_the_stack_s_step_makes_torchs_sgd_update(momentum, nesterov, weight_decay, name, weighted, gradient):
    """Three updates of a stack of one model (the lecture's gradient, or autograd's) against backward() +
    torch.optim.SGD.step(): the same weights and momentum, and the same step statistics."""
    torch.manual_seed(3)
    pixels, labels = torch.randn(4, 24, 50), torch.randint(0, 5, (4, 24))
    loss = Loss(name, torch.rand(5) + 0.5 if weighted else None)
    config = OptimConfig(lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    model = LinearClassifier((2, 5, 5), 5, init="normal", init_std=0.1)
    stack = stack_of([model], [loss], [config])
    optimizer = torch_sgd(model, config)
    for x, y in zip(pixels, labels):
        found, got = stack.autograd_gradient(x, y, y) if gradient == "autograd" else stack.gradient(x, y, y)
        stack.update(found, [config.lr])
        scores = model(x)
        loss_sum, weight = loss.sum_and_weight(scores, y)
        optimizer.zero_grad()
        (loss_sum / weight).backward()
        optimizer.step()
        assert float(got.loss_sum[0]) == pytest.approx(float(loss_sum.detach()), rel=1e-5)
        assert float(torch.as_tensor(got.weight).reshape(-1)[0]) == pytest.approx(float(weight), rel=1e-6)
        assert int(got.correct[0]) == int((scores.argmax(1) == y).sum())
    assert torch.allclose(stack.weight[0], model.linear.weight, atol=1e-6)
    assert torch.allclose(stack.bias[0], model.linear.bias, atol=1e-6)
    if momentum:
        buffer = optimizer.state[model.linear.weight]["momentum_buffer"]
        assert torch.allclose(stack.velocity[0], buffer, atol=1e-6)


@pytest.mark.parametrize("momenta", [(0.9, 0.0, 0.5, 0.9), (0.9, 0.9, 0.9, 0.9)])  # the second: v takes G X in place
def test_each_model_of_a_stack_makes_torchs_sgd_update_with_its_own_options(momenta):
    """Four models of different losses, rates, momentum, Nesterov and weight decay, stacked: each ends where
    torch.optim.SGD takes it alone."""
    torch.manual_seed(5)
    pixels, labels = torch.randn(5, 16, 12), torch.randint(0, 4, (5, 16))
    nesterov = len(set(momenta)) > 1
    configs = [OptimConfig(lr=0.1, momentum=momenta[0], nesterov=nesterov, weight_decay=0.01),
               OptimConfig(lr=0.03, momentum=momenta[1], weight_decay=0.0),
               OptimConfig(lr=0.3, momentum=momenta[2], weight_decay=0.1),
               OptimConfig(lr=0.01, momentum=momenta[3], weight_decay=0.0)]
    losses = [Loss("ce"), Loss("mse"), Loss("nll", torch.tensor([1.0, 2.0, 0.5, 1.0])), Loss("ce")]
    models = [LinearClassifier((1, 3, 4), 4, init="normal", init_std=0.2) for _ in configs]
    stack = stack_of(models, losses, configs)
    optimizers = [torch_sgd(model, config) for model, config in zip(models, configs)]
    for x, y in zip(pixels, labels):
        stack.update(stack.gradient(x, y, y)[0], [config.lr for config in configs])
        for model, loss, optimizer in zip(models, losses, optimizers):
            optimizer.zero_grad()
            loss(model(x), y).backward()
            optimizer.step()
    for index, model in enumerate(models):
        assert torch.allclose(stack.weight[index], model.linear.weight, atol=1e-6)
        assert torch.allclose(stack.bias[index], model.linear.bias, atol=1e-6)


def test_a_run_on_cached_data_never_imports_torchs_compiler(cli, mnist_root, tmp_path, assert_ok):
    """torch._dynamo takes 2-3 s to import on these CPUs; a run whose data is cached (torchvision, which imports
    it, only reads files) must not import it."""
    code = ("import sys\nfrom imgcls.cli.app import app\ntry:\n    app(sys.argv[1:], prog_name='imgcls')\n"
            "except SystemExit as e:\n    code = e.code\nprint(code, 'torch._dynamo' in sys.modules)")
    args = ("train", "--dataset", "mnist", "--data-dir", mnist_root, "--limit", 300, "--epochs", 2, "--device", "cpu",
            "--out", tmp_path / "run", "--overwrite", "--quiet")
    assert_ok(cli(*args))  # here, in this process: the images decoded and cached, if they were not yet
    done = run_python("-c", code, *args, timeout=300)
    assert done.stdout.strip().splitlines()[-1] == "0 False", done.stdout + done.stderr
    assert (tmp_path / "run" / "last.safetensors").exists()


def test_threads_sets_the_run_s_cpu_threads_and_restores_them(mnist_root, tmp_path, monkeypatch):
    seen = []
    step = Engine.step

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return step(*args, **kwargs)

    monkeypatch.setattr(Engine, "step", spy)
    before = torch.get_num_threads()
    config = build_config(None, {"dataset": "mnist", "data_dir": str(mnist_root), "limit": 200, "epochs": 2,
                                 "threads": 1 if before > 1 else 2, "device": "cpu", "out": str(tmp_path / "run")})
    train(config, Reporter(quiet=True))
    assert set(seen) == {config.train.threads} and len(seen) >= 2
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("faster_on_all_cores", [False, True])
def test_without_threads_a_run_picks_the_faster_count_and_keeps_it_on_resume(mnist_root, tmp_path, monkeypatch,
                                                                             faster_on_all_cores):
    import yaml

    from imgcls import device

    seen = []
    step = Engine.step
    monkeypatch.setattr(Engine, "step", lambda *a, **k: seen.append(torch.get_num_threads()) or step(*a, **k))
    monkeypatch.setattr(device, "_clearly_faster", lambda *args: faster_on_all_cores)
    monkeypatch.setattr(device, "SMALL_PRODUCT", 0)  # this small step would take one thread untimed
    before = torch.get_num_threads()
    settings = {"dataset": "mnist", "data_dir": str(mnist_root), "limit": 200, "device": "cpu",
                "out": str(tmp_path / "run")}
    train(build_config(None, {**settings, "epochs": 1}), Reporter(quiet=True))
    chosen = before if faster_on_all_cores else 1
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["threads"]
    assert set(seen) == {chosen} and recorded == chosen and torch.get_num_threads() == before
    # a resumed run reads config.yaml: the recorded count is kept, whatever a new timing would say
    monkeypatch.setattr(device, "_clearly_faster", lambda *args: pytest.fail("timed again on resume"))
    resumed = build_config(tmp_path / "run" / "config.yaml", {})
    assert device.step_threads(resumed.train.threads, 32, 784, 10, torch.device("cpu")) == chosen


def test_step_threads_keeps_a_given_count_and_a_gpu_run_s(monkeypatch):
    from imgcls import device
    from imgcls.device import BIG_PRODUCT, step_threads

    monkeypatch.setattr(device, "_clearly_faster", lambda *args: pytest.fail("timed without need"))
    before = torch.get_num_threads()
    try:
        assert step_threads(3, 128, 3072, 10, torch.device("cpu")) == 3
        assert step_threads(None, 128, 3072, 10, torch.device("cuda")) is None
        assert step_threads(None, 128, 3072, 10, torch.device("cpu"), world=2) is None
        assert torch.get_num_threads() == before
        assert step_threads(None, BIG_PRODUCT, 1, 1, torch.device("cpu")) == before  # large: all cores
        assert step_threads(None, 128, 3072, 10, torch.device("cpu")) == 1  # CIFAR-10 at batch 128: one
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("weighted", [False, True])
def test_a_training_step_never_reads_a_number_back(weighted, monkeypatch):
    """On a GPU, reading a value back (item, float, bool, tolist...) makes the host wait for the device at every
    step. The batches and the analytic step must do none: here any such read raises."""
    from imgcls.data.batches import Batches
    from imgcls.data.types import LabelledImages, Normalization

    torch.manual_seed(4)
    images = LabelledImages(torch.randint(0, 256, (70, 1, 4, 4), dtype=torch.uint8), torch.randint(0, 3, (70,)))
    batches = Batches(images, Normalization(torch.full((1, 4, 4), 0.5), torch.full((1, 4, 4), 0.3)), 16,
                      torch.device("cpu"), seed=1)
    stack = stack_of([LinearClassifier((1, 4, 4), 3)], [Loss("ce", torch.tensor([1.0, 2.0, 0.5]) if weighted
                                                             else None)], [OptimConfig(lr=0.1, weight_decay=0.01)])

    def read_back(*args, **kwargs):
        raise AssertionError("a value was read back from a tensor during a step")

    for name in ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, read_back)
    for epoch in range(2):
        for pixels, labels, batch_labels, _ in batches.epoch(epoch):
            stack.update(stack.gradient(pixels, labels, batch_labels)[0], [0.1])
    monkeypatch.undo()
    assert not torch.equal(stack.weight, torch.zeros_like(stack.weight))


@pytest.mark.parametrize("gradient", ["analytic", "autograd"])
def test_a_batch_of_only_zero_weight_classes_leaves_the_model_as_it_was(gradient):
    """Class weight 0 means 'ignore this class': a batch holding only such images (always so with batch size 1)
    has nothing to learn from. Its weighted mean is 0/0; taken as such it would turn W and b into NaN."""
    torch.manual_seed(0)
    stack = stack_of([LinearClassifier((1, 2, 2), 3)], [Loss("ce", torch.tensor([0.0, 1.0, 1.0]))],
                     [OptimConfig(lr=0.5, momentum=0.0, weight_decay=0.0)])
    before = [stack.weight.clone(), stack.bias.clone()]

    def step(pixels, labels):
        found = stack.autograd_gradient if gradient == "autograd" else stack.gradient
        gradient_, stats = found(pixels, labels, labels)
        stack.update(gradient_, [0.5])
        return stats

    labels = torch.zeros(4, dtype=torch.int64)
    stats = step(torch.randn(4, 4), labels)
    assert float(stats.loss_sum[0]) == 0 and float(torch.as_tensor(stats.weight).reshape(-1)[0]) == 0
    assert torch.equal(before[0], stack.weight) and torch.equal(before[1], stack.bias)
    labels[0] = 1  # one image that counts: now the model does learn
    step(torch.randn(4, 4), labels)
    assert not torch.equal(before[0], stack.weight)
    assert bool(torch.isfinite(stack.weight).all()) and bool(torch.isfinite(stack.bias).all())


def test_choosing_the_thread_count_draws_nothing_from_the_run_s_random_numbers():
    from imgcls.device import step_threads

    before = torch.get_num_threads()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    try:
        step_threads(None, 64, 3072, 1000, torch.device("cpu"))  # large enough to be timed
    finally:
        torch.set_num_threads(before)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name, weighted", [("ce", False), ("nll", True), ("mse", False)])
def test_a_model_s_sample_mask_gives_the_gradient_of_the_samples_it_sees(name, weighted):
    """Each model of a stack may carry its own sample mask (a cross-validation's folds in one stack): its gradient,
    loss and counts are those of the batch's samples it sees alone, also when the batch is split between processes
    (each part's gradient summed, the mean taken over the whole batch's mask)."""
    torch.manual_seed(8)
    pixels, labels = torch.randn(30, 12), torch.randint(0, 4, (30,))
    loss = Loss(name, torch.tensor([1.0, 2.0, 0.5, 1.5]) if weighted else None)
    start = LinearClassifier((1, 3, 4), 4, init="normal", init_std=0.3)
    config = OptimConfig(lr=0.1, weight_decay=0.01)
    masks = torch.stack([torch.ones(30), (torch.arange(30) % 3 != 0).float(), torch.zeros(30)])
    stack = stack_of([start] * 3, [loss] * 3, [config] * 3)
    found, stats = stack.gradient(pixels, labels, labels, (masks, masks))
    found = found.products()
    by_autograd, autograd_stats = stack.autograd_gradient(pixels, labels, labels, masks=(masks, masks))
    assert torch.allclose(by_autograd.weight, found.weight, atol=1e-6)  # --gradient autograd sees what it sees
    assert torch.allclose(autograd_stats.loss_sum, stats.loss_sum, rtol=1e-5)
    assert torch.equal(autograd_stats.correct, stats.correct)
    for index in range(2):
        seen = masks[index].bool()
        alone = stack_of([start], [loss], [config])
        expected, expected_stats = alone.gradient(pixels[seen], labels[seen], labels[seen])
        expected = expected.products()
        assert torch.allclose(found.weight[index], expected.weight[0], atol=1e-6)
        assert torch.allclose(found.bias[index], expected.bias[0], atol=1e-6)
        assert float(stats.loss_sum[index]) == pytest.approx(float(expected_stats.loss_sum[0]), rel=1e-5)
        assert float(stats.weight[index]) == pytest.approx(float(torch.as_tensor(expected_stats.weight).reshape(-1)[0]),
                                                           rel=1e-6)
        assert int(stats.correct[index]) == int(expected_stats.correct[0])
    assert not found.weight[2].any() and not found.bias[2].any()  # a batch it sees nothing of: no step
    parts = [stack.gradient(pixels[part], labels[part], labels, (masks[:, part], masks))[0].products()
             for part in (slice(0, 13), slice(13, 30))]
    assert torch.allclose(parts[0].weight + parts[1].weight, found.weight, atol=1e-6)


def test_masked_models_of_one_stack_train_as_each_alone():
    """Two folds' models in one stack, each hidden the other's images, end where each ends trained alone."""
    from imgcls.data.batches import make_batches, make_eval_batches
    from imgcls.data.prepare import prepare
    from imgcls.training.engine import Quiet, new_model
    from imgcls.training.interrupt import StopRequest

    cpu = torch.device("cpu")
    config = build_config(None, {"limit": 300, "epochs": 2, "lr": 0.05, "weight_decay": 0.01, "batch_size": 32,
                                 "device": "cpu", "schedule": "cosine"})
    data = prepare(config.data, config.train.seed)
    batches = make_batches(data, "train", 32, cpu, config.train.seed)
    folds = [torch.arange(len(data.train)) % 2 == fold for fold in (0, 1)]

    def trained(masks):
        models = [new_model(config, data, None, len(batches), cpu) for _ in masks]
        for model, mask in zip(models, masks):
            model.sample_mask = mask
        engine = Engine(models, data, batches, make_eval_batches(data, "val", cpu), cpu, None, StopRequest(), Quiet())
        engine.train()
        return engine

    both = trained(folds)
    for index, fold in enumerate(folds):
        alone = trained([fold])
        assert torch.allclose(both.stack.weight[index], alone.stack.weight[0], atol=1e-6)
        for a, b in zip(both.models[index].progress.history, alone.models[0].progress.history, strict=True):
            assert (a["train_top1"], a["val_top1"]) == (b["train_top1"], b["val_top1"])
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert not torch.allclose(both.stack.weight[0], both.stack.weight[1], atol=1e-3)
