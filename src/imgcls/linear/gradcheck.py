"""The lecture's gradient check: finite differences, the training step's formula (Loss.score_gradient) and autograd
must agree on the gradient of the loss of f(x) = Wx + b. `loss_fn` and `analytic_fn` let a test plant a bug."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from imgcls.config import LOSSES, check_seed
from imgcls.errors import UserError, check_choice
from imgcls.linear.losses import Loss
from imgcls.memory import check_fits_memory

FLOOR_SHARE = 1e-3  # near 0, a difference is measured against this share of the comparison's largest gradient
DEFAULT_TOLERANCE = 1e-5
DEFAULT_EPS = 1e-5
# multiply-adds of the finite differences (two losses of N x D x K per coordinate): about a minute on one core
MAX_FINITE_DIFFERENCE_WORK = 10 ** 11

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (scores, targets) -> mean loss


def mean_loss(name: str) -> LossFn:
    """The loss imgcls trains with, averaged over the batch, in the input's precision."""
    per_sample = Loss(name).per_sample
    return lambda scores, targets: per_sample(scores, targets).mean()


def analytic_gradients(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                       loss: str = "ce") -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dW = G^T X / N (K, D) and dL/db = mean(G) (K,) by the formula, G = softmax(S) - Y (2 (S - Y) for mse)."""
    d_scores = Loss(loss).score_gradient(x @ weight.T + bias, y)
    return d_scores.T @ x / len(x), d_scores.sum(dim=0) / len(x)


def autograd_gradients(loss_fn: LossFn, weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor,
                       y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w, b = (param.detach().clone().requires_grad_() for param in (weight, bias))
    with torch.enable_grad():
        loss_fn(x @ w.T + b, y).backward()
    return w.grad.detach(), b.grad.detach()


def numerical_gradients(loss_of: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, coordinates: list[int],
                        eps: float) -> torch.Tensor:
    """Central differences of `loss_of` at these coordinates of the flat parameters theta (W row by row, then b)."""
    theta, gradient = theta.clone(), torch.empty(len(coordinates), dtype=theta.dtype)

    def loss_at(i: int, value: float) -> float:
        theta[i] = value
        return float(loss_of(theta))

    with torch.no_grad():
        for n, i in enumerate(coordinates):
            original = float(theta[i])
            gradient[n] = (loss_at(i, original + eps) - loss_at(i, original - eps)) / (2 * eps)
            theta[i] = original
    return gradient


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| / max(|a|, |b|, FLOOR_SHARE * largest): relative, except near 0 where rounding alone would dominate."""
    magnitude = torch.maximum(a.abs(), b.abs())
    largest = float(magnitude.nan_to_num(nan=0.0, posinf=0.0).max())
    return (a - b).abs() / magnitude.clamp_min(max(FLOOR_SHARE * largest, 1e-300))


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
        return not self.failed

    @property
    def failed(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.max_relative <= self.tolerance]  # NaN fails too

    @property
    def worst(self) -> Comparison:
        """The comparison of the largest relative difference (a NaN is the largest)."""
        return max(self.comparisons, key=lambda c: math.inf if math.isnan(c.max_relative) else c.max_relative)


def _compare(first: str, second: str, a: torch.Tensor, b: torch.Tensor, name_of: Callable[[int], str],
             show: int) -> Comparison:
    """Only the worst `show` coordinates are named (all K x D names would fill memory)."""
    relative = relative_difference(a, b)
    relative = torch.where(relative.isnan(), math.inf, relative)
    worst = [Coordinate(name_of(i), float(a[i]), float(b[i]), float(relative[i]))
             for i in relative.argsort(descending=True)[:show].tolist()]
    return Comparison(first, second, len(a), float(relative.max()), worst)


