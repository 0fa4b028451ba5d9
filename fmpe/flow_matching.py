"""The maths of flow matching: the optimal-transport probability path, its time prior and the
conditional flow-matching loss.

Time runs from t = 0 (standard normal base) to t = 1 (posterior). All functions are pure.
"""

from collections.abc import Callable

import torch
from torch import Tensor

VelocityField = Callable[[Tensor, Tensor, Tensor], Tensor]
"""v(t, θ_t, x): t (n,), θ_t (n, d), x (n, *x_shape) -> (n, d)."""


def sample_time(
    n: int,
    exponent: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""Draws times from the power-law prior p(t) = (1 + α) t^α on [0, 1].

    Larger α puts more training weight near t = 1, where the velocity field carries the
    fine structure of the posterior.

    Returns:
        t: (n,)
    """
    if exponent <= -1:
        raise ValueError(f"the time prior exponent must be > -1, got {exponent}")
    u = torch.rand(n, generator=generator, device=device, dtype=dtype)
    return u ** (1.0 / (1.0 + exponent))


def time_log_density(t: Tensor, exponent: float) -> Tensor:
    """Log density of the power-law time prior.

    Args:
        t: (...) times in [0, 1].
    """
    return torch.log1p(torch.tensor(exponent, dtype=t.dtype)) + exponent * torch.log(t)


def _expand_time(t: Tensor, like: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def interpolate(theta0: Tensor, theta1: Tensor, t: Tensor, sigma_min: float) -> Tensor:
    """Point on the conditional OT path from a base draw θ0 to a data point θ1.

    Args:
        theta0: (n, d) base draws.
        theta1: (n, d) standardized parameters.
        t: (n,) times.

    Returns:
        theta_t: (n, d) = (1 - (1 - σ_min) t) θ0 + t θ1
    """
    t = _expand_time(t, theta0)
    return (1 - (1 - sigma_min) * t) * theta0 + t * theta1


def target_velocity(theta0: Tensor, theta1: Tensor, sigma_min: float) -> Tensor:
    """Velocity of the conditional OT path, the regression target of flow matching.

    Returns:
        u: (n, d) = θ1 - (1 - σ_min) θ0
    """
    return theta1 - (1 - sigma_min) * theta0


def flow_matching_loss(
    velocity: VelocityField,
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
    residual = velocity(t, theta_t, x) - target_velocity(theta0, theta, sigma_min)
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
