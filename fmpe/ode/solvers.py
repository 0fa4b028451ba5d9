"""One entry point, `solve`, for the flow's ODE, with the solvers in a table.

A solver is a function ``solve(field, y0, start, end, *, rtol, atol, steps) -> y_end`` that
integrates dy/dt = field(t, y) from `start` to `end`; `SOLVERS` holds them by name:

>>> def euler(field, y0, start, end, *, rtol, atol, steps):
...     y, h = y0, (end - start) / steps
...     for k in range(steps):
...         y = y + h * field(torch.tensor(start + k * h), y)
...     return y
>>> SOLVERS.register("my_euler", Solver(euler, adaptive=False))
>>> posterior.sample(1000, x, method="my_euler", steps=20)

The field that `solve` integrates takes each row's condition, ``v(t, y, condition)``; `solve`
hands every evaluation the conditions of the rows it evaluates, so neither the field nor the
solver handles row indices.
"""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Literal, Protocol

import torch
from torch import Tensor
from torchdiffeq import odeint

from fmpe.ode.divergence import differentiable_divergence, exact_divergence, hutchinson_divergence
from fmpe.ode.dopri import DORMAND_PRINCE_5, TSITOURAS_5, Tableau, solve_per_row
from fmpe.registry import Registry

Field = Callable[[Tensor, Tensor, Tensor | None], Tensor]
"""v(t, y, condition): t a scalar tensor or (b,), y (b, m), and condition (b, ...) the
conditions of y's rows (None for a solve without conditions) -> (b, m)."""

BatchField = Callable[[Tensor, Tensor], Tensor]
"""f(t, y): the right-hand side a solver integrates, for the rows of y0 -> (b, m)."""

RowField = Callable[[Tensor, Tensor, Tensor], Tensor]
"""f(t, y, rows): the right-hand side a per-row solver integrates; rows (b,) are the indices
of y's rows in y0, so that the solver may drop finished rows -> (b, m)."""


class SolveFunction(Protocol):
    """Integrates dy/dt = field(t, y) from `start` to `end` (field(t, y, rows) for a per-row
    solver).

    y0: (n, m) the state at `start` -> (n, m) the state at `end`. Adaptive solvers control
    their error by `rtol` and `atol`; fixed-step solvers take `steps` equal steps.
    """

    def __call__(
        self,
        field: BatchField | RowField,
        y0: Tensor,
        start: float,
        end: float,
        *,
        rtol: float,
        atol: float,
        steps: int,
    ) -> Tensor: ...


@dataclass(frozen=True)
class Solver:
    """An entry of the solver table.

    Attributes:
        solve: the solve function.
        adaptive: whether it controls its error by `rtol`/`atol` (else it takes `steps`).
        per_row: whether it is given ``field(t, y, rows)``, to drop rows as they finish.
    """

    solve: SolveFunction
    adaptive: bool
    per_row: bool = False


SOLVERS: Registry[Solver] = Registry("ODE method", "fmpe.ode.SOLVERS")


def register_solver(
    name: str, solve: SolveFunction, *, adaptive: bool, per_row: bool = False
) -> None:
    """Makes `solve` available as `SolverSettings(method=name)`; the same as
    ``SOLVERS.register(name, Solver(solve, adaptive, per_row))``."""
    SOLVERS.register(name, Solver(solve, adaptive, per_row))


def _per_row(tableau: Tableau) -> SolveFunction:
    """fmpe's per-row solver with the embedded pair `tableau`."""

    def solve(field, y0, start, end, *, rtol, atol, steps):
        # Rows are solved in s = |t - start|, which always increases.
        sign = 1.0 if end >= start else -1.0

        def in_s(s: Tensor, y: Tensor, rows: Tensor) -> Tensor:
            return sign * field(start + sign * s, y, rows)

        duration = torch.tensor([abs(end - start)], dtype=y0.dtype)
        return solve_per_row(in_s, y0, duration, rtol=rtol, atol=atol, tableau=tableau)[:, -1]

    return solve


def _row_max_rms(state: Tensor) -> Tensor:
    """Error norm for torchdiffeq's adaptive steps: the worst row's RMS.

    torchdiffeq's default RMS over the whole batch dilutes one row's error by the batch size,
    so a point's accuracy (and its log density) would depend on which points share its batch.
    Controlling the worst row keeps every row within tolerance, whatever its neighbours.
    """
    return state.pow(2).mean(-1).sqrt().max()


def _torchdiffeq(method: str, adaptive: bool) -> SolveFunction:
    """torchdiffeq's `method`, one step size for the whole batch."""

    def solve(field, y0, start, end, *, rtol, atol, steps):
        times = torch.tensor([start, end], dtype=y0.dtype, device=y0.device)
        if adaptive:
            options = {"rtol": rtol, "atol": atol, "options": {"norm": _row_max_rms}}
        else:
            options = {"options": {"step_size": abs(end - start) / steps}}
        return odeint(field, y0, times, method=method, **options)[-1]

    return solve


