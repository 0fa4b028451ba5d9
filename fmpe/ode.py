"""Solving the flow's ODE, optionally with the change of log density, through torchdiffeq."""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor
from torchdiffeq import odeint

from fmpe.divergence import exact_divergence, hutchinson_divergence

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_STEP_METHODS = ("euler", "midpoint", "heun3", "rk4")

Field = Callable[[Tensor, Tensor], Tensor]
"""A velocity field v(t, θ): t a scalar tensor, θ (n, d) -> (n, d)."""


@dataclass(frozen=True)
class SolverSettings:
    """How the ODE is solved.

    Attributes:
        method: an adaptive torchdiffeq method (error controlled by rtol and atol) or a
            fixed-step one (`steps` equal steps from t = 0 to 1).
        divergence: "exact" (d forward-mode passes) or "hutchinson" (`probes` random
            projections, for high-dimensional θ).
    """

    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    steps: int = 50
    divergence: Literal["exact", "hutchinson"] = "exact"
    probes: int = 1

    def __post_init__(self):
        if self.method not in ADAPTIVE_METHODS + FIXED_STEP_METHODS:
            raise ValueError(
                f"unknown ODE method {self.method!r}; expected one of "
                f"{ADAPTIVE_METHODS + FIXED_STEP_METHODS}"
            )
        if self.divergence not in ("exact", "hutchinson"):
            raise ValueError(f"divergence must be 'exact' or 'hutchinson', got {self.divergence!r}")
        if self.steps < 1 or self.probes < 1:
            raise ValueError("steps and probes must be positive")

    def to_dict(self) -> dict:
        return asdict(self)


def _row_max_rms(state: Tensor) -> Tensor:
    """Error norm for adaptive steps: the worst row's RMS.

    torchdiffeq's default RMS over the whole batch dilutes one row's error by the batch size,
    so a point's accuracy (and its log density) would depend on which points share its batch.
    Controlling the worst row keeps every row within tolerance, whatever its neighbours.
    """
    return state.pow(2).mean(-1).sqrt().max()


def _solver_kwargs(settings: SolverSettings) -> dict:
    if settings.method in FIXED_STEP_METHODS:
        return {"method": settings.method, "options": {"step_size": 1.0 / settings.steps}}
    return {
        "method": settings.method,
        "rtol": settings.rtol,
        "atol": settings.atol,
        "options": {"norm": _row_max_rms},
    }


class _CountedField:
    """Wraps a field and counts its evaluations (network forward passes)."""

    def __init__(self, field: Field):
        self.field = field
        self.evaluations = 0

    def __call__(self, t: Tensor, theta: Tensor) -> Tensor:
        self.evaluations += 1
        return self.field(t, theta)


@dataclass
class Solution:
    """End state of a solve.

    Attributes:
        theta: (n, d) the state at the end time.
        log_density_change: (n,) ∫ div v dt from the end time back to the start time
            (None unless requested).
        evaluations: how many times the network was evaluated.
    """

    theta: Tensor
    log_density_change: Tensor | None
    evaluations: int


def solve(
    field: Field,
    theta: Tensor,
    start: float,
    end: float,
    settings: SolverSettings,
    *,
    track_log_density: bool = False,
    generator: torch.Generator | None = None,
) -> Solution:
    """Integrates dθ/dt = v(t, θ) from `start` to `end`.

    With `track_log_density`, also integrates dℓ/dt = -div v(t, θ) with ℓ(start) = 0, so that
    log q_end(θ_end) = log q_start(θ_start) + ℓ(end).

    Args:
        theta: (n, d) the state at `start`.
        generator: draws the Hutchinson probes, once per solve.
    """
    counted = _CountedField(field)
    times = torch.tensor([start, end], dtype=theta.dtype, device=theta.device)
    kwargs = _solver_kwargs(settings)
    with torch.no_grad():
        if not track_log_density:
            theta_end = odeint(counted, theta, times, **kwargs)[-1]
            return Solution(theta_end, None, counted.evaluations)

        d = theta.shape[-1]
        if settings.divergence == "hutchinson":
            probes = torch.randn(
                settings.probes, *theta.shape, generator=generator, dtype=theta.dtype
            ).to(theta.device)

        def augmented(t: Tensor, state: Tensor) -> Tensor:
            def field_at_t(th: Tensor) -> Tensor:
                return counted(t, th)

            if settings.divergence == "exact":
                velocity, div = exact_divergence(field_at_t, state[:, :d])
            else:
                velocity, div = hutchinson_divergence(field_at_t, state[:, :d], probes)
            return torch.cat([velocity, -div.unsqueeze(-1)], dim=-1)

        state = torch.cat([theta, theta.new_zeros(theta.shape[0], 1)], dim=-1)
        state_end = odeint(augmented, state, times, **kwargs)[-1]
    return Solution(state_end[:, :d], state_end[:, d], counted.evaluations)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """z: (n, d) -> (n,) log density of N(0, I)."""
    return -0.5 * z.pow(2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
