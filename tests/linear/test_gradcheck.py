"""`imgcls gradcheck`: numerical, analytic and autograd gradients agree for the real losses, and a planted
gradient bug (in the formula, or in a loss's backward pass) makes the check fail loudly."""

import json

import pytest
import torch
from torch.nn import functional as F

from conftest import plain
from imgcls.linear import gradcheck
from imgcls.config import LOSSES
from imgcls.linear.gradcheck import (DEFAULT_TOLERANCE, Comparison, GradcheckResult, analytic_gradients,
                              autograd_gradients, gradient_check, make_batch, mean_loss, relative_difference)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("seed", [0, 1])
def test_the_real_losses_pass(loss, seed):
    result = gradient_check(loss=loss, seed=seed)
    assert result.passed, [(c.title, c.max_relative) for c in result.comparisons]
    assert [c.title for c in result.comparisons] == ["numerical vs analytic", "numerical vs autograd",
                                                     "analytic vs autograd"]
    assert result.comparisons[0].coordinates == 200 + 10  # the sampled W coordinates, and all of b
    assert result.comparisons[2].coordinates == 10 * 192 + 10
    assert all(c.max_relative < DEFAULT_TOLERANCE / 5 for c in result.comparisons)  # with room to spare


@pytest.mark.parametrize("n, k, d", [(1, 2, 1), (3, 100, 20), (64, 5, 3)])
def test_other_shapes_pass(n, k, d):
    assert gradient_check(batch_size=n, classes=k, features=d, coordinates=50).passed


def test_the_formula_is_the_gradient_of_cross_entropy():
    """dW = (softmax(S) - Y)^T X / N, db = mean(softmax(S) - Y), against autograd of F.cross_entropy."""
    weight, bias, x, y = make_batch(7, 4, 5, seed=3)
    d_w, d_b = analytic_gradients(weight, bias, x, y, "ce")
    w, b = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    F.cross_entropy(x @ w.T + b, y).backward()
    assert torch.allclose(d_w, w.grad, rtol=1e-12, atol=1e-15) and torch.allclose(d_b, b.grad, rtol=1e-12, atol=1e-15)
    assert d_w.shape == (4, 5) and d_b.shape == (4,)


def buggy_analytic(weight, bias, x, y):
    """The classic mistake: forgetting to divide by N."""
    d_w, d_b = analytic_gradients(weight, bias, x, y, "ce")
    return d_w * x.shape[0], d_b * x.shape[0]


class CrossEntropyWithWrongBackward(torch.autograd.Function):
    """Mean softmax cross-entropy whose backward pass forgets the -onehot term."""

    @staticmethod
    def forward(ctx, scores, targets):
        ctx.save_for_backward(scores)
        return F.cross_entropy(scores, targets)

    @staticmethod
    def backward(ctx, grad):
        (scores,) = ctx.saved_tensors
        return grad * torch.softmax(scores, dim=1) / scores.shape[0], None


def test_a_planted_bug_in_the_formula_fails():
    result = gradient_check(analytic_fn=buggy_analytic)
    assert not result.passed
    by_title = {c.title: c for c in result.comparisons}
    assert by_title["numerical vs analytic"].max_relative > 0.5
    assert by_title["analytic vs autograd"].max_relative > 0.5
    assert by_title["numerical vs autograd"].max_relative < DEFAULT_TOLERANCE  # the real loss is still fine
    assert {c.title for c in result.failed} == {"numerical vs analytic", "analytic vs autograd"}


def test_a_loss_with_a_planted_gradient_bug_fails():
    result = gradient_check(loss_fn=CrossEntropyWithWrongBackward.apply)
    assert not result.passed
    by_title = {c.title: c for c in result.comparisons}
    assert by_title["numerical vs autograd"].max_relative > 0.1
    assert by_title["analytic vs autograd"].max_relative > 0.1
    assert by_title["numerical vs analytic"].max_relative < DEFAULT_TOLERANCE  # its forward pass is right


def test_a_loss_that_is_nan_fails():
    result = gradient_check(loss_fn=lambda scores, targets: scores.sum() * float("nan"))
    assert not result.passed


def test_relative_difference():
    a = torch.tensor([1.0, -2.0, 0.0, 1e-9], dtype=torch.float64)
    b = torch.tensor([1.0, -2.2, 0.0, 2e-9], dtype=torch.float64)
    got = relative_difference(a, b)
    assert got[0] == 0 and got[1] == pytest.approx(0.2 / 2.2) and got[2] == 0
    assert got[3] == pytest.approx(1e-9 / (1e-3 * 2.2))  # near 0, measured against a thousandth of the largest


