"""A per-dimension map from a prior's bounded support onto all of R^d.

A flow trained on θ itself spreads some mass past the prior's bounds, which rejection then
cuts off. Trained on u = T(θ) instead, every sample T⁻¹(u) lies inside the bounds and
log q(θ) = log q_u(T(θ)) + log |det dT/dθ| is normalized over the support. Per dimension:

- two finite bounds l < h: u = logit((θ - l) / (h - l));
- only a lower bound l: u = log(θ - l);
- only an upper bound h: u = -log(h - θ);
- no bound: u = θ.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

_LOWER_BOUNDED = (constraints.greater_than, constraints.greater_than_eq)
_BOUNDED = (constraints.interval, constraints.half_open_interval)


def support_bounds(prior: Distribution, dim: int) -> tuple[Tensor, Tensor]:
    """Per-dimension lower and upper bounds (dim,) of a prior's support, ±inf where there is
    none. Supports other than intervals and half-lines (a simplex, integers, a support the
    distribution does not declare) count as unbounded."""
    low = torch.full((dim,), -math.inf)
    high = torch.full((dim,), math.inf)
    try:
        support = prior.support
    except NotImplementedError:
        return low, high
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if isinstance(support, _BOUNDED):
        low, high = support.lower_bound, support.upper_bound
    elif isinstance(support, _LOWER_BOUNDED):
        low = support.lower_bound
    elif isinstance(support, constraints.less_than):
        high = support.upper_bound
    return _as_vector(low, dim), _as_vector(high, dim)


def in_support(prior: Distribution, theta: Tensor) -> Tensor:
    """Which rows of theta (n, d) lie strictly inside the prior's support: (n,) bool.

    A point on a bound counts as outside. That is fmpe's convention for every density, with
    or without `map_to_unbounded` (where the flow's density vanishes on the bounds), and the
    one of its task priors; a NaN row is outside.
    """
    on_cpu = theta.cpu()  # priors usually hold their parameters on the CPU
    low, high = support_bounds(prior, theta.shape[-1])
    inside = ((on_cpu > low.to(on_cpu.dtype)) & (on_cpu < high.to(on_cpu.dtype))).all(-1)
    try:
        declared = prior.support.check(on_cpu)
    except NotImplementedError:
        declared = torch.isfinite(prior.log_prob(on_cpu))
    inside &= declared.reshape(theta.shape[0], -1).all(-1)
    return inside.to(theta.device)


def _as_vector(bound: float | Tensor, dim: int) -> Tensor:
    """A bound (a number, or a tensor broadcastable to (dim,)) as a float32 (dim,) tensor."""
    return torch.as_tensor(bound, dtype=torch.float32).cpu().expand(dim).clone()


class UnboundedTransform(nn.Module):
    """u = T(θ), dimension by dimension, from bounds (l, h) to R (see the module docstring).

    Args:
        low, high: (d,) bounds, -inf and inf where a dimension has none.
    """

    def __init__(self, low: Tensor, high: Tensor):
        super().__init__()
        if low.shape != high.shape or low.dim() != 1:
            raise ValueError(
                f"low and high must both have shape (d,), got {tuple(low.shape)} and "
                f"{tuple(high.shape)}"
            )
        if not (low < high).all():
            raise ValueError("every lower bound must be below its upper bound")
        self.register_buffer("low", low)
        self.register_buffer("high", high)

    @classmethod
    def for_prior(cls, prior: Distribution, dim: int) -> "UnboundedTransform":
        return cls(*support_bounds(prior, dim))

    @classmethod
    def identity(cls, dim: int) -> "UnboundedTransform":
        return cls(torch.full((dim,), -math.inf), torch.full((dim,), math.inf))

    def _parts(self, dtype: torch.dtype) -> tuple[Tensor, ...]:
        """(d,) masks of the dimensions with both bounds, only the lower and only the upper,
        and finite stand-ins for low, high and the width where a dimension lacks them.

        The stand-ins keep every branch of the `torch.where`s below finite, so that gradients
        through them are too.
        """
        has_low, has_high = torch.isfinite(self.low), torch.isfinite(self.high)
        both = has_low & has_high
        low = torch.where(has_low, self.low, 0.0).to(dtype)
        high = torch.where(has_high, self.high, 0.0).to(dtype)
        width = torch.where(both, self.high - self.low, 1.0).to(dtype)
        return both, has_low & ~has_high, ~has_low & has_high, low, high, width

    def forward(self, theta: Tensor) -> Tensor:
        """theta: (n, d) -> u: (n, d); ±inf or NaN for values on or outside a bound."""
        both, lower, upper, low, high, width = self._parts(theta.dtype)
        box = torch.logit(torch.where(both, (theta - low) / width, 0.5))
        above = torch.log(torch.where(lower, theta - low, 1.0))
        below = -torch.log(torch.where(upper, high - theta, 1.0))
        return torch.where(both, box, torch.where(lower, above, torch.where(upper, below, theta)))

    def inverse(self, u: Tensor) -> Tensor:
        """u: (n, d) -> theta: (n, d), inside the bounds."""
        both, lower, upper, low, high, width = self._parts(u.dtype)
        box = low + width * torch.sigmoid(u)
        above = low + torch.exp(torch.where(lower, u, 0.0))
        below = high - torch.exp(torch.where(upper, -u, 0.0))
        return torch.where(both, box, torch.where(lower, above, torch.where(upper, below, u)))

    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        """log |det dT/dθ| at θ = T⁻¹(u), computed from u for accuracy near the bounds.

        u: (n, d) -> (n,)
        """
        both, lower, upper, _, _, width = self._parts(u.dtype)
        # dθ/du = (h - l) σ(u) σ(-u) for two bounds, e^u for a lower and e^-u for an upper one.
        box = F.softplus(u) + F.softplus(-u) - torch.log(width)
        per_dim = torch.where(both, box, torch.where(lower, -u, torch.where(upper, u, 0.0)))
        return per_dim.sum(-1)

    def inside(self, theta: Tensor) -> Tensor:
        """theta: (n, d) -> (n,) bool, rows strictly inside every bound."""
        low, high = self.low.to(theta.dtype), self.high.to(theta.dtype)
        return ((theta > low) & (theta < high)).all(-1)

    def checked(self, theta: Tensor, what: str) -> Tensor:
        """T(θ) of theta (n, d) that must lie inside the bounds.

        Raises:
            ValueError: naming `what`, the first row outside and the bounds.
        """
        outside = (~self.inside(theta)).nonzero()
        if len(outside) > 0:
            row = int(outside[0])
            raise ValueError(
                f"{what}: {len(outside)} rows of theta lie on or outside the prior's bounds "
                f"(low {self.low.tolist()}, high {self.high.tolist()}), the first is row {row}: "
                f"{theta[row].tolist()}. Train on θ strictly inside the prior's support, or "
                "leave FMPE(..., map_to_unbounded=False)"
            )
        return self(theta)
