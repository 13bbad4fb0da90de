"""The three losses: ce and nll (LogSoftmax + NLLLoss) must agree exactly, mse is the hand formula,
and class weights average as nn.CrossEntropyLoss(weight=w) does."""

import pytest
import torch
from torch import nn

from imgcls.config import LOSSES
from imgcls.errors import UserError
from imgcls.linear.losses import PER_SAMPLE_LOSSES, Loss, class_weights


def random_batch(n=37, k=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, k, generator=generator) * 3
    targets = torch.randint(0, k, (n,), generator=generator)
    return scores, targets


def value_and_grad(loss, scores, targets):
    scores = scores.clone().requires_grad_(True)
    value = loss(scores, targets)
    value.backward()
    return value.detach(), scores.grad


@pytest.mark.parametrize("weights", [None, "random"])
def test_ce_and_nll_agree_in_value_and_gradient(weights):
    scores, targets = random_batch()
    w = torch.rand(10, generator=torch.Generator().manual_seed(1)) + 0.1 if weights else None
    ce_value, ce_grad = value_and_grad(Loss("ce", w), scores, targets)
    nll_value, nll_grad = value_and_grad(Loss("nll", w), scores, targets)
    torch.testing.assert_close(ce_value, nll_value, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ce_grad, nll_grad, rtol=1e-6, atol=1e-7)
    assert ce_grad.abs().sum() > 0


@pytest.mark.parametrize("weights", [None, "random"])
def test_ce_matches_torch_cross_entropy(weights):
    scores, targets = random_batch(seed=2)
    w = torch.rand(10, generator=torch.Generator().manual_seed(3)) + 0.1 if weights else None
    ours_value, ours_grad = value_and_grad(Loss("ce", w), scores, targets)
    torch_value, torch_grad = value_and_grad(nn.CrossEntropyLoss(weight=w), scores, targets)
    torch.testing.assert_close(ours_value, torch_value, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours_grad, torch_grad, rtol=1e-6, atol=1e-7)


def test_weighted_loss_differs_from_unweighted():
    """The weights are actually used: strongly uneven weights change the value."""
    scores, targets = random_batch(seed=4)
    w = torch.ones(10)
    w[targets[0]] = 50.0
    assert not torch.isclose(Loss("ce", w)(scores, targets), Loss("ce")(scores, targets))


def test_ce_on_known_logits():
    scores = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    targets = torch.tensor([0, 1])
    expected = (torch.log(torch.tensor(2.0)) + (2.0 + torch.log(1 + torch.exp(torch.tensor(-2.0))))) / 2
    torch.testing.assert_close(Loss("ce")(scores, targets), expected)


def test_mse_is_squared_error_to_one_hot_averaged():
    scores, targets = random_batch(n=9, k=4, seed=5)
    expected = sum(
        sum((scores[i, j].item() - (1.0 if j == targets[i].item() else 0.0)) ** 2 for j in range(4))
        for i in range(9)
    ) / 9
    assert Loss("mse")(scores, targets).item() == pytest.approx(expected, rel=1e-6)


def test_mse_known_value():
    scores = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 2.0]])
    targets = torch.tensor([0, 1])
    # sample 0 is exactly its one-hot: 0; sample 1: 0.25 + 0.25 + 4 = 4.5
    assert Loss("mse")(scores, targets).item() == pytest.approx(4.5 / 2)


def test_sum_and_weight_combine_batches_exactly():
    scores, targets = random_batch(n=40, seed=6)
    w = torch.linspace(0.5, 2.0, 10)
    loss = Loss("ce", w)
    total_a, weight_a = loss.sum_and_weight(scores[:15], targets[:15])
    total_b, weight_b = loss.sum_and_weight(scores[15:], targets[15:])
    torch.testing.assert_close((total_a + total_b) / (weight_a + weight_b), loss(scores, targets))


def test_unknown_loss_name_is_rejected():
    with pytest.raises(ValueError):
        Loss("hinge")


def test_balanced_class_weights_are_n_over_k_times_count():
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 1 + [3] * 2)
    weights = class_weights("balanced", labels, 4)
    n, k = 12, 4
    expected = torch.tensor([n / (k * 6), n / (k * 3), n / (k * 1), n / (k * 2)])
    torch.testing.assert_close(weights, expected)
    # balanced weights make every class contribute the same total weight
    per_class_total = weights * torch.bincount(labels).float()
    torch.testing.assert_close(per_class_total, torch.full((4,), n / k))


def test_balanced_weight_of_an_absent_class_is_zero():
    weights = class_weights("balanced", torch.tensor([0, 0, 2]), 3)
    assert weights[1].item() == 0.0
    assert weights[0].item() == pytest.approx(3 / (3 * 2))


def test_explicit_class_weights_and_their_length():
    assert class_weights(None, torch.tensor([0, 1]), 2) is None
    torch.testing.assert_close(class_weights([1.0, 3.0], torch.tensor([0, 1]), 2), torch.tensor([1.0, 3.0]))
    with pytest.raises(UserError, match="2 numbers but the dataset has 3 classes"):
        class_weights([1.0, 3.0], torch.tensor([0, 1, 2]), 3)


def test_every_loss_the_config_offers_has_an_implementation():
    """config.LOSSES names the losses (for --loss, gradcheck's --loss, validation); losses.py maps each to its code."""
    assert tuple(PER_SAMPLE_LOSSES) == LOSSES
    scores, targets = random_batch(n=5)
    for name in LOSSES:
        assert Loss(name).per_sample(scores, targets).shape == (5,)
    with pytest.raises(ValueError, match="unknown loss hinge"):
        Loss("hinge")