def test_mean_loss_is_the_training_loss():
    from imgcls.linear.losses import Loss

    weight, bias, x, y = make_batch(6, 3, 4, seed=0)
    scores = (x @ weight.T + bias).float()
    for name in ("ce", "nll", "mse"):
        assert float(mean_loss(name)(scores, y)) == pytest.approx(float(Loss(name)(scores, y)), rel=1e-6)
    assert autograd_gradients(mean_loss("ce"), weight, bias, x, y)[0].dtype == torch.float64


# --- the command --------------------------------------------------------------------------------

def test_gradcheck_command_passes(cli):
    result = cli("gradcheck")
    assert result.exit_code == 0, plain(result.output)
    text = plain(result.stdout)
    for title in ("numerical vs", "analytic vs"):
        assert title in text
    assert "passed" in plain(result.stderr)


def test_gradcheck_command_json(cli):
    result = cli("gradcheck", "--loss", "mse", "--classes", 3, "--features", 4, "--batch-size", 2, "--json")
    assert result.exit_code == 0, plain(result.output)
    got = json.loads(result.stdout)
    assert got["passed"] is True and got["loss"] == "mse" and got["classes"] == 3
    assert len(got["comparisons"]) == 3 and got["comparisons"][2]["coordinates"] == 3 * 4 + 3


@pytest.mark.parametrize("plant", ["formula", "loss"])
def test_gradcheck_command_fails_loudly_on_a_planted_bug(cli, monkeypatch, plant):
    if plant == "formula":
        monkeypatch.setattr(gradcheck, "analytic_gradients", lambda w, b, x, y, loss: buggy_analytic(w, b, x, y))
    else:
        monkeypatch.setattr(gradcheck, "mean_loss", lambda name: CrossEntropyWithWrongBackward.apply)
    result = cli("gradcheck")
    assert result.exit_code == 1, plain(result.output)
    error = plain(result.stderr)
    assert "gradient check FAILED" in error and "tolerance" in error
    assert ("numerical vs analytic" if plant == "formula" else "autograd") in error
    assert "passed" not in error


@pytest.mark.parametrize("args, words", [
    (["--loss", "hinge"], ["unknown loss 'hinge'"]),
    (["--classes", "1"], ["--classes", "at least 2"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--eps", "0"], ["--eps", "greater than 0"]),
    (["--tolerance", "-1"], ["--tolerance"]),
    (["--coordinates", "0"], ["--coordinates"]),
    (["--eps", "inf"], ["--eps", "finite"]),
    (["--seed", str(2 ** 64)], ["--seed", "[0, 2^32)"]),
    (["--features", "2000000000"], ["--features 2000000000", "memory", "more than", "available"]),
    (["--classes", str(10 ** 30)], ["--classes", "over a million GB"]),
    (["--classes", "100000", "--features", "1"], ["--classes 100000", "multiply-adds", "fewer --coordinates"]),
])
def test_gradcheck_user_errors(cli, args, words, assert_user_error):
    assert_user_error(cli("gradcheck", *args), *words)


def test_a_gradcheck_larger_than_memory_is_refused_before_allocating(cli, monkeypatch, assert_user_error):
    import imgcls.memory

    monkeypatch.setattr(imgcls.memory, "available_memory", lambda: 10 ** 6)  # 1 MB
    assert_user_error(cli("gradcheck", "--features", 20000), "--features 20000", "more than the 0.0 GB available")


def test_a_large_gradcheck_names_its_worst_coordinates_without_naming_all():
    result = gradient_check("ce", batch_size=2, classes=3, features=5000, coordinates=4, show=2)
    full = result.comparisons[2]
    assert full.coordinates == 3 * 5000 + 3 and len(full.worst) == 2
    for coordinate in full.worst:
        assert coordinate.name.startswith(("W[", "b["))


def test_the_worst_comparison_is_the_largest_difference_and_nan_is_largest():
    def result(*largest):
        checked = GradcheckResult("ce", 2, 3, 4, 1e-5, 1e-5)
        checked.comparisons = [Comparison("numerical", str(i), 10, value, []) for i, value in enumerate(largest)]
        return checked
    assert result(1e-9, 3e-6, 2e-7).worst.second == "1"
    assert result(1e-9, 3e-3, float("nan")).worst.second == "2"
    assert result(1e-9, 3e-3, float("nan")).failed[0].second == "1"


def test_gradcheck_help_names_every_loss(cli):
    text = " ".join(plain(cli("gradcheck", "--help").output).replace("\u2502", " ").split())
    assert "ce, nll or mse: the loss whose gradient is checked." in text
