"""Divergence of a vector field, exactly or by Hutchinson's estimator."""

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jvp, vmap

VectorField = Callable[[Tensor], Tensor]


def exact_divergence(field: VectorField, theta: Tensor) -> tuple[Tensor, Tensor]:
    """Field value and its exact divergence, with one forward-mode pass per dimension.

    Each row is treated independently, so `field` must not mix rows (no batch statistics).

    Args:
        field: maps theta (n, d) to (n, d).
        theta: (n, d)

    Returns:
        value: (n, d), divergence: (n,)
    """
    d = theta.shape[-1]
    basis = torch.eye(d, dtype=theta.dtype, device=theta.device)

    def directional(direction: Tensor) -> tuple[Tensor, Tensor]:
        return jvp(field, (theta,), (direction.expand_as(theta),))

    values, derivatives = vmap(directional)(basis)  # (d, n, d) each
    divergence = torch.diagonal(derivatives, dim1=0, dim2=2).sum(-1)
    return values[0], divergence


def hutchinson_divergence(
    field: VectorField, theta: Tensor, probes: Tensor
) -> tuple[Tensor, Tensor]:
    """Field value and an unbiased stochastic estimate of its divergence.

    The probes must stay fixed over one ODE solve, so that the right-hand side an adaptive
    solver sees is deterministic.

    Args:
        theta: (n, d)
        probes: (k, n, d) Rademacher or Gaussian probe vectors.

    Returns:
        value: (n, d), divergence estimate: (n,)
    """

    def directional(probe: Tensor) -> tuple[Tensor, Tensor]:
        return jvp(field, (theta,), (probe,))

    values, derivatives = vmap(directional)(probes)  # (k, n, d) each
    estimate = (derivatives * probes).sum(-1).mean(0)
    return values[0], estimate
