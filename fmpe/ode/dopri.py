"""Batched adaptive embedded Runge–Kutta pairs with one step size per row.

torchdiffeq advances a batch with one shared step size, so the hardest row sets the steps of
all. Here every row gets its own error control, as if it were solved alone: a point's result
does not depend on the rows beside it, easy rows take few steps, and finished rows leave the
batch. Used for the simulators of stiff ODE tasks and for the posterior's flow.

The pair is a `Tableau`: Dormand–Prince 5(4) (the default) or Tsitouras 5(4).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Tableau:
    """An explicit embedded Runge–Kutta pair.

    Attributes:
        c: (s,) the nodes.
        a: the rows of the Runge–Kutta matrix below its diagonal; ``a[i]`` has i entries.
        b: (s,) the weights of the solution that is kept.
        e: (s,) the weights of the error estimate (b minus those of the embedded solution).
        error_order: the order of the embedded solution: the step size follows the error to
            the power 1 / (error_order + 1).
        fsal: the last stage is evaluated at the new solution (its row of `a` is `b`), so it
            is the next step's first stage and an accepted step costs s - 1 evaluations.
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    e: tuple[float, ...]
    error_order: int
    fsal: bool


def _pair(c, a, b, b_embedded, error_order: int, fsal: bool) -> Tableau:
    e = tuple(x - y for x, y in zip(b, b_embedded, strict=True))
    return Tableau(tuple(c), tuple(tuple(row) for row in a), tuple(b), e, error_order, fsal)


# Dormand & Prince (1980), RK5(4)7M.
_DP5_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
DORMAND_PRINCE_5 = _pair(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=_DP5_A,
    b=_DP5_A[6] + (0.0,),
    b_embedded=(5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
    error_order=4,
    fsal=True,
)

# Tsitouras (2011), "Runge–Kutta pairs of order 5(4) satisfying only the first column
# simplifying assumption", Table 1: smaller error constants than Dormand–Prince's pair.
_TSIT5_A = (
    (),
    (0.161,),
    (-0.008480655492356989, 0.335480655492357),
    (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
    (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
    (
        5.86145544294642,
        -12.92096931784711,
        8.159367898576159,
        -0.071584973281401,
        -0.028269050394068383,
    ),
    (
        0.09646076681806523,
        0.01,
        0.4798896504144996,
        1.379008574103742,
        -3.290069515436081,
        2.324710524099774,
    ),
)
_TSIT5_E = (
    -0.00178001105222577714,
    -0.0008164344596567469,
    0.007880878010261995,
    -0.1447110071732629,
    0.5823571654525552,
    -0.45808210592918697,
    0.015151515151515152,
)
TSITOURAS_5 = Tableau(
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=_TSIT5_A,
    b=_TSIT5_A[6] + (0.0,),
    e=_TSIT5_E,
    error_order=4,
    fsal=True,
)

RowField = Callable[[Tensor, Tensor, Tensor], Tensor]
"""f(t, y, rows): t (b,), y (b, m) and rows (b,), the original indices of the rows -> (b, m)."""


def _weighted(coefficients: tuple[float, ...], ks: list[Tensor]) -> Tensor:
    return sum(c * k for c, k in zip(coefficients, ks) if c != 0.0)


def _rms(error: Tensor, scale: Tensor) -> Tensor:
    """(b,) RMS of error / scale per row; NaN counts as infinitely large."""
    return (error / scale).pow(2).mean(dim=1).sqrt().nan_to_num(nan=float("inf"))


def _initial_step(
    field: RowField,
    t: Tensor,
    y: Tensor,
    f0: Tensor,
    rows: Tensor,
    rtol: float,
    atol: float,
    order: int,
) -> Tensor:
    """(b,) a first step per row from the size of y, f and f's change (Hairer, Nørsett and
    Wanner, Solving ODEs I, II.4), at the cost of one evaluation."""
    scale = atol + rtol * y.abs()
    d0, d1 = _rms(y, scale), _rms(f0, scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
    f1 = field(t + h0, y + h0[:, None] * f0, rows)
    d2 = _rms(f1 - f0, scale) / h0
    largest = torch.maximum(d1, d2)
    h1 = torch.where(largest <= 1e-15, (h0 * 1e-3).clamp(min=1e-6), (0.01 / largest) ** (1 / order))
    return torch.minimum(100 * h0, h1)


def solve_per_row(
    field: RowField,
    y0: Tensor,
    times: Tensor,
    *,
    rtol: float,
    atol: float,
    max_steps: int = 100_000,
    tableau: Tableau = DORMAND_PRINCE_5,
) -> Tensor:
    """Solves dy/dt = field(t, y) for every row of y0, from t = 0 to the last of `times`.

    Args:
        y0: (n, m) the states at t = 0.
        times: (k,) increasing output times, all >= 0.
        rtol, atol: tolerances of each row's RMS error norm.
        max_steps: attempted steps after which a row counts as failed.
        tableau: the embedded Runge–Kutta pair.

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
    order = tableau.error_order + 1
    h = _initial_step(field, t, y, k1, rows, rtol, atol, order)

    while len(rows) > 0:
        target = times[next_out]
        lands = h >= target - t
        h_step = torch.where(lands, target - t, h)

        ks = [k1]
        for c, a in zip(tableau.c[1:], tableau.a[1:]):
            ks.append(field(t + c * h_step, y + h_step[:, None] * _weighted(a, ks), rows))
        y_new = y + h_step[:, None] * _weighted(tableau.b, ks)
        error = h_step[:, None] * _weighted(tableau.e, ks)
        norm = _rms(error, atol + rtol * torch.maximum(y.abs(), y_new.abs()))
        accept = norm <= 1.0

        factor = (0.9 * norm.pow(-1 / order)).clamp(0.2, 10.0)
        h = h_step * torch.where(accept, factor, factor.clamp(max=1.0))
        t = torch.where(accept, torch.where(lands, target, t + h_step), t)
        y = torch.where(accept[:, None], y_new, y)
        if tableau.fsal:
            k1 = torch.where(accept[:, None], ks[-1], k1)
        elif accept.any():
            k1 = k1.clone()
            k1[accept] = field(t[accept], y[accept], rows[accept])
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
