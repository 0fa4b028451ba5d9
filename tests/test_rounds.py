"""Truncated sequential rounds: the proposal stays in the posterior's region, and two rounds
give the closed-form posterior of the linear-Gaussian model at the observation."""

import math

import pytest
import torch

from fmpe import FMPE
from fmpe.posteriors.truncation import TruncatedPrior, hpd_threshold


class ClosedForm:
    """conftest.LinearGaussian's posterior with a posterior's sample_and_log_prob/log_prob."""

    device = torch.device("cpu")

    def __init__(self, problem):
        self.problem = problem

    def sample_and_log_prob(self, n, x):
        distribution = self.problem.posterior(x)
        theta = distribution.sample((n,))
        return theta, distribution.log_prob(theta)

    def log_prob(self, theta, x):
        return self.problem.posterior(x).log_prob(theta)


def test_the_truncated_prior_keeps_the_region_of_1_minus_epsilon(gaussian):
    torch.manual_seed(0)
    x_obs = torch.tensor([0.5, -0.3])
    posterior = ClosedForm(gaussian)
    threshold = hpd_threshold(posterior, x_obs, epsilon=0.01, num_samples=20_000)
    # For a Gaussian, log q ≥ τ is the ellipsoid of mass 0.99: χ²₂ quantile 9.21.
    exact = gaussian.posterior(x_obs).log_prob(gaussian.posterior(x_obs).mean) - 9.21 / 2
    assert threshold == pytest.approx(exact.item(), abs=0.05)
    proposal = TruncatedPrior(gaussian.prior, posterior, x_obs, threshold, batch_size=5000)
    theta = proposal.sample((3000,))
    assert theta.shape == (3000, 2) and proposal.inside(theta).all()
    assert 0.1 < proposal.acceptance_rate < 0.9  # measured: 0.51


def test_an_impossible_region_names_the_acceptance_rate(gaussian):
    proposal = TruncatedPrior(
        gaussian.prior, ClosedForm(gaussian), torch.zeros(2), 100.0, batch_size=100, max_draws=300
    )
    with pytest.raises(RuntimeError, match="raise epsilon"):
        proposal.sample((10,))


def test_two_rounds_give_the_closed_form_posterior_at_the_observation(gaussian, monkeypatch):
    """The mean within 0.3 posterior standard deviations, each standard deviation within 20%;
    the second round's θ are drawn closer to the posterior than the prior's; the training
    seconds are both rounds'."""
    torch.manual_seed(0)
    x_obs = torch.tensor([1.5, -1.0])
    estimator = FMPE(
        gaussian.simulator, gaussian.prior, network_options={"hidden_widths": (64, 64)}
    )
    round_seconds = []
    train = FMPE.train

    def recorded_train(self, *args, **kwargs):
        trained = train(self, *args, **kwargs)
        round_seconds.append(trained.training_record.seconds)
        return trained

    monkeypatch.setattr(FMPE, "train", recorded_train)
    posterior = estimator.train_rounds(
        2, 3000, x_obs, max_epochs=40, batch_size=128, learning_rate=2e-3, show_progress=False
    )
    assert posterior.metadata["rounds"] == 2 and len(estimator.theta) == 6000
    assert len(round_seconds) == 2
    assert posterior.training_record.seconds == pytest.approx(sum(round_seconds))
    assert 0 < posterior.metadata["acceptance_rates"][0] < 1
    first, second = estimator.theta[:3000], estimator.theta[3000:]
    assert (second.std(0) < 0.8 * first.std(0)).all()
    truth = gaussian.posterior(x_obs)
    samples = posterior.sample(4000, x_obs)
    std = truth.covariance_matrix.diagonal().sqrt()
    assert ((samples.mean(0) - truth.mean).abs() / std).max() < 0.3
    assert ((samples.std(0) / std).log().abs() < math.log(1.2)).all()
