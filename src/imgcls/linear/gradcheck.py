"""The gradient check of the lecture: three ways to the gradient of the loss of f(x) = Wx + b must agree.

- numerical: central finite differences, (L(w + h) - L(w - h)) / 2h, on a random subset of the
  coordinates of W and on every coordinate of b, in float64;
- analytic: the formula derived by hand. For the mean softmax cross-entropy over N images,
  with scores S = XW^T + b, probabilities P = softmax(S) and one-hot targets Y,
  dL/dW = (P - Y)^T X / N and dL/db = mean over the images of (P - Y);
  for the squared error sum_j (s_j - y_j)^2 it is the same with 2(S - Y) in place of P - Y;
- autograd: what torch's backward pass computes for the loss imgcls trains with (losses.py).

The relative difference of two gradients a and b at a coordinate is
|a - b| / max(|a|, |b|, FLOOR_SHARE * m), where m is the largest |a| or |b| of the comparison: truly
relative where the gradient is large, measured against a thousandth of the largest where it is
nearly 0 (there, rounding in L(w + h) - L(w - h) alone would make the ratio large). The check
fails when any comparison's largest relative difference is above the tolerance.

Everything is a pure function of its arguments; `loss_fn` and `analytic_fn` can be replaced, so a
test can plant a bug and watch the check catch it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from imgcls.config import LOSSES, check_seed
from imgcls.errors import UserError, check_choice

FLOOR_SHARE = 1e-3
DEFAULT_TOLERANCE = 1e-5
DEFAULT_EPS = 1e-5

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (scores, targets) -> mean loss
AnalyticFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def mean_loss(name: str) -> LossFn:
    """The loss imgcls trains with (losses.per_sample_loss), averaged over the batch, in the input's precision."""
    from imgcls.linear.losses import per_sample_loss

    per_sample = per_sample_loss(name)
    return lambda scores, targets: per_sample(scores, targets).mean()


def analytic_gradients(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                       loss: str = "ce") -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dW (K, D) and dL/db (K,) of the mean loss, by the formulas above; no autograd. d_scores is
    Loss.score_gradient, the very formula the analytic training step uses, so this checks training's code."""
    from imgcls.linear.losses import Loss

    if loss not in LOSSES:
        raise ValueError(f"no analytic gradient for loss {loss}")
    scores = x @ weight.T + bias
    d_scores = Loss(loss).score_gradient(scores, y)
    n = x.shape[0]
    return d_scores.T @ x / n, d_scores.sum(dim=0) / n