def make_batch(batch_size: int, classes: int, features: int, seed: int,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A small random problem in float64: standardized inputs (as --normalize pixel makes them), small weights."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, features, generator=generator, dtype=torch.float64)
    y = torch.randint(0, classes, (batch_size,), generator=generator)
    weight = 0.05 * torch.randn(classes, features, generator=generator, dtype=torch.float64)
    bias = 0.05 * torch.randn(classes, generator=generator, dtype=torch.float64)
    return weight, bias, x, y


def check_arguments(loss: str, batch_size: int, classes: int, features: int, coordinates: int, seed: int,
                    eps: float, tolerance: float) -> None:
    """`imgcls gradcheck`'s values, a mistake refused as a UserError naming its flag; then the problem's size."""
    check_choice("loss", loss, LOSSES)
    check_seed(seed)
    for name, value, low in (("--batch-size", batch_size, 1), ("--classes", classes, 2), ("--features", features, 1),
                             ("--coordinates", coordinates, 1)):
        if value < low:
            raise UserError(f"{name} must be at least {low}, not {value}")
    for name, value in (("--eps", eps), ("--tolerance", tolerance)):
        if not 0 < value < math.inf:
            raise UserError(f"{name} must be a finite number greater than 0, not {value}")
    # refused at once: a problem too large for this machine's memory, or for a check that ends within minutes
    sizes = f"--batch-size {batch_size}, --classes {classes} and --features {features}"
    checked = min(coordinates, classes * features)
    # float64: the batch, and about 16 copies of W (gradients, differences, ranking); 200 bytes a named coordinate
    needed = 8 * (batch_size * features + batch_size * classes + 16 * (classes * features + classes)) + 200 * checked
    check_fits_memory(needed, f"a gradient check with {sizes}", "use smaller sizes")
    if 2 * (checked + classes) * batch_size * features * classes > MAX_FINITE_DIFFERENCE_WORK:
        raise UserError(f"a gradient check with {sizes} and --coordinates {coordinates} would take more than "
                        f"{MAX_FINITE_DIFFERENCE_WORK:.0e} multiply-adds of finite differences (many minutes); "
                        f"use smaller sizes or fewer --coordinates")


def gradient_check(loss: str = "ce", batch_size: int = 16, classes: int = 10, features: int = 3 * 8 * 8,
                   coordinates: int = 200, seed: int = 0, eps: float = DEFAULT_EPS,
                   tolerance: float = DEFAULT_TOLERANCE, show: int = 3, loss_fn: LossFn | None = None,
                   analytic_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None) -> GradcheckResult:
    """Numerical, analytic and autograd gradients compared on a random batch, at sampled coordinates of W and all
    of b; `loss_fn` (scores, targets) -> mean loss replaces the real loss, `analytic_fn` (W, b, x, y) the formula."""
    loss_fn = loss_fn or mean_loss(loss)
    analytic_fn = analytic_fn or (lambda w, b, x, y: analytic_gradients(w, b, x, y, loss))
    weight, bias, x, y = make_batch(batch_size, classes, features, seed)
    total = classes * features
    sampled = torch.randperm(total, generator=torch.Generator().manual_seed(seed + 1))[:coordinates].sort().values
    checked = sampled.tolist() + list(range(total, total + classes))  # sampled coordinates of W, and all of b

    def flat(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([w.flatten(), b]).to(torch.float64)

    def name(index: int) -> str:  # of the flat parameters: W row by row, then b
        return f"W[{index // features}, {index % features}]" if index < total else f"b[{index - total}]"

    numerical = numerical_gradients(lambda theta: loss_fn(x @ theta[:total].view(classes, features).T + theta[total:],
                                                          y), flat(weight, bias), checked, eps)
    analytic, autograd = flat(*analytic_fn(weight, bias, x, y)), flat(*autograd_gradients(loss_fn, weight, bias, x, y))
    return GradcheckResult(loss, batch_size, classes, features, eps, tolerance, [
        _compare("numerical", "analytic", numerical, analytic[checked], lambda i: name(checked[i]), show),
        _compare("numerical", "autograd", numerical, autograd[checked], lambda i: name(checked[i]), show),
        _compare("analytic", "autograd", analytic, autograd, name, show),
    ])
