"""Batched adaptive Dormand–Prince 5(4) with one step size per row.

torchdiffeq advances a batch with one shared step size, so the hardest row sets the steps of
all. Here every row gets its own error control, as if it were solved alone: a point's result
does not depend on the rows beside it, easy rows take few steps, and finished rows leave the
batch. Used for the simulators of stiff ODE tasks and for the posterior's flow.
"""

from collections.abc import Callable

import torch
from torch import Tensor

# Dormand & Prince (1980), RK5(4)7M; with the nodes below, the last stage is the next step's
# first (FSAL), so an accepted step costs six evaluations.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = _A[6] + (0.0,)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4, strict=True))

RowField = Callable[[Tensor, Tensor, Tensor], Tensor]
"""f(t, y, rows): t (b,), y (b, m) and rows (b,), the original indices of the rows -> (b, m)."""


def _weighted(coefficients: tuple[float, ...], ks: list[Tensor]) -> Tensor:
    return sum(c * k for c, k in zip(coefficients, ks) if c != 0.0)


def _rms(error: Tensor, scale: Tensor) -> Tensor:
    """(b,) RMS of error / scale per row; NaN counts as infinitely large."""
    return (error / scale).pow(2).mean(dim=1).sqrt().nan_to_num(nan=float("inf"))


def _initial_step(
    field: RowField, t: Tensor, y: Tensor, f0: Tensor, rows: Tensor, rtol: float, atol: float
) -> Tensor:
    """(b,) a first step per row from the size of y, f and f's change (Hairer, Nørsett and
    Wanner, Solving ODEs I, II.4), at the cost of one evaluation."""
    scale = atol + rtol * y.abs()
    d0, d1 = _rms(y, scale), _rms(f0, scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
    f1 = field(t + h0, y + h0[:, None] * f0, rows)
    d2 = _rms(f1 - f0, scale) / h0
    largest = torch.maximum(d1, d2)
    h1 = torch.where(largest <= 1e-15, (h0 * 1e-3).clamp(min=1e-6), (0.01 / largest) ** 0.2)
    return torch.minimum(100 * h0, h1)


def solve_per_row(
    field: RowField,
    y0: Tensor,
    times: Tensor,
    *,
    rtol: float,
    atol: float,
    max_steps: int = 100_000,
) -> Tensor:
    """Solves dy/dt = field(t, y) for every row of y0, from t = 0 to the last of `times`.

    Args:
        y0: (n, m) the states at t = 0.
        times: (k,) increasing output times, all >= 0.
        rtol, atol: tolerances of each row's RMS error norm.
        max_steps: attempted steps after which a row counts as failed.

    Returns:
        (n, k, m) the states at `times`; rows that failed (too many steps, step size underflow,
        non-finite state) are NaN throughout.
    """
    n, m = y0.shape
    y = y0.clone()
    out = torch.full((n, len(times), m), float("nan"), dtype=y.dtype, device=y.device)
    times = times.to(y)
    rows = torch.arange(n, device=y.device)
    t = torch.zeros(n, dtype=y.dtype, device=y.device)
    next_out = torch.zeros(n, dtype=torch.long, device=y.device)
    steps = torch.zeros(n, dtype=torch.long, device=y.device)
    h_min = 1e-12 * max(float(times[-1]), 1.0)
    if times[0] <= 0:
        out[:, 0] = y
        next_out += 1
    active = next_out < len(times)
    rows, y, t, next_out = rows[active], y[active], t[active], next_out[active]
    if len(rows) == 0:
        return out
    k1 = field(t, y, rows)
    h = _initial_step(field, t, y, k1, rows, rtol, atol)

    while len(rows) > 0:
        target = times[next_out]
        lands = h >= target - t
        h_step = torch.where(lands, target - t, h)

        ks = [k1]
        for c, a in zip(_C[1:], _A[1:]):
            ks.append(field(t + c * h_step, y + h_step[:, None] * _weighted(a, ks), rows))
        y_new = y + h_step[:, None] * _weighted(_B5, ks)
        error = h_step[:, None] * _weighted(_E, ks)
        norm = _rms(error, atol + rtol * torch.maximum(y.abs(), y_new.abs()))
        accept = norm <= 1.0

        factor = (0.9 * norm.pow(-0.2)).clamp(0.2, 10.0)
        h = h_step * torch.where(accept, factor, factor.clamp(max=1.0))
        t = torch.where(accept, torch.where(lands, target, t + h_step), t)
        y = torch.where(accept[:, None], y_new, y)
        k1 = torch.where(accept[:, None], ks[-1], k1)
        steps += 1

        saved = accept & lands
        out[rows[saved], next_out[saved]] = y[saved]
        next_out += saved

        done = next_out >= len(times)
        failed = (steps >= max_steps) | (h < h_min) | ~torch.isfinite(y).all(dim=1)
        out[rows[failed & ~done]] = float("nan")
        keep = ~(done | failed)
        if not keep.all():
            rows, y, t, h, k1, next_out, steps = (
                v[keep] for v in (rows, y, t, h, k1, next_out, steps)
            )
    return out
