"""Couplings of base draws θ0 with training parameters θ1 in a minibatch of flow matching.

The independent coupling (the default) pairs each θ1 with a fresh θ0 ~ N(0, I). Minibatch
optimal transport re-pairs the batch's θ0 among its θ1 so that the paths cross less and are
straighter (fewer solver steps), at a price for posterior estimation: the θ0 paired with
(θ1, x) then depends on x, while sampling starts from N(0, I) whatever x is. The conditional
variant adds the distance between the observations to the cost, so that θ0 is re-paired
mostly among pairs with similar x (Kerrigan et al. 2024; Chemseddine et al. 2024).
On two_moons at 1e4 (`benchmarks/coupling.py`) both cut the default solver's evaluations by
about 40% and both lose the posterior: C2ST 0.98 and 0.70 against 0.54. The default stays
independent.

A coupling is a function ``(theta0 (n, d), theta (n, d), x (n, *x_shape)) -> theta0 (n, d)``
that returns the base draws reordered; register your own by name:

    >>> COUPLINGS.register("reversed", lambda theta0, theta, x: theta0.flip(0))
    >>> FMPE(simulator, prior, coupling="reversed")
"""

from collections.abc import Callable
from functools import partial

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from fmpe.registry import Registry

Coupling = Callable[[Tensor, Tensor, Tensor], Tensor]


def independent_coupling(theta0: Tensor, theta: Tensor, x: Tensor) -> Tensor:
    """Keeps the pairing of independent draws: returns theta0 (n, d) as it is."""
    return theta0


def minibatch_ot_coupling(theta0: Tensor, theta: Tensor, x: Tensor, x_weight: float) -> Tensor:
    """Reorders the base draws to minimise Σ_i |θ0_π(i) − θ1_i|² + w |x_π(i) − x_i|².

    The assignment is exact (Hungarian, on the CPU); with w = 0 it is plain minibatch OT.
    The observation term treats each base draw as coming with its own row's x, as in
    conditional OT between p(x) N(0, I) and p(x, θ).

    Args:
        theta0: (n, d) base draws.
        theta: (n, d) standardized parameters.
        x: (n, *x_shape) standardized observations.
        x_weight: w, the weight of the observation distance.

    Returns:
        theta0 reordered: (n, d)
    """
    with torch.no_grad():
        cost = torch.cdist(theta0, theta).pow(2)
        if x_weight > 0:
            flat = x.reshape(len(x), -1)
            cost = cost + x_weight * torch.cdist(flat, flat).pow(2)
        rows, columns = linear_sum_assignment(cost.double().cpu().numpy())
    order = torch.empty(len(theta0), dtype=torch.long)
    order[torch.as_tensor(columns)] = torch.as_tensor(rows)
    return theta0[order.to(theta0.device)]


COUPLINGS: Registry[Coupling] = Registry("coupling", "fmpe.coupling.COUPLINGS")
COUPLINGS.register("independent", independent_coupling)
COUPLINGS.register("ot", partial(minibatch_ot_coupling, x_weight=0.0))
COUPLINGS.register("conditional_ot", partial(minibatch_ot_coupling, x_weight=1.0))


def register_coupling(name: str, coupling: Coupling) -> None:
    """Make ``FMPE(..., coupling=name)`` train with ``coupling``; the same as
    ``COUPLINGS.register(name, coupling)``."""
    COUPLINGS.register(name, coupling)


def get_coupling(name: str) -> Coupling:
    """The coupling registered as ``name``."""
    return COUPLINGS.get(name)
