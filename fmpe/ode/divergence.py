"""Divergence of a vector field, exactly or by Hutchinson's estimator."""

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jvp, vmap

VectorField = Callable[[Tensor], Tensor]


def exact_divergence(field: VectorField, theta: Tensor) -> tuple[Tensor, Tensor]:
    """Field value and its exact divergence: one forward pass and one backward pass per
    dimension (measured twice as fast as vmapped forward-mode passes for d = 2 to 10).

    Each row is treated independently, so `field` must not mix rows (no batch statistics).

    Args:
        field: maps theta (n, d) to (n, d), differentiably.
        theta: (n, d)

    Returns:
        value: (n, d), divergence: (n,)
    """
    d = theta.shape[-1]
    with torch.enable_grad():
        theta = theta.detach().requires_grad_(True)
        value = field(theta)
        divergence = torch.zeros(theta.shape[:-1], dtype=theta.dtype, device=theta.device)
        for i in range(d):
            # Rows are independent, so the gradient of the column sum is each row's ∂v_i/∂θ.
            (gradient,) = torch.autograd.grad(value[:, i].sum(), theta, retain_graph=i < d - 1)
            divergence = divergence + gradient[:, i]
    return value.detach(), divergence


def differentiable_divergence(field: VectorField, theta: Tensor) -> tuple[Tensor, Tensor]:
    """Field value and its exact divergence, both differentiable with respect to theta (a
    second-order graph), for optimizing through a density; theta (n, d) is made a leaf that
    requires grad if it is not part of a graph.

    Returns:
        value: (n, d), divergence: (n,)
    """
    with torch.enable_grad():
        if not theta.requires_grad:
            theta = theta.detach().requires_grad_(True)
        value = field(theta)
        divergence = torch.zeros(theta.shape[:-1], dtype=theta.dtype, device=theta.device)
        for i in range(theta.shape[-1]):
            (gradient,) = torch.autograd.grad(value[:, i].sum(), theta, create_graph=True)
            divergence = divergence + gradient[:, i]
    return value, divergence


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
