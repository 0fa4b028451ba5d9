"""Composing a one-trial posterior into the posterior given n iid trials: the maths against
closed forms, and a trained posterior against the analytic posterior for n = 1, 5 and 20."""

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Uniform

from fmpe import FMPE
from fmpe.ode import SolverSettings, solve
from fmpe.posteriors import IID_METHODS
from fmpe.posteriors.composition import (
    CompositionWeights,
    GaussianMoments,
    at_least,
    compose_velocities,
    gaussian_velocity,
)

SIGMA_MIN = 1e-4


def _gaussian(d: int, scale: float, generator: torch.Generator) -> GaussianMoments:
    a = torch.randn(d, d, generator=generator, dtype=torch.float64)
    covariance = scale * (a @ a.T / d + 0.3 * torch.eye(d, dtype=torch.float64))
    return GaussianMoments(torch.randn(d, generator=generator, dtype=torch.float64), covariance)


def test_the_gaussian_velocity_carries_the_standard_normal_to_its_gaussian():
    generator = torch.Generator().manual_seed(0)
    target = _gaussian(3, 2.0, generator)
    z0 = torch.randn(200_000, 3, generator=generator, dtype=torch.float64)

    def field(t, z, rows):
        return gaussian_velocity(t.expand(len(z)), z, target, SIGMA_MIN)

    z1 = solve(field, z0, 0.0, 1.0, SolverSettings(method="rk4", steps=50)).theta
    assert torch.allclose(z1.mean(0), target.mean, atol=0.02)
    assert torch.allclose(torch.cov(z1.T), target.covariance, atol=0.03)


@pytest.mark.parametrize("n", [1, 5, 20])
def test_composed_velocities_of_gaussians_are_the_velocity_of_their_product(n):
    """p(θ)^(1-n) ∏ N(μ_j, Σ_j) is Gaussian with precision Σ P_j - (n-1) P_λ: at every t, the
    composition of the exact velocities is its exact velocity."""
    generator = torch.Generator().manual_seed(n)
    prior = _gaussian(3, 3.0, generator)
    trials = [_gaussian(3, 0.3, generator) for _ in range(n)]
    precisions = torch.stack([g.precision for g in trials])
    product_precision = precisions.sum(0) + (1 - n) * prior.precision
    product_mean = torch.linalg.solve(
        product_precision,
        sum(g.precision @ g.mean for g in trials) + (1 - n) * prior.precision @ prior.mean,
    )
    product = GaussianMoments(product_mean, torch.linalg.inv(product_precision))
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 0.999, 1.0], dtype=torch.float64)
    z = torch.randn(len(t), 3, generator=generator, dtype=torch.float64)
    composed = compose_velocities(
        t,
        gaussian_velocity(t, z, prior, SIGMA_MIN),
        torch.stack([gaussian_velocity(t, z, g, SIGMA_MIN) for g in trials], 1),
        CompositionWeights.of(prior.precision, precisions),
        SIGMA_MIN,
    )
    assert torch.allclose(composed, gaussian_velocity(t, z, product, SIGMA_MIN), atol=1e-9)


def test_trials_wider_than_the_prior_are_raised_to_it_and_then_give_back_the_prior():
    """A trial's precision below the prior's in some direction is raised to the prior's there
    (and left alone where it is above); trials whose posterior is the prior compose to it."""
    generator = torch.Generator().manual_seed(0)
    prior = _gaussian(3, 1.0, generator)
    narrow = 4 * prior.precision
    wide = 0.5 * prior.precision
    raised = at_least(torch.stack([narrow, wide]), prior.precision)
    assert torch.allclose(raised[0], narrow, atol=1e-9)
    assert torch.allclose(raised[1], prior.precision, atol=1e-9)
    t = torch.tensor([0.0, 0.5, 0.99], dtype=torch.float64)
    z = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    velocity = gaussian_velocity(t, z, prior, SIGMA_MIN)
    weights = CompositionWeights.of(prior.precision, wide.expand(5, 3, 3))
    composed = compose_velocities(
        t, velocity, velocity[:, None].expand(3, 5, 3), weights, SIGMA_MIN
    )
    assert torch.allclose(composed, velocity, atol=1e-9)


