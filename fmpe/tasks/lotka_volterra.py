"""sbibm's Lotka–Volterra task, with the ODE solved in torch instead of Julia.

Parameters (α, β, γ, δ) of prey x' = αx − βxy and predators y' = −γy + δxy, from
(x, y) = (30, 1). Both species are read at t = 0, 2.1, ..., 18.9 (every 21st point of a 0.1
grid on [0, 20]) and each reading u becomes LogNormal(log clamp(u, 1e-10, 1e4), 0.1). The data
are the 10 prey readings followed by the 10 predator readings. Trajectories whose solve fails
give NaN data, as in sbibm.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import LogNormal

from fmpe.ode.dopri import solve_per_row
from fmpe.tasks.priors import MaskedIndependent
from fmpe.tasks.shipped import ShippedFilesTask, sbibm_files

END_TIME = 20.0
OBSERVED_TIMES = 2.1 * torch.arange(10, dtype=torch.float64)
NOISE_SCALE = 0.1


def _lotka_volterra_field(u: Tensor, theta: Tensor) -> Tensor:
    """``u = (x, y): (b, 2)``, ``theta = (α, β, γ, δ): (b, 4)`` -> ``du/dt: (b, 2)``."""
    x, y = u[:, 0], u[:, 1]
    alpha, beta, gamma, delta = theta.unbind(dim=1)
    return torch.stack([alpha * x - beta * x * y, -gamma * y + delta * x * y], dim=1)


class LotkaVolterra(ShippedFilesTask):
    """Lotka–Volterra: ``theta = (α, β, γ, δ)``, ``x``: 20 noisy population readings."""

    name = "lotka_volterra"
    theta_dim = 4
    x_shape = (20,)
    num_observations = 10

    def __init__(self) -> None:
        loc = torch.tensor([-0.125, -3.0, -0.125, -3.0])
        self.prior = MaskedIndependent(LogNormal(loc, torch.full((4,), 0.5)), 1)
        self.files = sbibm_files("lotka_volterra")

    def populations(self, theta: Tensor) -> Tensor:
        """Noise-free readings: ``theta: (n, 4)`` -> ``(n, 20)`` float64, prey then predators."""
        u0 = torch.tensor([30.0, 1.0], dtype=torch.float64)
        # Solving on to t = 20 keeps sbibm's rule that a solve failing after t = 18.9 is NaN.
        times = torch.cat([OBSERVED_TIMES, torch.tensor([END_TIME], dtype=torch.float64)])
        params = theta.double()
        u = solve_per_row(
            lambda t, u, rows: _lotka_volterra_field(u, params[rows]),
            u0.expand(len(params), -1),
            times,
            rtol=1e-8,
            atol=1e-8,
        )
        return u[:, :-1].transpose(1, 2).reshape(len(theta), -1)

    def _simulate(self, theta: Tensor) -> Tensor:
        # sbibm rounds the solution to float32 before taking the log.
        u = self.populations(theta).float()
        valid = torch.isfinite(u).all(dim=1, keepdim=True)
        loc = torch.where(valid, u.clamp(1e-10, 1e4).log(), 0.0)
        return torch.where(valid, LogNormal(loc, NOISE_SCALE).sample(), torch.nan)
