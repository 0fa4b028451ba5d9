"""FMPE: flow matching posterior estimation (Dax et al., NeurIPS 2023)."""

from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution

from fmpe.coupling import get_coupling
from fmpe.estimators.base import Estimator
from fmpe.ode import SolverSettings
from fmpe.posteriors import FlowMatchingPosterior
from fmpe.simulation import Simulator
from fmpe.training.modules import FlowMatchingModule


class FMPE(Estimator):
    """Flow matching posterior estimation: a velocity field v(t, θ_t, x) regressed onto the
    optimal-transport path from N(0, I) to the posterior; the posterior is the end of its ODE.

    >>> posterior = FMPE(simulator, prior).train(10_000)
    >>> samples = posterior.sample(1000, x_obs)

    Args:
        sigma_min: width of the optimal-transport path at t = 1.
        time_prior_exponent: α of the training time prior p(t) ∝ t^α.
        solver: default ODE settings of the returned posterior.
        coupling: how training pairs base draws with parameters: "independent" (the
            default), "ot" or "conditional_ot" (minibatch optimal transport), or a name
            given to `fmpe.register_coupling`; see `fmpe.coupling`.

    The others are those of `Estimator`; the default network is "residual"
    (`fmpe.networks.VelocityNetwork`). The defaults of the network, α, `map_to_unbounded`
    (off) and the batch and learning rate of `train` are the configuration that
    `fmpe sweep defaults --budget 10000` chose by validation loss over the ten sbibm tasks
    (tasks/defaults.toml, `[fmpe.selected.10000]`; docs/method.md); σ_min is the paper's.
    """

    default_network = "residual"
    module_class = FlowMatchingModule
    posterior_class = FlowMatchingPosterior

    def __init__(
        self,
        simulator: Simulator | None = None,
        prior: Distribution | None = None,
        *,
        network: str | None = None,
        network_options: dict[str, Any] | None = None,
        embedding_net: nn.Module | str | dict | None = None,
        sigma_min: float = 1e-4,
        time_prior_exponent: float = 0.0,
        map_to_unbounded: bool = False,
        solver: SolverSettings | None = None,
        coupling: str = "independent",
    ):
        super().__init__(
            simulator,
            prior,
            network=network,
            network_options=network_options,
            embedding_net=embedding_net,
            map_to_unbounded=map_to_unbounded,
        )
        if time_prior_exponent <= -1:
            raise ValueError(f"time_prior_exponent must be > -1, got {time_prior_exponent}")
        self.sigma_min = sigma_min
        self.time_prior_exponent = time_prior_exponent
        get_coupling(coupling)  # an unknown name fails here, not after simulating
        self.coupling = coupling
        self.solver = (
            SolverSettings(**solver) if isinstance(solver, dict) else solver or SolverSettings()
        )

    def _module_options(self) -> dict[str, Any]:
        return {
            "sigma_min": self.sigma_min,
            "time_prior_exponent": self.time_prior_exponent,
            "coupling": self.coupling,
        }

    def _network_contract(self, x_shape: tuple[int, ...]) -> str:
        return (
            f"the network {self.network!r} must map t (n,), theta (n, {self.theta_dim}) and "
            f"x (n, *{x_shape}) to a velocity (n, {self.theta_dim})"
        )

    def _probe(self, network: nn.Module, x_shape: tuple[int, ...]) -> tuple[tuple, tuple]:
        zeros = (torch.zeros(2), torch.zeros(2, self.theta_dim), torch.zeros(2, *x_shape))
        return tuple(network(*zeros).shape), (2, self.theta_dim)

    def _posterior(self, network: nn.Module, data) -> FlowMatchingPosterior:
        return self.posterior_class(
            network,
            data.theta_coordinates,
            data.x_standardizer,
            prior=self.prior,
            solver=self.solver,
        )