def autograd_gradients(loss_fn: LossFn, weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor,
                       y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = weight.detach().clone().requires_grad_(True)
    b = bias.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss_fn(x @ w.T + b, y).backward()
    return w.grad.detach(), b.grad.detach()


def numerical_gradients(loss_fn: LossFn, weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor,
                        y: torch.Tensor, w_coordinates: list[tuple[int, int]], eps: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences at the given (row, column) coordinates of W and at every coordinate of b.

    Returns (values at w_coordinates, in that order) and (K,) for b.
    """
    def loss_at(w: torch.Tensor, b: torch.Tensor) -> float:
        with torch.no_grad():
            return float(loss_fn(x @ w.T + b, y))

    w, b = weight.detach().clone(), bias.detach().clone()
    w_grad = torch.empty(len(w_coordinates), dtype=weight.dtype)
    for n, (i, j) in enumerate(w_coordinates):
        original = float(w[i, j])
        w[i, j] = original + eps
        plus = loss_at(w, b)
        w[i, j] = original - eps
        minus = loss_at(w, b)
        w[i, j] = original
        w_grad[n] = (plus - minus) / (2 * eps)
    b_grad = torch.empty(len(b), dtype=bias.dtype)
    for i in range(len(b)):
        original = float(b[i])
        b[i] = original + eps
        plus = loss_at(w, b)
        b[i] = original - eps
        minus = loss_at(w, b)
        b[i] = original
        b_grad[i] = (plus - minus) / (2 * eps)
    return w_grad, b_grad


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    magnitude = torch.maximum(a.abs(), b.abs())
    largest = float(magnitude[torch.isfinite(magnitude)].max()) if bool(torch.isfinite(magnitude).any()) else 0.0
    floor = max(FLOOR_SHARE * largest, 1e-300)
    return (a - b).abs() / magnitude.clamp_min(floor)


@dataclass
class Coordinate:
    name: str  # "W[3, 17]" or "b[2]"
    first: float
    second: float
    relative: float


@dataclass
class Comparison:
    first: str  # "numerical"
    second: str  # "analytic"
    coordinates: int  # how many were compared
    max_relative: float
    worst: list[Coordinate]  # the largest relative differences, largest first

    @property
    def title(self) -> str:
        return f"{self.first} vs {self.second}"


@dataclass
class GradcheckResult:
    loss: str
    batch_size: int
    classes: int
    features: int
    eps: float
    tolerance: float
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.max_relative <= self.tolerance for c in self.comparisons)

    @property
    def failed(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.max_relative <= self.tolerance]  # NaN fails too

    @property
    def worst(self) -> Comparison:
        """The comparison of the largest relative difference (a NaN is the largest)."""
        return max(self.comparisons, key=lambda c: c.max_relative if c.max_relative == c.max_relative else math.inf)


def _compare(first: str, second: str, name_of: Callable[[int], str], a: torch.Tensor, b: torch.Tensor,
             show: int) -> Comparison:
    """`name_of(i)` names coordinate i: only the worst few are named (all K x D names would fill memory)."""
    relative = relative_difference(a, b)
    relative = torch.where(torch.isnan(relative), torch.full_like(relative, float("inf")), relative)
    order = relative.argsort(descending=True)[:show].tolist()
    worst = [Coordinate(name_of(i), float(a[i]), float(b[i]), float(relative[i])) for i in order]
    return Comparison(first, second, len(a), float(relative.max()) if len(a) else 0.0, worst)


def make_batch(batch_size: int, classes: int, features: int, seed: int,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A small random problem in float64: standardized inputs (as --normalize pixel makes them), small weights."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, features, generator=generator, dtype=torch.float64)
    y = torch.randint(0, classes, (batch_size,), generator=generator)
    weight = 0.05 * torch.randn(classes, features, generator=generator, dtype=torch.float64)
    bias = 0.05 * torch.randn(classes, generator=generator, dtype=torch.float64)
    return weight, bias, x, y


# multiply-adds of the finite differences: two losses per checked coordinate, each N x D x K; about a
# minute on one core, where the defaults take a thousandth of a second
MAX_FINITE_DIFFERENCE_WORK = 10 ** 11


def check_arguments(loss: str, batch_size: int, classes: int, features: int, coordinates: int, seed: int,
                    eps: float, tolerance: float) -> None:
    """`imgcls gradcheck`'s values, a mistake refused as a UserError naming its flag; then the size."""
    check_choice("loss", loss, LOSSES)
    check_seed(seed)
    for name, value, low in (("--batch-size", batch_size, 1), ("--classes", classes, 2), ("--features", features, 1),
                             ("--coordinates", coordinates, 1)):
        if value < low:
            raise UserError(f"{name} must be at least {low}, not {value}")
    for name, value in (("--eps", eps), ("--tolerance", tolerance)):
        if not 0 < value < math.inf:
            raise UserError(f"{name} must be a finite number greater than 0, not {value}")
    check_size(batch_size, classes, features, coordinates)


def check_size(batch_size: int, classes: int, features: int, coordinates: int) -> None:
    """Refuse at once, as a UserError, a problem too large for this machine's memory or for a check that
    ends within minutes."""
    from imgcls.memory import check_fits_memory

    sizes = f"--batch-size {batch_size}, --classes {classes} and --features {features}"
    checked = min(coordinates, classes * features)
    # float64: the batch, and W with about 16 copies and temporaries of its size (gradients, their
    # differences, the ranking); about 200 bytes of Python objects per checked coordinate
    needed = 8 * (batch_size * features + batch_size * classes + 16 * (classes * features + classes)) + 200 * checked
    check_fits_memory(needed, f"a gradient check with {sizes}", "use smaller sizes")
    work = 2 * (checked + classes) * batch_size * features * classes
    if work > MAX_FINITE_DIFFERENCE_WORK:
        raise UserError(f"a gradient check with {sizes} and --coordinates {coordinates} would take more than "
                        f"{MAX_FINITE_DIFFERENCE_WORK:.0e} multiply-adds of finite differences (many minutes); "
                        f"use smaller sizes or fewer --coordinates")


def gradient_check(loss: str = "ce", batch_size: int = 16, classes: int = 10, features: int = 3 * 8 * 8,
                   coordinates: int = 200, seed: int = 0, eps: float = DEFAULT_EPS,
                   tolerance: float = DEFAULT_TOLERANCE, show: int = 3, loss_fn: LossFn | None = None,
                   analytic_fn: AnalyticFn | None = None) -> GradcheckResult:
    """Compare numerical, analytic and autograd gradients on a random batch; see the module's docstring.

    `loss_fn` (scores, targets) -> mean loss replaces the real loss for the numerical and autograd
    gradients, `analytic_fn` (W, b, x, y) -> (dW, db) replaces the formula.
    """
    loss_fn = loss_fn or mean_loss(loss)
    analytic_fn = analytic_fn or (lambda w, b, x, y: analytic_gradients(w, b, x, y, loss))
    weight, bias, x, y = make_batch(batch_size, classes, features, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    total = classes * features
    chosen = torch.randperm(total, generator=generator)[:min(coordinates, total)].sort().values.tolist()
    w_coordinates = [(index // features, index % features) for index in chosen]
    names = [f"W[{i}, {j}]" for i, j in w_coordinates] + [f"b[{i}]" for i in range(classes)]

    numerical = torch.cat(numerical_gradients(loss_fn, weight, bias, x, y, w_coordinates, eps))
    analytic_w, analytic_b = analytic_fn(weight, bias, x, y)
    autograd_w, autograd_b = autograd_gradients(loss_fn, weight, bias, x, y)
    rows = torch.tensor([i for i, _ in w_coordinates], dtype=torch.int64)
    columns = torch.tensor([j for _, j in w_coordinates], dtype=torch.int64)

    def at_coordinates(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([w.to(torch.float64)[rows, columns], b.to(torch.float64)])

    def name_in_all(index: int) -> str:  # W flattened row by row, then b
        return f"W[{index // features}, {index % features}]" if index < total else f"b[{index - total}]"

    result = GradcheckResult(loss, batch_size, classes, features, eps, tolerance)
    result.comparisons = [
        _compare("numerical", "analytic", names.__getitem__, numerical, at_coordinates(analytic_w, analytic_b), show),
        _compare("numerical", "autograd", names.__getitem__, numerical, at_coordinates(autograd_w, autograd_b), show),
        _compare("analytic", "autograd", name_in_all,
                 torch.cat([analytic_w.flatten(), analytic_b]).to(torch.float64),
                 torch.cat([autograd_w.flatten(), autograd_b]).to(torch.float64), show),
    ]
    return result