PER_ROW_METHOD = "dopri5_per_row"
register_solver(PER_ROW_METHOD, _per_row(DORMAND_PRINCE_5), adaptive=True, per_row=True)
register_solver("tsit5_per_row", _per_row(TSITOURAS_5), adaptive=True, per_row=True)
for _method in ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"):
    register_solver(_method, _torchdiffeq(_method, adaptive=True), adaptive=True)
for _method in ("euler", "midpoint", "heun3", "rk4"):
    register_solver(_method, _torchdiffeq(_method, adaptive=False), adaptive=False)


_RowsOrAll = Callable[[Tensor, Tensor, Tensor | None], Tensor]
"""f(t, y, rows), rows None for all of y0's rows: what `solve` builds before the solver."""


@dataclass(frozen=True)
class TimeChange:
    """t = time(s) for s in [0, 1], increasing from 0 to 1; `inverse` maps t back to s and
    `rate` is dt/ds."""

    time: Callable[[Tensor], Tensor]
    inverse: Callable[[float], float]
    rate: Callable[[Tensor], Tensor]


TIME_GRIDS: dict[str, TimeChange | None] = {
    "uniform": None,
    # Smooth at s = 1 (a power below 2 would make dt/ds singular there, and RK4 lose order).
    "late": TimeChange(
        time=lambda s: 1 - (1 - s) ** 2,
        inverse=lambda t: 1 - math.sqrt(1 - t),
        rate=lambda s: 2 * (1 - s),
    ),
}


def _in_changed_time(right_hand_side: _RowsOrAll, change: TimeChange) -> _RowsOrAll:
    """The right-hand side in s: dy/ds = dt/ds · f(t(s), y)."""

    def in_s(s: Tensor, y: Tensor, rows: Tensor | None) -> Tensor:
        rate = change.rate(s)
        return (rate if rate.dim() == 0 else rate[:, None]) * right_hand_side(
            change.time(s), y, rows
        )

    return in_s


@dataclass(frozen=True)
class SolverSettings:
    """How a posterior solves its ODE: solves that track the log density (`log_prob`,
    `sample_and_log_prob`) by `method`, `steps`, `time_grid`, `rtol` and `atol`; solves that
    only move samples (`sample`) by the same fields prefixed with ``sample_``
    (`for_sampling`). `solve` takes the unprefixed fields.

    Attributes:
        method: a name in `SOLVERS`: "dopri5_per_row" (fmpe's Dormand–Prince with one step
            size per row, the default), torchdiffeq's adaptive methods (one step size for the
            batch, error controlled on its worst row: "dopri5", "dopri8", "bosh3",
            "fehlberg2", "adaptive_heun") or its fixed-step ones (`steps` equal steps:
            "euler", "midpoint", "heun3", "rk4").
        rtol, atol: tolerances of the adaptive methods; at 1e-5, log densities are within
            0.01 nats of a 1e-9 solve.
        steps: steps of the fixed-step methods.
        divergence: "exact" (one backward pass per dimension) or "hutchinson" (`probes`
            random projections, for high-dimensional θ).
        time_grid: "uniform", or "late": the solver steps evenly in s with
            t = 1 - (1 - s)², so that equal steps crowd towards t = 1, where the field curves
            most (time priors with α > 0 train mostly there); meant for the fixed-step
            methods.
        sample_method, sample_steps, sample_time_grid, sample_rtol, sample_atol: the same for
            solves that only move samples. The default, RK4 with 6 steps on the late grid
            (24 evaluations a round of draws), kept C2ST within 0.005 of the adaptive solver at
            1e-3, or below it, on all ten sbibm tasks at 1e4, with 29-75% of its network
            evaluations, and lies 2-160 times nearer to the ODE's exact solution than that
            solver (benchmarks/fast_sampling.py); `sample` also takes these as
            `method`, `steps`, ….
    """

    method: str = PER_ROW_METHOD
    rtol: float = 1e-5
    atol: float = 1e-5
    steps: int = 50
    time_grid: Literal["uniform", "late"] = "uniform"
    sample_method: str = "rk4"
    sample_rtol: float = 1e-3
    sample_atol: float = 1e-3
    sample_steps: int = 6
    sample_time_grid: Literal["uniform", "late"] = "late"
    divergence: Literal["exact", "hutchinson"] = "exact"
    probes: int = 1

    def __post_init__(self):
        # An unknown method fails here, naming the registered ones.
        SOLVERS.get(self.method)
        SOLVERS.get(self.sample_method)
        if self.divergence not in ("exact", "hutchinson"):
            raise ValueError(f"divergence must be 'exact' or 'hutchinson', got {self.divergence!r}")
        if self.steps < 1 or self.sample_steps < 1 or self.probes < 1:
            raise ValueError("steps, sample_steps and probes must be positive")
        for grid in (self.time_grid, self.sample_time_grid):
            if grid not in TIME_GRIDS:
                raise ValueError(f"time_grid must be one of {sorted(TIME_GRIDS)}, got {grid!r}")

    def sampling_like_densities(self) -> "SolverSettings":
        """These settings with the sampling solve taking the density solves' method, steps and
        time grid (the sample tolerances kept): how fmpe sampled before 0.6.0."""
        return replace(
            self,
            sample_method=self.method,
            sample_steps=self.steps,
            sample_time_grid=self.time_grid,
        )

    def for_sampling(self) -> "SolverSettings":
        """These settings with the ``sample_*`` fields in place of those of density solves."""
        return replace(
            self,
            **{name: getattr(self, f"sample_{name}") for name in SAMPLE_FIELDS},
        )

    def to_dict(self) -> dict:
        return asdict(self)


