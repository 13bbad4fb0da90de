"""The README's promises, each against values computed by hand in the test.

Never through imgcls's own update rule or schedules: a comparison of the code with itself
(the analytic step against autograd, a resumed run against an unbroken one) has any mistake in that
shared setup on both sides. The runs are real (train() on a tiny image folder) and a spy on
Engine.step records what each SGD update is given: the weights before the first update, every
batch and its learning rate. tests/PROMISES.md maps each promise to its test.
"""

from __future__ import annotations

import json
import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F
from torchvision.io import write_png
from torchvision.transforms.v2.functional import resize as tv_resize

from conftest import plain, write_image_folder
from imgcls.runs import checkpoint as ckpt
from imgcls.training import engine as engine_module
from imgcls.config import build_config
from imgcls.report.report import Reporter
from imgcls.runs.rundir import RunDir
from imgcls.training.engine import Engine
from imgcls.training.train import Interrupted, train

# Three classes of unequal size (balanced class weights then differ) and non-square 4x5 colour images.
SHAPE = (3, 4, 5)
TRAIN_COUNTS = {"ant": 7, "bee": 5, "cat": 4}  # minus one validation image each: 13 training images
TRAIN_IMAGES = 13
TINY_RUN = {"dataset": "imagefolder", "epochs": 3, "batch_size": "full", "lr": 0.5, "momentum": 0.0,
            "weight_decay": 0.0, "schedule": "constant", "init": "normal", "init_std": 0.1, "device": "cpu",
            "refit": False}  # the run on the training part, whose every epoch these promises read


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    layout = {"train": {name: [SHAPE[1:]] * count for name, count in TRAIN_COUNTS.items()},
              "test": {name: [SHAPE[1:]] * 2 for name in TRAIN_COUNTS}}
    return write_image_folder(tmp_path_factory.mktemp("promises") / "data", layout, seed=7)


# --- a real run, recorded -------------------------------------------------------------------------

@dataclass
class Update:
    lrs: list[float]  # each parameter group's rate (W's, b's) when this update ran
    momenta: list[float]  # and its momentum
    pixels: torch.Tensor  # the batch as the step received it
    labels: torch.Tensor


@dataclass
class Recording:
    weight: torch.Tensor  # W and b before the first update
    bias: torch.Tensor
    updates: list[Update]
    last: ckpt.Checkpoint  # what the run left in last.safetensors
    epochs: list[dict]  # epochs.jsonl


def spy_on_steps(monkeypatch, before_step=None, after_step=None) -> None:
    """Wrap every training step of the engine (Engine.step); the callbacks get (engine, batch, rates)."""
    step = Engine.step

    def wrapped(engine, pixels, labels, batch_labels, rates, masks=None):
        batch = (pixels, labels, batch_labels)
        if before_step:
            before_step(engine, batch, rates)
        stats = step(engine, *batch, rates, masks)
        if after_step:
            after_step(engine, batch, rates)
        return stats

    monkeypatch.setattr(Engine, "step", wrapped)


def recorded_run(monkeypatch, data_dir: Path, out: Path, **flags) -> Recording:
    updates, start = [], {}

    def record(engine, batch, rates):
        stack = engine.stack
        start.setdefault("weight", stack.weight[0].detach().clone())
        start.setdefault("bias", stack.bias[0].detach().clone())
        momentum = float(stack.momentum)  # one model: its momentum is a number
        updates.append(Update([rates[0], rates[0]], [momentum, momentum], batch[0].clone(), batch[1].clone()))

    with monkeypatch.context() as patch:
        spy_on_steps(patch, before_step=record)
        train(build_config(None, {**TINY_RUN, "data_dir": str(data_dir), "out": str(out), **flags}),
              Reporter(quiet=True))
    epochs = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    return Recording(start["weight"], start["bias"], updates, ckpt.load(out / "last.safetensors"), epochs)


def run_files(out: Path) -> tuple:
    epochs = [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}
              for line in (out / "epochs.jsonl").read_text().splitlines()]
    checkpoints = [ckpt.load(out / name) for name in ("best.safetensors", "last.safetensors")]
    return epochs, json.loads((out / "metrics.json").read_text()), [(c.weight, c.bias) for c in checkpoints]


