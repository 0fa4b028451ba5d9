"""The conditional flow matching objective."""

import torch
from torch import Tensor

from fmpe.network import VelocityNetwork
from fmpe.paths import interpolate, sample_time, target_velocity


def flow_matching_loss(
    network: VelocityNetwork,
    theta: Tensor,
    x: Tensor,
    t: Tensor,
    theta0: Tensor,
    sigma_min: float,
) -> Tensor:
    """Mean squared error between v(t, θ_t, x) and the velocity of the conditional OT path.

    Args:
        theta: (n, d) standardized parameters (the path's end points θ1).
        x: (n, *x_shape) standardized data.
        t: (n,) times.
        theta0: (n, d) base draws.

    Returns:
        the loss, averaged over the batch and the dimensions: ()
    """
    theta_t = interpolate(theta0, theta, t, sigma_min)
    residual = network(t, theta_t, x) - target_velocity(theta0, theta, sigma_min)
    return residual.pow(2).mean()


def draw_path_noise(
    theta: Tensor, exponent: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Draws one time (from the power-law prior) and one base point per training pair.

    Returns:
        t: (n,), theta0: (n, d)
    """
    t = sample_time(
        theta.shape[0], exponent, generator=generator, device=theta.device, dtype=theta.dtype
    )
    theta0 = torch.randn(theta.shape, generator=generator, device=theta.device, dtype=theta.dtype)
    return t, theta0
