"""NPE: neural posterior estimation with a conditional normalizing flow (zuko), the baseline."""

from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution

from fmpe.estimators.base import Estimator
from fmpe.posteriors import NPEPosterior
from fmpe.simulation import Simulator
from fmpe.training.modules import NPEModule
from fmpe.training.settings import TrainingSettings


class NPE(Estimator):
    """Neural posterior estimation: a conditional flow q(θ | x) trained by maximum likelihood
    on the simulations (single round, as in sbi's NPE and sbibm's NPE baseline).

    >>> posterior = NPE(simulator, prior).train(10_000)

    The default network is "nsf", zuko's neural spline flow with sbi's NPE sizes (5
    transforms, 10 bins, conditioners of 2 × 50); "maf" is the affine alternative. Training
    defaults follow sbi's NPE: Adam at 5e-4, batch 200, 10% held out, early stopping after
    20 epochs without improvement, gradient norm clipped at 5, no weight averaging.
    Arguments are those of `Estimator`.
    """

    default_network = "nsf"
    module_class = NPEModule
    posterior_class = NPEPosterior
    training_defaults = TrainingSettings(
        batch_size=200,
        learning_rate=5e-4,
        max_epochs=1000,
        schedule="constant",
        optimizer="adam",
        early_stopping_patience=20,
        validation_fraction=0.1,
        gradient_clip=5.0,
        ema_decay=None,
    )

    def __init__(
        self,
        simulator: Simulator | None = None,
        prior: Distribution | None = None,
        *,
        network: str | None = None,
        network_options: dict[str, Any] | None = None,
        embedding_net: nn.Module | str | dict | None = None,
        map_to_unbounded: bool = False,
    ):
        super().__init__(
            simulator,
            prior,
            network=network,
            network_options=network_options,
            embedding_net=embedding_net,
            map_to_unbounded=map_to_unbounded,
        )

    def _network_contract(self, x_shape: tuple[int, ...]) -> str:
        return (
            f"the network {self.network!r} must map x (n, *{x_shape}) to a distribution over "
            f"theta (n, {self.theta_dim}) whose log_prob gives (n,)"
        )

    def _probe(self, network: nn.Module, x_shape: tuple[int, ...]) -> tuple[tuple, tuple]:
        density = network(torch.zeros(2, *x_shape))
        return tuple(density.log_prob(torch.zeros(2, self.theta_dim)).shape), (2,)

    def _posterior(self, network: nn.Module, data) -> NPEPosterior:
        return self.posterior_class(
            network,
            data.theta_coordinates,
            data.x_standardizer,
            prior=self.prior,
        )
