"""Top-k, confusion matrix, per-class and superclass accuracy on hand-built cases with known answers."""

import pytest
import torch

from imgcls.data.registry import SPECS
from imgcls.linear.losses import Loss
from imgcls.linear.metrics import MetricsAccumulator, pooled, topk_correct, top_k

# Six rows over 7 classes; the target's rank in each row is given in the comment.
SCORES = torch.tensor([
    [9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # target 0: rank 1
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # target 5: rank 2
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # target 2: rank 5
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # target 1: rank 6
    [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # target 6: rank 7
    [0.5, 0.1, 0.2, 0.3, 0.9, 0.0, 0.4],  # target 4: rank 1
])
TARGETS = torch.tensor([0, 5, 2, 1, 6, 4])


@pytest.mark.parametrize("k, expected", [(1, 2), (2, 3), (4, 3), (5, 4), (6, 5), (7, 6), (50, 6)])
def test_topk_correct_on_known_logits(k, expected):
    assert int(topk_correct(SCORES, TARGETS, k)) == expected


def test_top_k_is_five_or_the_class_count():
    assert top_k(3) == 3
    assert top_k(5) == 5
    assert top_k(10) == 5
    assert top_k(100) == 5


def one_hot_scores(predictions, num_classes):
    return torch.nn.functional.one_hot(torch.tensor(predictions), num_classes).float() * 10


def test_confusion_and_per_class_on_a_known_case():
    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    predictions = [0, 1, 0, 1, 2, 2]
    scores = one_hot_scores(predictions, 3)
    accumulator = MetricsAccumulator(3, torch.device("cpu"))
    accumulator.add(scores, targets, *Loss("ce").sum_and_weight(scores, targets))
    m = accumulator.result()
    assert m.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m.per_class == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert m.top1 == pytest.approx(4 / 6)
    assert m.k == 3 and m.top5 == pytest.approx(1.0)  # k = 3 classes: every target is in the top 3
    assert m.count == 6
    assert m.superclass_top1 is None
    assert m.loss == pytest.approx(Loss("ce")(scores, targets).item(), rel=1e-6)


def test_a_class_without_images_has_per_class_zero_not_nan():
    targets = torch.tensor([0, 0])
    scores = one_hot_scores([0, 1], 3)
    accumulator = MetricsAccumulator(3, torch.device("cpu"))
    accumulator.add(scores, targets, *Loss("ce").sum_and_weight(scores, targets))
    assert accumulator.result().per_class == [0.5, 0.0, 0.0]


def test_two_batches_equal_one_batch():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 10, generator=generator)
    targets = torch.randint(0, 10, (50,), generator=generator)
    loss = Loss("ce", torch.linspace(0.5, 1.5, 10))
    whole = MetricsAccumulator(10, torch.device("cpu"))
    whole.add(scores, targets, *loss.sum_and_weight(scores, targets))
    parts = MetricsAccumulator(10, torch.device("cpu"))
    for rows in (slice(0, 17), slice(17, 50)):
        parts.add(scores[rows], targets[rows], *loss.sum_and_weight(scores[rows], targets[rows]))
    a, b = whole.result(), parts.result()
    assert a.confusion == b.confusion
    assert (a.top1, a.top5, a.count) == (b.top1, b.top5, b.count)
    assert a.loss == pytest.approx(b.loss, rel=1e-6)  # float32 sums, added in another order
    assert a.count == 50 and sum(map(sum, a.confusion)) == 50


def test_the_loss_standard_error_is_the_images_spread_and_pools_over_folds_as_one_set():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(60, 10, generator=generator)
    targets = torch.randint(0, 10, (60,), generator=generator)
    loss = Loss("ce")
    each = loss.per_sample(scores, targets).double()
    folds = []
    for rows in (slice(0, 25), slice(25, 60)):
        accumulator = MetricsAccumulator(10, torch.device("cpu"))
        accumulator.add(scores[rows], targets[rows], *loss.sum_and_weight(scores[rows], targets[rows]),
                        losses=loss.per_sample(scores[rows], targets[rows]))
        folds.append(accumulator.result())
        count = rows.stop - rows.start
        assert folds[-1].loss_se == pytest.approx(each[rows].std(unbiased=False).item() / count ** 0.5, rel=1e-5)
    together = pooled(folds)
    assert together.loss == pytest.approx(each.mean().item(), rel=1e-5)
    assert together.loss_se == pytest.approx(each.std(unbiased=False).item() / 60 ** 0.5, rel=1e-4)
    assert together.summary()["loss_se"] == together.loss_se


def test_superclass_accuracy_on_a_hand_made_mapping():
    # classes 0,1 -> superclass 0; classes 2,3 -> superclass 1
    targets = torch.tensor([0, 0, 1, 2, 3, 3])
    predictions = [1, 0, 2, 3, 3, 0]  # fine right: 2; same superclass: 4 (0->1, 0->0, 2->3, 3->3)
    scores = one_hot_scores(predictions, 4)
    accumulator = MetricsAccumulator(4, torch.device("cpu"), superclass_of=[0, 0, 1, 1])
    accumulator.add(scores, targets, *Loss("ce").sum_and_weight(scores, targets))
    m = accumulator.result()
    assert m.top1 == pytest.approx(2 / 6)
    assert m.superclass_top1 == pytest.approx(4 / 6)
    assert "superclass_top1" in m.summary()


def test_cifar100_superclass_mapping_is_the_datasets():
    spec = SPECS["cifar100"]
    mapping = spec.superclass_of()
    assert len(mapping) == 100 and sorted(set(mapping)) == list(range(20))
    assert all(mapping.count(s) == 5 for s in range(20))
    supers = list(spec.superclasses)
    assert supers[mapping[spec.classes.index("dolphin")]] == "aquatic_mammals"
    assert supers[mapping[spec.classes.index("tractor")]] == "vehicles_2"
    assert SPECS["cifar10"].superclass_of() is None


def test_per_superclass_top1_counts_any_class_of_the_true_superclass_as_right():
    """Classes 0, 1 form superclass 0 and classes 2, 3 superclass 1. By hand: superclass 0's four images are
    predicted 0, 1, 2, 1 (three within it: 3/4); superclass 1's two are predicted 3 and 0 (1/2)."""
    from imgcls.linear.metrics import MetricsAccumulator

    accumulator = MetricsAccumulator(4, torch.device("cpu"), [0, 0, 1, 1])
    targets = torch.tensor([0, 0, 1, 1, 2, 3])
    predicted = torch.tensor([0, 1, 2, 1, 3, 0])
    scores = torch.nn.functional.one_hot(predicted, 4).float()
    accumulator.add(scores, targets, torch.tensor(0.0), torch.tensor(6.0))
    metrics = accumulator.result()
    assert metrics.per_superclass == [0.75, 0.5]
    assert metrics.superclass_top1 == 4 / 6
    assert metrics.detail()["per_superclass"] == [0.75, 0.5]
    assert "per_superclass" not in MetricsAccumulator(4, torch.device("cpu")).result().detail()
