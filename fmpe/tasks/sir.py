"""sbibm's SIR epidemic task, with the ODE solved in torch instead of Julia.

Parameters (contact rate β, recovery rate γ); N = 1e6 people, one infected on day 0. The
noise-free number infected I(t) is read on days 0, 17, ..., 153 and each reading becomes
Binomial(1000, I/N). Trajectories whose solve fails give NaN data, as in sbibm.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Binomial, LogNormal

from fmpe.ode.dopri import solve_per_row
from fmpe.tasks.priors import MaskedIndependent
from fmpe.tasks.shipped import ShippedFilesTask, sbibm_files

POPULATION = 1e6
DAYS = 160.0
OBSERVED_DAYS = torch.arange(0.0, 154.0, 17.0)
TOTAL_COUNT = 1000


def _sir_field(u: Tensor, theta: Tensor) -> Tensor:
    """``u = (S, I, R): (b, 3)``, ``theta = (β, γ): (b, 2)`` -> ``du/dt: (b, 3)``."""
    s, i = u[:, 0], u[:, 1]
    beta, gamma = theta[:, 0], theta[:, 1]
    infection = beta * s * i / POPULATION
    recovery = gamma * i
    return torch.stack([-infection, infection - recovery, recovery], dim=1)


class SIR(ShippedFilesTask):
    """SIR: ``theta = (β, γ)``, ``x``: 10 binomial counts of infected people out of 1000."""

    name = "sir"
    theta_dim = 2
    x_shape = (10,)
    num_observations = 10

    def __init__(self) -> None:
        loc = torch.tensor([math.log(0.4), math.log(0.125)])
        self.prior = MaskedIndependent(LogNormal(loc, torch.tensor([0.5, 0.2])), 1)
        self.files = sbibm_files("sir")

    def infected(self, theta: Tensor) -> Tensor:
        """Noise-free I on the observed days: ``theta: (n, 2)`` -> ``(n, 10)`` float64."""
        u0 = torch.tensor([POPULATION - 1.0, 1.0, 0.0], dtype=torch.float64)
        # Solving on to day 160 keeps sbibm's rule that a solve failing after day 153 is NaN.
        times = torch.cat([OBSERVED_DAYS, torch.tensor([DAYS])]).double()
        params = theta.double()
        u = solve_per_row(
            lambda t, u, rows: _sir_field(u, params[rows]),
            u0.expand(len(params), -1),
            times,
            rtol=1e-8,
            atol=1e-8,
        )
        return u[:, :-1, 1]

    def _simulate(self, theta: Tensor) -> Tensor:
        # sbibm rounds the solution to float32 before forming the probabilities.
        probs = (self.infected(theta).float() / POPULATION).clamp(0.0, 1.0)
        valid = torch.isfinite(probs).all(dim=1, keepdim=True)
        counts = Binomial(TOTAL_COUNT, probs=torch.where(valid, probs, 0.0)).sample()
        return torch.where(valid, counts, torch.nan)