SAMPLE_FIELDS = ("method", "steps", "time_grid", "rtol", "atol")
"""The settings that a solve which only moves samples takes from the ``sample_*`` fields."""


def sampling_overrides(options: dict) -> dict:
    """Overrides given to `sample` in `SolverSettings`' terms: `method`, `steps`, `time_grid`,
    `rtol` and `atol` there set the sampling solve, i.e. the ``sample_*`` fields.

    >>> sampling_overrides({"method": "dopri5_per_row", "rtol": 1e-4})
    {'sample_method': 'dopri5_per_row', 'sample_rtol': 0.0001}
    """
    renamed = {f"sample_{k}" if k in SAMPLE_FIELDS else k: v for k, v in options.items()}
    if len(renamed) < len(options):
        both = sorted(k for k in options if k in SAMPLE_FIELDS and f"sample_{k}" in options)
        raise ValueError(
            f"sample() got both {both[0]!r} and 'sample_{both[0]}': they name the same setting"
        )
    return renamed


@dataclass(frozen=True)
class Solution:
    """End state of a solve.

    Attributes:
        theta: (n, d) the state at the end time.
        log_density_change: (n,) ∫ div v dt from the end time back to the start time
            (None unless requested).
        evaluations: how many times the field was evaluated.
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
    condition: Tensor | None = None,
    track_log_density: bool = False,
    differentiable: bool = False,
    generator: torch.Generator | None = None,
) -> Solution:
    """Integrates dθ/dt = v(t, θ, condition) from `start` to `end` with `settings.method`,
    `steps`, `time_grid`, `rtol` and `atol` (a sampling solve passes
    `settings.for_sampling()`).

    With `track_log_density`, also integrates dℓ/dt = -div v(t, θ) with ℓ(start) = 0, so that
    log q_end(θ_end) = log q_start(θ_start) + ℓ(end).

    Args:
        field: the velocity field; it must treat rows independently.
        theta: (n, d) the state at `start`.
        condition: (n, ...) what row i is conditioned on (e.g. its embedded observation),
            sliced to the rows of each evaluation; None: the field gets None.
        differentiable: keep the graph, so that gradients flow to `theta` and the field's
            parameters (meant for a fixed-step method; the divergence is then exact to second
            order). Under an outer `torch.no_grad()` no graph is kept.
        generator: draws the Hutchinson probes, once per solve.
    """
    d = theta.shape[-1]
    evaluations = 0

    def velocity(t: Tensor, y: Tensor, rows: Tensor | None) -> Tensor:
        nonlocal evaluations
        evaluations += 1
        return field(t, y, condition if condition is None or rows is None else condition[rows])

    if track_log_density and settings.divergence == "hutchinson":
        probes = torch.randn(
            settings.probes, *theta.shape, generator=generator, dtype=theta.dtype
        ).to(theta.device)
    exact = differentiable_divergence if differentiable else exact_divergence

    def with_divergence(t: Tensor, state: Tensor, rows: Tensor | None) -> Tensor:
        """state: (b, d + 1), θ and ℓ."""

        def field_at_t(y: Tensor) -> Tensor:
            return velocity(t, y, rows)

        if settings.divergence == "exact":
            value, div = exact(field_at_t, state[:, :d])
        else:
            row_probes = probes if rows is None else probes[:, rows]
            value, div = hutchinson_divergence(field_at_t, state[:, :d], row_probes)
        return torch.cat([value, -div.unsqueeze(-1)], dim=-1)

    solver = SOLVERS.get(settings.method)
    if track_log_density:
        right_hand_side = with_divergence
        state = torch.cat([theta, theta.new_zeros(theta.shape[0], 1)], dim=-1)
    else:
        right_hand_side, state = velocity, theta
    change = TIME_GRIDS[settings.time_grid]
    if change is not None:
        right_hand_side = _in_changed_time(right_hand_side, change)
        start, end = change.inverse(start), change.inverse(end)
    given = right_hand_side if solver.per_row else _all_rows(right_hand_side)
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        end_state = solver.solve(
            given, state, start, end, rtol=settings.rtol, atol=settings.atol, steps=settings.steps
        )
    if not track_log_density:
        return Solution(end_state, None, evaluations)
    return Solution(end_state[:, :d], end_state[:, d], evaluations)


def _all_rows(right_hand_side: _RowsOrAll) -> BatchField:
    return lambda t, y: right_hand_side(t, y, None)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """z: (n, d) -> (n,) log density of N(0, I)."""
    return -0.5 * z.pow(2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