PRIOR_VARIANCE = 4.0


@pytest.fixture(scope="module")
def one_trial_posterior():
    """θ ~ N(0, 4 I₂), x ~ N(θ, I₂): trained on one trial per θ."""
    prior = MultivariateNormal(torch.zeros(2), PRIOR_VARIANCE * torch.eye(2))
    torch.manual_seed(0)
    estimator = FMPE(
        lambda theta: theta + torch.randn_like(theta),
        prior,
        network_options={"hidden_widths": (64, 64)},
    )
    return estimator.train(
        8000, max_epochs=40, batch_size=128, learning_rate=2e-3, show_progress=False
    )


# (n, mean within this many posterior sd, each sd within this factor). A trial's posterior
# errs by a few hundredths of its sd; the composition adds n such errors while the posterior
# narrows by √n, so its bound widens with n. Measured on two draws of trials: mean off by at
# most 0.10 sd at n = 5 and 0.43 at 20; sd off by at most 4% at n = 5 and 17% at 20.
BOUNDS = [(1, 0.5, 1.2), (5, 0.5, 1.2), (20, 0.75, 1.3)]


@pytest.mark.parametrize("n, mean_bound, sd_factor", BOUNDS)
def test_auto_gauss_composes_one_trial_posteriors_into_the_posterior_of_n(
    one_trial_posterior, n, mean_bound, sd_factor
):
    torch.manual_seed(1)
    trials = torch.tensor([0.8, -1.5]) + torch.randn(n, 2)
    precision = n + 1 / PRIOR_VARIANCE
    mean, std = trials.sum(0) / precision, precision**-0.5
    samples = one_trial_posterior.sample_iid(2000, trials)
    assert ((samples.mean(0) - mean).abs() / std).max() < mean_bound
    assert ((samples.std(0) / std).log().abs() < math.log(sd_factor)).all()


def test_the_composed_posterior_does_not_depend_on_the_order_of_trials(one_trial_posterior):
    trials = torch.randn(6, 2)
    permuted_trials = trials[torch.randperm(6)]
    torch.manual_seed(3)
    samples = one_trial_posterior.sample_iid(500, trials)
    torch.manual_seed(3)
    permuted = one_trial_posterior.sample_iid(500, permuted_trials)
    assert torch.allclose(samples, permuted, atol=1e-3)  # the solver's tolerance


def test_the_iid_methods_are_registered_and_a_bad_one_is_named(one_trial_posterior):
    assert {"auto_gauss", "gauss"} <= set(IID_METHODS.names())
    assert one_trial_posterior.sample_iid(10, torch.zeros(3, 2), iid_method="gauss").shape == (
        10,
        2,
    )
    with pytest.raises(ValueError, match="unknown iid method 'fnpe'"):
        one_trial_posterior.sample_iid(10, torch.zeros(3, 2), iid_method="fnpe")
    with pytest.raises(ValueError, match=r"x \(a batch of observations\)"):
        one_trial_posterior.sample_iid(10, torch.zeros(3, 4))


def test_a_prior_passed_to_sample_iid_bounds_its_samples(one_trial_posterior):
    # Three trials near (1, 1) put a few percent of the composed posterior below 0 in each
    # coordinate; a prior passed in (a box standing in for a bounded prior) decides what is
    # kept, not the posterior's own Gaussian.
    box = Independent(Uniform(torch.zeros(2), 3 * torch.ones(2)), 1)
    trials = torch.ones(3, 2) + 0.3 * torch.randn(3, 2, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(5)
    unbounded = one_trial_posterior.sample_iid(2000, trials)
    torch.manual_seed(5)
    bounded = one_trial_posterior.sample_iid(2000, trials, prior=box)
    assert (unbounded < 0).any()
    assert ((bounded > 0) & (bounded < 3)).all()


def test_composition_needs_a_prior(one_trial_posterior):
    prior, one_trial_posterior.prior = one_trial_posterior.prior, None
    try:
        with pytest.raises(ValueError, match="needs the prior"):
            one_trial_posterior.sample_iid(10, torch.zeros(3, 2))
    finally:
        one_trial_posterior.prior = prior
