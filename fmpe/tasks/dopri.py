"""Batched adaptive Dormand–Prince 5(4) solver with one step size per trajectory.

Each trajectory gets its own error control, as if it were solved alone, so a stiff parameter set
neither slows down nor loosens the tolerance of the others. Finished trajectories leave the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# Dormand & Prince (1980), RK5(4)7M: nodes are implied by the autonomous right-hand side.
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

Field = Callable[[Tensor, Tensor], Tensor]


def solve_autonomous(
    field: Field,
    y0: Tensor,
    params: Tensor,
    times: Tensor,
    rtol: float = 1e-8,
    atol: float = 1e-8,
    max_steps: int = 100_000,
) -> Tensor:
    """Solve ``dy/dt = field(y, params)`` from ``t = 0`` for a batch of parameter sets.

    Args:
        field: right-hand side, ``(y: (b, m), params: (b, p)) -> (b, m)``.
        y0: initial state, ``(m,)`` shared by all trajectories or ``(n, m)``.
        params: ``(n, p)``.
        times: increasing output times ``(k,)``, all ``>= 0``.
        rtol, atol: tolerances of the per-trajectory RMS error norm.
        max_steps: accepted plus rejected steps after which a trajectory counts as failed.

    Returns:
        ``(n, k, m)`` states at ``times``; trajectories that failed (too many steps, step size
        underflow, non-finite state) are NaN throughout.
    """
    n = params.shape[0]
    y = y0.expand(n, -1).clone() if y0.dim() == 1 else y0.clone()
    out = torch.full((n, len(times), y.shape[1]), float("nan"), dtype=y.dtype)
    times = times.to(y.dtype)

    idx = torch.arange(n)
    t = torch.zeros(n, dtype=y.dtype)
    k1 = field(y, params)
    # A small first step; the controller grows it by up to 10x per accepted step.
    h = torch.full((n,), 1e-4 * float(times[-1]) + 1e-12, dtype=y.dtype)
    next_out = torch.zeros(n, dtype=torch.long)
    steps = torch.zeros(n, dtype=torch.long)
    h_min = 1e-12 * max(float(times[-1]), 1.0)

    if times[0] <= 0:
        out[:, 0] = y
        next_out += 1

    while len(idx) > 0:
        target = times.index_select(0, next_out)
        lands = h >= target - t
        h_step = torch.where(lands, target - t, h)

        ks = [k1]
        for row in _A[1:]:
            incr = sum(a * k for a, k in zip(row, ks, strict=True) if a != 0.0)
            ks.append(field(y + h_step[:, None] * incr, params))
        y_new = y + h_step[:, None] * sum(b * k for b, k in zip(_B5, ks, strict=True) if b != 0.0)
        err = h_step[:, None] * sum(e * k for e, k in zip(_E, ks, strict=True) if e != 0.0)
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        # Squared RMS error norm; a NaN from a blown-up stage counts as a rejection.
        norm_sq = (err / scale).pow(2).mean(dim=1).nan_to_num(nan=float("inf"))
        accept = norm_sq <= 1.0

        factor = (0.9 * norm_sq.pow(-0.1)).clamp(0.2, 10.0)
        factor = torch.where(accept, factor, factor.clamp(max=1.0))
        h = h_step * factor
        t = torch.where(accept, torch.where(lands, target, t + h_step), t)
        y = torch.where(accept[:, None], y_new, y)
        k1 = torch.where(accept[:, None], ks[-1], k1)
        steps += 1

        saved = (accept & lands).nonzero().squeeze(1)
        slots = idx.index_select(0, saved) * len(times) + next_out.index_select(0, saved)
        out.view(-1, y.shape[1]).index_copy_(0, slots, y.index_select(0, saved))
        next_out += accept & lands

        done = next_out >= len(times)
        failed = (steps >= max_steps) | (h < h_min) | ~torch.isfinite(y).all(dim=1)
        out.index_fill_(0, idx.index_select(0, (failed & ~done).nonzero().squeeze(1)), float("nan"))
        keep = (~(done | failed)).nonzero().squeeze(1)
        if len(keep) < len(idx):
            idx, y, t, h, k1, params, next_out, steps = (
                v.index_select(0, keep) for v in (idx, y, t, h, k1, params, next_out, steps)
            )
    return out
