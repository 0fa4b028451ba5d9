"""Importance sampling against closed forms: the linear-Gaussian model's evidence
p(x) = N(x; 0, Σp + Σl), and a box prior whose evidence is a product of normal CDFs."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy import stats
from torch.distributions import Independent, MultivariateNormal, Normal, Uniform

from fmpe import NPE
from fmpe.diagnostics import (
    FlowProposal,
    ImportanceResult,
    KernelDensityProposal,
    adapt_flow_proposal,
    defensive_importance_sample,
    importance_sample,
)
from fmpe.diagnostics.adaptive import tempering_exponent

X_OBS = torch.tensor([0.7, -0.4])
SHIFTED = MultivariateNormal(torch.tensor([0.8, -0.1]), 0.05 * torch.eye(2))
BROAD = MultivariateNormal(torch.zeros(2), 4 * torch.eye(2))


class AnalyticProposal:
    """A proposal with a known density, with the methods importance sampling uses."""

    def __init__(self, distribution, prior=None, nan_every: int | None = None):
        self.distribution = distribution
        self.prior = prior
        self.nan_every = nan_every

    def sample_and_log_prob(self, n, x, *, reject_outside_prior=True):
        theta = self.distribution.sample((n,))
        log_q = self.distribution.log_prob(theta)
        if self.nan_every is not None:
            log_q[:: self.nan_every] = math.nan
        return theta, log_q

    def log_prob(self, theta, x):
        return self.distribution.log_prob(theta)


def gaussian_log_likelihood(gaussian):
    def log_likelihood(theta, x):
        return MultivariateNormal(theta, gaussian.noise_cov).log_prob(x)

    return log_likelihood


def exact_log_evidence(gaussian, x) -> float:
    return float(
        MultivariateNormal(torch.zeros(2), gaussian.prior_cov + gaussian.noise_cov).log_prob(x)
    )


def sample_shifted_and_broad(gaussian, n, **options):
    """Defensive importance sampling from SHIFTED, BROAD and 10% prior."""
    proposals = [AnalyticProposal(SHIFTED, gaussian.prior), AnalyticProposal(BROAD)]
    log_likelihood = gaussian_log_likelihood(gaussian)
    return defensive_importance_sample(
        proposals, n, X_OBS, log_likelihood, prior_fraction=0.1, **options
    )


def mixture_log_weights(gaussian, theta, shares):
    """log π L − log q_mix written out, q_mix = a_1 SHIFTED + a_2 BROAD + a_3 π."""
    densities = [SHIFTED, BROAD, gaussian.prior]
    mixture = sum(a * q.log_prob(theta).double().exp() for a, q in zip(shares, densities))
    log_target = gaussian.prior.log_prob(theta).double()
    log_target += gaussian_log_likelihood(gaussian)(theta, X_OBS).double()
    return log_target - mixture.log()


def broad_proposal(gaussian):
    return AnalyticProposal(MultivariateNormal(torch.zeros(2), 4 * torch.eye(2)), gaussian.prior)


def test_the_exact_posterior_as_proposal_has_efficiency_one_and_the_exact_evidence(gaussian):
    torch.manual_seed(0)
    proposal = AnalyticProposal(gaussian.posterior(X_OBS), gaussian.prior)
    result = importance_sample(proposal, 5000, X_OBS, gaussian_log_likelihood(gaussian))
    assert result.sample_efficiency == pytest.approx(1.0, abs=1e-6)
    assert result.effective_sample_size == pytest.approx(5000, rel=1e-6)
    assert result.log_evidence == pytest.approx(exact_log_evidence(gaussian, X_OBS), abs=1e-4)
    assert result.log_evidence_error < 1e-3
    assert result.weights.sum().item() == pytest.approx(1.0)


def test_a_broad_proposal_gives_the_evidence_within_its_error(gaussian):
    torch.manual_seed(1)
    result = importance_sample(
        broad_proposal(gaussian), 20_000, X_OBS, gaussian_log_likelihood(gaussian), chunk_size=3000
    )
    assert result.num_samples == 20_000
    assert 0.01 < result.sample_efficiency < 0.5
    error = abs(result.log_evidence - exact_log_evidence(gaussian, X_OBS))
    assert error < 4 * result.log_evidence_error
    # The weighted samples are the posterior: its mean, within the Monte Carlo error.
    posterior = gaussian.posterior(X_OBS)
    mean = (result.weights[:, None] * result.theta.double()).sum(0)
    spread = posterior.covariance_matrix.diagonal().sqrt().double()
    assert (
        (mean - posterior.mean.double()).abs() < 5 * spread / result.effective_sample_size**0.5
    ).all()


def test_the_evidence_error_matches_the_spread_over_repeated_runs(gaussian):
    torch.manual_seed(2)
    proposal, log_likelihood = broad_proposal(gaussian), gaussian_log_likelihood(gaussian)
    runs = [importance_sample(proposal, 1000, X_OBS, log_likelihood) for _ in range(300)]
    estimates = torch.tensor([r.log_evidence for r in runs])
    reported = torch.tensor([r.log_evidence_error for r in runs]).mean()
    assert 0.8 < estimates.std() / reported < 1.25
    assert (
        abs(estimates.mean() - exact_log_evidence(gaussian, X_OBS)) < 3 * reported / 300**0.5 + 0.01
    )


def test_samples_outside_a_box_prior_get_weight_zero_and_the_evidence_is_exact():
    # θ ~ U([-2, 2]²), x | θ ~ N(θ, diag(σ²)): Z = Π_j [Φ((2 - x_j)/σ_j) - Φ((-2 - x_j)/σ_j)] / 16.
    sigma = torch.tensor([0.8, 0.5])
    x = torch.tensor([1.6, -1.2])
    prior = Independent(Uniform(torch.full((2,), -2.0), torch.full((2,), 2.0)), 1)

    def log_likelihood(theta, x):
        return Independent(Normal(theta, sigma), 1).log_prob(x)

    mass = stats.norm.cdf((2 - x.numpy()) / sigma.numpy()) - stats.norm.cdf(
        (-2 - x.numpy()) / sigma.numpy()
    )
    exact = math.log(mass.prod() / 16)
    torch.manual_seed(3)
    proposal = AnalyticProposal(Independent(Normal(x, torch.ones(2)), 1), prior)
    result = importance_sample(proposal, 40_000, x, log_likelihood)
    outside = (result.theta.abs() >= 2).any(-1)
    assert outside.float().mean() > 0.1
    assert torch.isinf(result.log_weights[outside]).all()
    assert torch.isfinite(result.log_weights[~outside]).all()
    assert abs(result.log_evidence - exact) < 4 * result.log_evidence_error


def test_the_defensive_mixture_weights_by_the_mixture_density_and_gets_the_evidence(gaussian):
    torch.manual_seed(4)
    result = sample_shifted_and_broad(gaussian, 20_000, chunk_size=4000)
    assert result.num_samples == 20_000
    error = abs(result.log_evidence - exact_log_evidence(gaussian, X_OBS))
    assert error < 4 * result.log_evidence_error
    # The weights, recomputed with the mixture's density written out: shares 0.45, 0.45, 0.1.
    expected = mixture_log_weights(gaussian, result.theta, [0.45, 0.45, 0.1])
    assert torch.allclose(result.log_weights, expected, atol=1e-4)


def test_unequal_shares_draw_and_weigh_by_those_shares(gaussian):
    torch.manual_seed(6)
    result = sample_shifted_and_broad(gaussian, 1000, shares=[3, 1])
    theta = result.theta
    # 675 from the first proposal, 225 from the second, 100 from the prior, in that order.
    assert (theta[:675].std(0) < 0.35).all() and (theta[675:900].std(0) > 1.5).all()
    expected = mixture_log_weights(gaussian, theta, [0.675, 0.225, 0.1])
    assert torch.allclose(result.log_weights, expected, atol=1e-4)
    with pytest.raises(ValueError, match="shares must be 2 positive numbers"):
        sample_shifted_and_broad(gaussian, 10, shares=[1, 0])


def test_the_kernel_density_proposal_is_scipys_weighted_gaussian_kde():
    generator = torch.Generator().manual_seed(7)
    theta = torch.randn(300, 3, generator=generator, dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.5, 0.0], [0.0, 2.0, 0.3], [0.0, 0.0, 0.5]], dtype=torch.float64
    )
    weights = torch.rand(300, generator=generator, dtype=torch.float64)
    weights[:20] = 0
    proposal = KernelDensityProposal(theta, weights)
    # scipy's logpdf is NaN with zero weights: it gets the samples that carry weight.
    scipy_kde = stats.gaussian_kde(theta[20:].T.numpy(), weights=weights[20:].numpy())
    points = 2 * torch.randn(50, 3, generator=generator, dtype=torch.float64)
    expected = torch.from_numpy(scipy_kde.logpdf(points.T.numpy()))
    assert torch.allclose(proposal.log_prob(points), expected, atol=1e-9)
    torch.manual_seed(8)
    samples, log_q = proposal.sample_and_log_prob(40_000)
    assert torch.allclose(log_q, torch.from_numpy(scipy_kde.logpdf(samples.T.numpy())))
    # Samples of the kernel mixture: the weighted mean, and the covariance plus the kernel's.
    mean = (weights[:, None] * theta).sum(0) / weights.sum()
    assert torch.allclose(samples.mean(0), mean, atol=0.05)
    covariance = torch.from_numpy(scipy_kde.covariance)
    spread = torch.from_numpy(np.cov(theta.T.numpy(), aweights=weights.numpy())) + covariance
    assert torch.allclose(samples.T.cov(), spread, rtol=0.05, atol=0.03)
    with pytest.raises(ValueError, match="reject_outside_prior=False"):
        proposal.sample_and_log_prob(10, reject_outside_prior=True)
    with pytest.raises(ValueError, match="non-negative"):
        KernelDensityProposal(theta, -weights)


def test_a_kernel_density_of_posterior_samples_gets_the_evidence(gaussian):
    torch.manual_seed(9)
    samples = gaussian.posterior(X_OBS).sample((2000,))
    proposal = KernelDensityProposal(samples, prior=gaussian.prior)
    result = defensive_importance_sample(
        [proposal], 20_000, X_OBS, gaussian_log_likelihood(gaussian)
    )
    assert result.sample_efficiency > 0.8
    error = abs(result.log_evidence - exact_log_evidence(gaussian, X_OBS))
    assert error < 4 * result.log_evidence_error


def test_a_nan_density_counts_as_weight_zero_with_a_warning(gaussian):
    proposal = AnalyticProposal(gaussian.posterior(X_OBS), gaussian.prior, nan_every=10)
    with pytest.warns(UserWarning, match="100 of 1000 importance weights are NaN"):
        result = importance_sample(proposal, 1000, X_OBS, gaussian_log_likelihood(gaussian))
    assert torch.isinf(result.log_weights[::10]).all()
    assert result.effective_sample_size == pytest.approx(900, rel=1e-4)


def test_resample_draws_by_weight_and_joined_concatenates():
    result = ImportanceResult(
        torch.tensor([[0.0], [1.0]]), torch.tensor([0.0, math.log(3.0)], dtype=torch.float64)
    )
    draws = result.resample(40_000, generator=torch.Generator().manual_seed(0))
    assert draws.mean().item() == pytest.approx(0.75, abs=0.01)
    assert result.effective_sample_size == pytest.approx(16 / 10)
    both = ImportanceResult.joined([result, result])
    assert both.num_samples == 4
    assert both.log_evidence == pytest.approx(result.log_evidence)
    with pytest.raises(ValueError, match="nothing to resample"):
        ImportanceResult(result.theta, torch.full((2,), -math.inf)).resample(3)


def test_bad_arguments_are_named(gaussian):
    proposal = broad_proposal(gaussian)
    log_likelihood = gaussian_log_likelihood(gaussian)
    with pytest.raises(ValueError, match="number of samples"):
        importance_sample(proposal, 0, X_OBS, log_likelihood)
    with pytest.raises(ValueError, match="needs the prior"):
        importance_sample(AnalyticProposal(proposal.distribution), 10, X_OBS, log_likelihood)
    with pytest.raises(ValueError, match="prior_fraction"):
        defensive_importance_sample([proposal], 10, X_OBS, log_likelihood, prior_fraction=1.0)
    with pytest.raises(ValueError, match="at least one posterior"):
        defensive_importance_sample([], 10, X_OBS, log_likelihood, gaussian.prior)


def test_posterior_importance_sample_corrects_a_trained_posterior(gaussian):
    torch.manual_seed(5)
    posterior = NPE(gaussian.simulator, gaussian.prior).train(
        2000, max_epochs=15, batch_size=128, learning_rate=3e-3, show_progress=False
    )
    log_likelihood = gaussian_log_likelihood(gaussian)
    torch.manual_seed(6)
    result = posterior.importance_sample(10_000, X_OBS, log_likelihood, chunk_size=4000)
    torch.manual_seed(6)
    same = importance_sample(posterior, 10_000, X_OBS, log_likelihood, chunk_size=4000)
    assert torch.equal(result.log_weights, same.log_weights)
    assert 0.2 < result.sample_efficiency < 1.0
    error = abs(result.log_evidence - exact_log_evidence(gaussian, X_OBS))
    assert error < 4 * result.log_evidence_error + 1e-3


def test_adaptive_importance_sampling_refines_a_broad_proposal_to_the_posterior(gaussian):
    torch.manual_seed(10)
    log_likelihood = gaussian_log_likelihood(gaussian)
    flow, history = adapt_flow_proposal(
        broad_proposal(gaussian),
        X_OBS,
        log_likelihood,
        samples=2000,
        rounds=3,
        fit_steps=200,
        transforms=2,
        hidden_features=(32, 32),
    )
    assert history[0].result.sample_efficiency < 0.15  # the broad start
    assert 0 < history[0].exponent < 1  # tempered, since the start is far off
    result = importance_sample(flow, 20_000, X_OBS, log_likelihood, gaussian.prior)
    assert result.sample_efficiency > 0.6
    error = abs(result.log_evidence - exact_log_evidence(gaussian, X_OBS))
    assert error < max(4 * result.log_evidence_error, 0.01)
    with pytest.raises(ValueError, match="rounds"):
        adapt_flow_proposal(broad_proposal(gaussian), X_OBS, log_likelihood, rounds=1)
    with pytest.raises(ValueError, match="start_share"):
        adapt_flow_proposal(broad_proposal(gaussian), X_OBS, log_likelihood, start_share=1.0)


def test_a_flow_proposal_on_a_box_is_normalized_inside_it():
    prior = Independent(Uniform(torch.tensor([0.0, -2.0]), torch.tensor([1.0, 2.0])), 1)
    torch.manual_seed(11)
    theta = prior.sample((4000,))
    weights = torch.exp(-((theta[:, 0] - 0.9) ** 2) / 0.02 - theta[:, 1] ** 2 / 2)
    flow = FlowProposal.for_samples(prior, theta, weights, transforms=2, hidden_features=(32,))
    flow.fit(theta, weights, steps=200)
    samples, log_q = flow.sample_and_log_prob(5000)
    assert prior.support.check(samples).all()
    assert torch.allclose(log_q, flow.log_prob(samples), atol=1e-3)  # float32 at the bounds
    # ∫ q = E_π[q / π] over the box, with q's mass near θ_0 = 0.9 as fitted.
    ratio = (flow.log_prob(theta) - prior.log_prob(theta).double()).exp()
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.1)
    assert samples[:, 0].mean().item() == pytest.approx(0.9, abs=0.05)
    assert flow.log_prob(torch.tensor([[1.5, 0.0]])).item() == -math.inf


def test_a_saved_flow_proposal_loads_with_the_same_density_and_samples(tmp_path):
    prior = Independent(Uniform(torch.tensor([0.0, -2.0]), torch.tensor([1.0, 2.0])), 1)
    torch.manual_seed(12)
    theta = prior.sample((2000,))
    flow = FlowProposal.for_samples(
        prior, theta, torch.ones(2000), transforms=3, hidden_features=(16, 16)
    )
    flow.fit(theta, torch.ones(2000), steps=20)
    flow.save(tmp_path / "flow.safetensors", {"seconds": "12.5"})
    torch.manual_seed(13)  # another initialization, and another random order of the features
    loaded, metadata = FlowProposal.load(tmp_path / "flow.safetensors", prior)
    assert metadata == {"seconds": "12.5"} and loaded.size == flow.size
    assert torch.equal(loaded.log_prob(theta), flow.log_prob(theta))
    torch.manual_seed(14)
    samples = flow.sample_and_log_prob(100)
    torch.manual_seed(14)
    assert all(map(torch.equal, loaded.sample_and_log_prob(100), samples))
    save_file({"theta": theta}, str(tmp_path / "samples.safetensors"))
    with pytest.raises(ValueError, match="holds no FlowProposal"):
        FlowProposal.load(tmp_path / "samples.safetensors", prior)


def test_the_tempering_exponent_keeps_the_asked_efficiency():
    log_weights = torch.linspace(0, -30, 1000, dtype=torch.float64)
    beta = tempering_exponent(log_weights, 0.3)
    efficiency = lambda b: float(1 / torch.softmax(b * log_weights, 0).square().sum()) / 1000  # noqa: E731
    assert efficiency(beta) >= 0.3 > efficiency(beta + 1e-3)
    assert tempering_exponent(torch.zeros(10, dtype=torch.float64), 0.9) == 1.0