# --- SGD by hand ------------------------------------------------------------------------------------

def hand_gradient(weight, bias, pixels, labels, loss: str, class_weights=None):
    """The lecture's dL/dW and dL/db of the (class-weighted) mean loss, in float64."""
    scores = pixels @ weight.T + bias
    onehot = F.one_hot(labels, len(bias)).double()
    per_sample = 2 * (scores - onehot) if loss == "mse" else torch.softmax(scores, 1) - onehot
    weights = torch.ones(len(labels), dtype=torch.float64) if class_weights is None else class_weights[labels]
    g = per_sample * (weights / weights.sum()).unsqueeze(1)
    return g.T @ pixels, g.sum(0)


def sgd_rule(param, grad, velocity, lr, momentum, nesterov, decay):
    """torch.optim.SGD's documented update: d = g + decay p; v = momentum v + d (v = d at first);
    p -= lr (d + momentum v if nesterov else v)."""
    d = grad + decay * param
    if momentum:
        velocity = d if velocity is None else momentum * velocity + d
        d = d + momentum * velocity if nesterov else velocity
    return param - lr * d, velocity


def hand_sgd_path(run: Recording, lr, momentum=0.0, nesterov=False, weight_decay=0.0, loss="ce", class_weights=None,
                  bias_decay=0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """W and b before every recorded update and after the last, by hand; weight decay on W only unless
    bias_decay says otherwise."""
    weight, bias = run.weight.double(), run.bias.double()
    velocity_w = velocity_b = None
    path = [(weight, bias)]
    for update in run.updates:
        grad_w, grad_b = hand_gradient(weight, bias, update.pixels.double(), update.labels, loss, class_weights)
        weight, velocity_w = sgd_rule(weight, grad_w, velocity_w, lr, momentum, nesterov, weight_decay)
        bias, velocity_b = sgd_rule(bias, grad_b, velocity_b, lr, momentum, nesterov, bias_decay)
        path.append((weight, bias))
    return path


def hand_sgd(run: Recording, **rule) -> tuple[torch.Tensor, torch.Tensor]:
    return hand_sgd_path(run, **rule)[-1]


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    counts = torch.bincount(labels).double()
    return len(labels) / (len(counts) * counts)


def assert_weights(checkpoint: ckpt.Checkpoint, weight, bias) -> None:
    torch.testing.assert_close(checkpoint.weight.double(), weight, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(checkpoint.bias.double(), bias, atol=2e-5, rtol=1e-4)


def differs(checkpoint: ckpt.Checkpoint, weight, bias) -> bool:
    return not (torch.allclose(checkpoint.weight.double(), weight, atol=1e-4, rtol=1e-3)
                and torch.allclose(checkpoint.bias.double(), bias, atol=1e-4, rtol=1e-3))


@pytest.mark.parametrize("flags", [
    {"weight_decay": 0.1},
    {"momentum": 0.9, "nesterov": True},
    {"momentum": 0.9, "weight_decay": 0.05},
    {"momentum": 0.5, "nesterov": True, "weight_decay": 0.1, "gradient": "autograd"},
    {"loss": "mse", "lr": 0.05, "weight_decay": 0.1},
    {"loss": "nll", "class_weights": "balanced", "momentum": 0.5},
], ids=["decay", "nesterov", "momentum-decay", "autograd-nesterov-decay", "mse", "nll-balanced"])
def test_full_batch_sgd_updates_are_the_hand_computed_ones(flags, tiny_folder, tmp_path, monkeypatch):
    """Three full-batch updates of a real run: W and b in last.safetensors are those of SGD computed by hand,
    with momentum and Nesterov as asked, weight decay on W and not on b, the loss and class weights asked for."""
    run = recorded_run(monkeypatch, tiny_folder, tmp_path / "run", **flags)
    assert len(run.updates) == TINY_RUN["epochs"]
    assert all(len(update.labels) == TRAIN_IMAGES for update in run.updates), "--batch-size full: one batch"
    settings = {**TINY_RUN, **flags}
    rule = {"lr": settings["lr"], "momentum": settings["momentum"], "nesterov": settings.get("nesterov", False),
            "weight_decay": settings["weight_decay"], "loss": settings.get("loss", "ce"),
            "class_weights": balanced_weights(run.updates[0].labels) if "class_weights" in flags else None}
    assert_weights(run.last, *hand_sgd(run, **rule))
    # The hand computation tells the promised rule from the likely mistakes:
    if rule["weight_decay"]:
        assert differs(run.last, *hand_sgd(run, **rule, bias_decay=rule["weight_decay"])), "b must not decay"
        assert differs(run.last, *hand_sgd(run, **{**rule, "weight_decay": 0.0})), "W must decay"
    if rule["momentum"]:
        assert differs(run.last, *hand_sgd(run, **{**rule, "nesterov": not rule["nesterov"]}))
    if rule["class_weights"] is not None:
        assert differs(run.last, *hand_sgd(run, **{**rule, "class_weights": None}))


def test_nll_trains_to_the_numbers_of_ce(tiny_folder, tmp_path, monkeypatch):
    """`nll` is LogSoftmax + NLLLoss: the same numbers as `ce`, in the losses and in the weights."""
    runs = [recorded_run(monkeypatch, tiny_folder, tmp_path / name, loss=name) for name in ("ce", "nll")]
    torch.testing.assert_close(runs[0].last.weight, runs[1].last.weight, atol=1e-6, rtol=1e-5)
    assert [e["train_loss"] for e in runs[0].epochs] == pytest.approx([e["train_loss"] for e in runs[1].epochs],
                                                                      rel=1e-6)


@pytest.mark.parametrize("batch_size, sizes", [
    (1, [1] * TRAIN_IMAGES), (5, [5, 5, 3]), ("full", [TRAIN_IMAGES]),
    ("auto", [8, 5]),  # the largest power of two that fits memory, at most the 13 training images
])
def test_batch_size_makes_ceil_n_over_b_updates_an_epoch(batch_size, sizes, tiny_folder, tmp_path, monkeypatch):
    run = recorded_run(monkeypatch, tiny_folder, tmp_path / "run", batch_size=batch_size, epochs=2)
    assert [len(update.labels) for update in run.updates] == sizes * 2
    for epoch in (0, 1):  # every training image once an epoch, in a reshuffled order
        labels = torch.cat([u.labels for u in run.updates[epoch * len(sizes):(epoch + 1) * len(sizes)]])
        assert labels.bincount().tolist() == [count - 1 for count in TRAIN_COUNTS.values()]


def test_epochs_jsonl_records_each_epochs_training_loss_and_rate(tiny_folder, tmp_path, monkeypatch):
    """With one full batch an epoch, the epoch's training loss and top-1 are those of the weights before its
    update, computed by hand; the keys are the README's (top-k named by its k: 3 classes, val_top3)."""
    run = recorded_run(monkeypatch, tiny_folder, tmp_path / "run", weight_decay=0.1, momentum=0.9)
    assert [set(e) for e in run.epochs] == [{"epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top3",
                                             "lr", "lr_last", "seconds", "images_per_s"}] * TINY_RUN["epochs"]
    path = hand_sgd_path(run, lr=TINY_RUN["lr"], momentum=0.9, weight_decay=0.1)
    for record, update, (weight, bias) in zip(run.epochs, run.updates, path):
        scores = update.pixels.double() @ weight.T + bias
        assert record["train_loss"] == pytest.approx(float(F.cross_entropy(scores, update.labels)), rel=1e-5)
        assert record["train_top1"] == pytest.approx(float((scores.argmax(1) == update.labels).double().mean()))
        assert record["lr"] == record["lr_last"] == TINY_RUN["lr"] and 0 <= record["val_top1"] <= record["val_top3"] <= 1


def test_the_run_folders_config_yaml_repeats_the_run(tiny_folder, tmp_path):
    first, again = tmp_path / "first", tmp_path / "again"
    train(build_config(None, {**TINY_RUN, "data_dir": str(tiny_folder), "out": str(first), "momentum": 0.9,
                              "weight_decay": 0.05, "schedule": "step", "step_epochs": 1, "batch_size": 4}),
          Reporter(quiet=True))
    train(build_config(first / "config.yaml", {"out": str(again)}), Reporter(quiet=True))
    (epochs_a, metrics_a, tensors_a), (epochs_b, metrics_b, tensors_b) = run_files(first), run_files(again)
    assert epochs_a == epochs_b and metrics_a == metrics_b
    assert all(torch.equal(a, b) for pair_a, pair_b in zip(tensors_a, tensors_b) for a, b in zip(pair_a, pair_b))


def test_a_yaml_number_without_a_dot_is_a_number(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  weight_decay: 5E-4\n")
    config = build_config(path, {})
    assert config.optim.lr == 0.001 and config.optim.weight_decay == 0.0005


# --- the learning rate of every update ---------------------------------------------------------------

LR0, EPOCHS, BATCH = 0.2, 4, 5  # 13 images in batches of 5: 3 updates an epoch, 12 in all
STEPS = math.ceil(TRAIN_IMAGES / BATCH)


def cosine_between(start, end, fraction):
    return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2


def one_cycle(update, total, share):
    """torch's OneCycleLR with its defaults (max/25 at the start, max/25e4 at the end, cosine phases)."""
    initial = LR0 / 25
    rise_end = share * total - 1
    if update <= rise_end:
        return cosine_between(initial, LR0, update / rise_end)
    return cosine_between(LR0, initial / 1e4, (update - rise_end) / (total - 1 - rise_end))


def warmup_then_cosine(update, total, warmup):
    if update < warmup:  # linear from LR0 / warmup to LR0
        return LR0 * (1 / warmup + (1 - 1 / warmup) * update / warmup)
    return cosine_between(LR0, 0.0, (update - warmup) / (total - warmup))


SCHEDULES = {
    "constant": ({"schedule": "constant"}, lambda u, total: LR0),
    # ×0.5 every 2 epochs = every 6 updates, not every 2 updates
    "step": ({"schedule": "step", "step_epochs": 2, "step_gamma": 0.5}, lambda u, total: LR0 * 0.5 ** (u // 6)),
    "cosine": ({"schedule": "cosine"}, lambda u, total: cosine_between(LR0, 0.0, u / total)),
    "warmup-cosine": ({"schedule": "cosine", "warmup_epochs": 1.0},
                      lambda u, total: warmup_then_cosine(u, total, STEPS)),
    "onecycle": ({"schedule": "onecycle"}, lambda u, total: one_cycle(u, total, 0.3)),
    "warmup-onecycle": ({"schedule": "onecycle", "warmup_epochs": 2.0},
                        lambda u, total: one_cycle(u, total, 2 * STEPS / total)),
    # a warmup as long as the run ramps over all updates but the last
    "warmup-past-the-end": ({"schedule": "cosine", "warmup_epochs": float(EPOCHS)},
                            lambda u, total: warmup_then_cosine(u, total, total - 1)),
    # one-cycle's rise needs two updates at least (torch divides by the rise's length less one)
    "one-update-warmup-onecycle": ({"schedule": "onecycle", "warmup_epochs": 1 / STEPS},
                                   lambda u, total: one_cycle(u, total, 2 / total)),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_update_uses_the_schedules_learning_rate(name, tiny_folder, tmp_path, monkeypatch):
    """ceil(N/B) updates an epoch, each at the rate the schedule gives it (W's and b's alike) and at the momentum
    asked for (one-cycle does not cycle it), and epochs.jsonl's `lr` and `lr_last` are the rates of the epoch's
    first and last updates."""
    flags, rate = SCHEDULES[name]
    run = recorded_run(monkeypatch, tiny_folder, tmp_path / "run", lr=LR0, epochs=EPOCHS, batch_size=BATCH,
                       momentum=0.9, **flags)
    total = EPOCHS * STEPS
    assert len(run.updates) == total
    expected = [rate(u, total) for u in range(total)]
    assert [update.lrs[0] for update in run.updates] == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert all(update.lrs[1] == update.lrs[0] for update in run.updates)
    assert all(update.momenta == [0.9, 0.9] for update in run.updates)
    assert [e["lr"] for e in run.epochs] == pytest.approx(expected[::STEPS], rel=1e-6, abs=1e-12)
    assert [e["lr_last"] for e in run.epochs] == pytest.approx(expected[STEPS - 1::STEPS], rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("gradient", ["analytic", "autograd"])
def test_gradient_chooses_the_lectures_formula_or_autograds_backward_pass(gradient, tiny_folder, tmp_path,
                                                                          monkeypatch):
    backward = torch.autograd.grad
    calls = []

    def counted(outputs, *args, **kwargs):
        calls.append(outputs)
        return backward(outputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counted)
    run = recorded_run(monkeypatch, tiny_folder, tmp_path / "run", gradient=gradient)
    assert len(calls) == (len(run.updates) if gradient == "autograd" else 0)


@pytest.mark.parametrize("init", ["default", "zeros", "normal"])
def test_init_gives_the_documented_starting_weights(init, tiny_folder, tmp_path, monkeypatch):
    run = recorded_run(monkeypatch, tiny_folder, tmp_path / "run", init=init, init_std=0.3, epochs=1)
    weight, bias = run.weight, run.bias
    if init == "zeros":
        assert not weight.any() and not bias.any()
    elif init == "normal":  # normal(0, init_std) for W, zeros for b
        assert not bias.any()
        assert float(weight.std()) == pytest.approx(0.3, abs=0.05) and abs(float(weight.mean())) < 0.06
    else:  # nn.Linear's: uniform in +-1/sqrt(fan_in) for both
        bound = 1 / math.sqrt(math.prod(SHAPE))
        assert float(weight.abs().max()) <= bound and float(bias.abs().max()) <= bound
        assert float(weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.2)


# --- resume and torch's global random-number generator -------------------------------------------------

def interrupt_after(monkeypatch, updates: int) -> None:
    """A real SIGINT during the given update (counted from 1), as Ctrl-C would send it."""
    count = 0

    def after_step(*_):
        nonlocal count
        count += 1
        if count == updates:
            os.kill(os.getpid(), signal.SIGINT)

    spy_on_steps(monkeypatch, after_step=after_step)


@pytest.mark.parametrize("stream", [False, True])
def test_nothing_after_resume_draws_from_torchs_global_rng(stream, tiny_folder, tmp_path, monkeypatch):
    """The data order comes from its own seeded generator and the model's initial weights are replaced by the
    checkpoint's, so a resumed run ends bit for bit as an unbroken one even when the global RNG is scrambled
    right after the checkpoint is restored (--stream: DataLoader draws its workers' seeds from it, unused)."""
    flags = {**TINY_RUN, "data_dir": str(tiny_folder), "batch_size": 4, "momentum": 0.9, "schedule": "cosine",
             "weight_decay": 0.01, "stream": stream}
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    train(build_config(None, {**flags, "out": str(whole)}), Reporter(quiet=True))
    with monkeypatch.context() as patch, pytest.raises(Interrupted):
        interrupt_after(patch, 6)  # epoch 2, step 2 of 4
        train(build_config(None, {**flags, "out": str(broken)}), Reporter(quiet=True))
    restore = engine_module.restore

    def restore_then_scramble(*args, **kwargs):
        diverged = restore(*args, **kwargs)
        torch.manual_seed(987_654_321)
        torch.rand(1000)
        return diverged

    monkeypatch.setattr(engine_module, "restore", restore_then_scramble)
    train(build_config(broken / "config.yaml", {}), Reporter(quiet=True), resume=RunDir.open_for_resume(broken))
    (epochs_a, metrics_a, tensors_a), (epochs_b, metrics_b, tensors_b) = run_files(whole), run_files(broken)
    assert epochs_a == epochs_b and metrics_a == metrics_b
    assert all(torch.equal(a, b) for pair_a, pair_b in zip(tensors_a, tensors_b) for a, b in zip(pair_a, pair_b))


# --- predict prepares an image of another size as training would ---------------------------------------

@pytest.fixture(scope="module")
def non_square_run(tiny_folder, tmp_path_factory) -> Path:
    """A model of 4x5 colour images (no --image-size)."""
    out = tmp_path_factory.mktemp("non-square") / "run"
    train(build_config(None, {**TINY_RUN, "data_dir": str(tiny_folder), "out": str(out)}), Reporter(quiet=True))
    return out


@pytest.mark.parametrize("height, width", [(9, 13), (4, 23), (30, 7)])
def test_predict_resizes_a_non_square_image_antialiased(height, width, non_square_run, cli, tmp_path):
    """An image of another size is resized to the model's 4x5 with torchvision's antialiased resize, then scored:
    predict's probabilities are the softmax of W x + b on those pixels, normalized with the run's statistics."""
    from imgcls.runs.predict import prepare_image

    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    path = tmp_path / "photo.png"
    write_png(image, str(path))
    expected_pixels = tv_resize(image, list(SHAPE[1:]), antialias=True)
    checkpoint = ckpt.load(non_square_run / "best.safetensors")
    prepared, resized = prepare_image(path.read_bytes(), checkpoint)
    assert resized and torch.equal(prepared, expected_pixels)

    x = ((expected_pixels.double() / 255 - checkpoint.mean.double()) / checkpoint.std.double()).flatten()
    probabilities = torch.softmax(checkpoint.weight.double() @ x + checkpoint.bias.double(), 0)
    result = cli("predict", non_square_run, path, "--top-k", 3, "--device", "cpu", "--json")
    assert result.exit_code == 0, plain(result.output)
    top = json.loads(result.stdout)["predictions"][0]["top"]
    got = {t["class"]: t["probability"] for t in top}
    assert got == pytest.approx(dict(zip(TRAIN_COUNTS, probabilities.tolist())), abs=1e-6)


# --- a dataset whose classes are not in alphabetical order ---------------------------------------------

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def test_fashion_mnist_keeps_its_class_order_through_eval_and_predict(data_root, cli, tmp_path):
    """Fashion-MNIST's labels 0..9 are T-shirt/top, Trouser, Pullover, ...: the checkpoint and metrics.json name the
    classes in that order, `imgcls eval` accepts the run, and predict names the class of W's highest row."""
    from torchvision.datasets import FashionMNIST

    if not (data_root / "FashionMNIST" / "raw").is_dir():
        pytest.fail(f"Fashion-MNIST is missing: {data_root / 'FashionMNIST' / 'raw'}", pytrace=False)
    out = tmp_path / "run"
    train(build_config(None, {"dataset": "fashion-mnist", "data_dir": str(data_root), "limit": 300, "epochs": 1,
                              "batch_size": 64, "device": "cpu", "out": str(out)}), Reporter(quiet=True))
    checkpoint = ckpt.load(out / "best.safetensors")
    metrics = json.loads((out / "metrics.json").read_text())
    assert checkpoint.classes == FASHION and metrics["classes"] == FASHION

    evaluated = cli("eval", out, "--split", "test", "--device", "cpu", "--json")
    assert evaluated.exit_code == 0, plain(evaluated.output)
    assert json.loads(evaluated.stdout)["test"]["top1"] == metrics["test"]["top1"]

    test_set = FashionMNIST(str(data_root), train=False)
    images = test_set.data[:20]
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(images):
        write_png(image.unsqueeze(0), str(folder / f"{i:02d}.png"))
    x = (images.double().unsqueeze(1) / 255 - checkpoint.mean.double()) / checkpoint.std.double()
    best_rows = (x.flatten(1) @ checkpoint.weight.double().T + checkpoint.bias.double()).argmax(1)
    predicted = cli("predict", out, folder, "--top-k", 1, "--device", "cpu", "--json")
    assert predicted.exit_code == 0, plain(predicted.output)
    names = [p["class"] for p in json.loads(predicted.stdout)["predictions"]]
    assert names == [FASHION[row] for row in best_rows.tolist()]
    assert sum(name == FASHION[label] for name, label in zip(names, test_set.targets[:20].tolist())) >= 8
