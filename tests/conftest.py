"""Shared problems: a linear-Gaussian model whose posterior is known in closed form."""

import pytest
import torch
from torch.distributions import MultivariateNormal

# The test networks are tiny: a second intra-op thread only adds synchronisation, and on a
# busy 2-core machine OpenMP threads waiting for each other slow small ops down 100-fold.
# The cores are used by pytest-xdist instead: one test process per core (pyproject's addopts).
torch.set_num_threads(1)


class LinearGaussian:
    """θ ~ N(0, Σp), x | θ ~ N(θ, Σl): the posterior is Gaussian with known moments."""

    def __init__(self):
        self.prior_cov = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
        self.noise_cov = torch.tensor([[0.25, 0.0], [0.0, 0.16]])
        self.prior = MultivariateNormal(torch.zeros(2), self.prior_cov)
        self.noise = MultivariateNormal(torch.zeros(2), self.noise_cov)

    def simulator(self, theta: torch.Tensor) -> torch.Tensor:
        return theta + self.noise.sample((theta.shape[0],))

    def posterior(self, x: torch.Tensor) -> MultivariateNormal:
        precision = torch.linalg.inv(self.prior_cov) + torch.linalg.inv(self.noise_cov)
        cov = torch.linalg.inv(precision)
        mean = cov @ torch.linalg.inv(self.noise_cov) @ x
        return MultivariateNormal(mean, cov)


@pytest.fixture(scope="session")
def gaussian() -> LinearGaussian:
    return LinearGaussian()


@pytest.fixture(scope="session")
def gaussian_posterior(gaussian, tmp_path_factory):
    """A posterior trained once per test session on the linear-Gaussian problem."""
    from fmpe import FMPE

    torch.manual_seed(0)
    estimator = FMPE(
        gaussian.simulator,
        gaussian.prior,
        network_options={"hidden_widths": (64, 64, 64)},
        time_prior_exponent=1.0,
    )
    return estimator.train(
        16_000, max_epochs=80, batch_size=256, learning_rate=2e-3, show_progress=False
    )


@pytest.fixture(scope="session")
def train_gaussian_npe(gaussian):
    """Trains NPE with a given flow on the linear-Gaussian problem, on the same simulations
    whatever the flow."""
    from fmpe import NPE

    def train(network: str):
        torch.manual_seed(0)
        return NPE(gaussian.simulator, gaussian.prior, network=network).train(
            64_000,
            max_epochs=40,
            batch_size=256,
            learning_rate=1e-3,
            schedule="cosine",
            show_progress=False,
        )

    return train


@pytest.fixture(scope="session")
def gaussian_npe_posterior(train_gaussian_npe):
    """NPE's posterior on the same problem, trained once per test session.

    NPE needs more simulations than FMPE to meet the same bounds: at FMPE's 16,000 the
    default spline flow overfits (its training loss 0.05 nats below the optimum, a bulk
    log-density error of 0.10-0.14 over seeds) and the affine flow varies from 0.03 to 0.07.
    At 64,000 the affine flow ("maf") has the lower validation loss of the two
    (test_npe_flow_has_the_lower_validation_loss).
    """
    return train_gaussian_npe("maf")
