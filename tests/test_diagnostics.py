"""Tests of fmpe.diagnostics on a conjugate linear-Gaussian problem with an exact posterior.

The exact posterior must pass every calibration check; the same posterior widened or narrowed
by 2x about its mean (with the matching density) must fail them, in the right direction.
"""

import numpy as np
import pytest
import torch
from scipy import stats

from fmpe.diagnostics import (
    calibrate,
    check_coverage,
    check_sbc,
    check_tarp,
    coverage_curve,
    credible_levels,
    expected_coverage,
    hpd_ranks,
    ks_uniform,
    negative_log_prob,
    run_sbc,
    run_tarp,
    tarp_ranks,
)
from fmpe.diagnostics.uniformity import binomial_band, diagnostic_generator, ks_band_halfwidth

NUM_PAIRS = 600
NUM_SAMPLES = 500


class LinearGaussian:
    """θ ~ N(0, Σp) in R³, x = Aθ + ε with ε ~ N(0, Σl) in R⁴: q(θ | x) = N(Kx, C)."""

    def __init__(self):
        self.prior_cov = torch.tensor(
            [[1.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 2.0]], dtype=torch.float64
        )
        self.matrix = torch.tensor(
            [[1.0, 0.0, 0.5], [0.0, 1.0, 0.0], [0.3, -0.2, 1.0], [1.0, 1.0, 0.0]],
            dtype=torch.float64,
        )
        self.noise_cov = torch.diag(torch.tensor([0.3, 0.2, 0.5, 0.4], dtype=torch.float64))
        noise_precision = torch.linalg.inv(self.noise_cov)
        precision = torch.linalg.inv(self.prior_cov) + self.matrix.T @ noise_precision @ self.matrix
        self.posterior_cov = torch.linalg.inv(precision)
        self.gain = self.posterior_cov @ self.matrix.T @ noise_precision

    def simulate(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n pairs from the joint: thetas (n, 3), xs (n, 4)."""
        g = torch.Generator().manual_seed(seed)
        thetas = torch.randn(n, 3, generator=g, dtype=torch.float64)
        thetas = thetas @ torch.linalg.cholesky(self.prior_cov).T
        noise = torch.randn(n, 4, generator=g, dtype=torch.float64)
        return thetas, thetas @ self.matrix.T + noise @ torch.linalg.cholesky(self.noise_cov).T

    def posterior_mean(self, xs: torch.Tensor) -> torch.Tensor:
        return xs @ self.gain.T


class GaussianPosterior:
    """N(Kx, scale² C): the exact posterior for scale 1, miscalibrated otherwise.

    It has fmpe's batched posterior interface and records how many observations each call got.
    """

    def __init__(self, problem: LinearGaussian, scale: float = 1.0, seed: int = 0):
        self.problem = problem
        self.scale_tril = scale * torch.linalg.cholesky(problem.posterior_cov)
        self.generator = torch.Generator().manual_seed(seed)
        self.batch_sizes = []

    def sample(self, n: int, x: torch.Tensor, *, show_progress: bool = False) -> torch.Tensor:
        self.batch_sizes.append(len(x))
        noise = torch.randn(n, len(x), 3, generator=self.generator, dtype=torch.float64)
        return self.problem.posterior_mean(x) + noise @ self.scale_tril.T

    def log_prob(
        self, theta: torch.Tensor, x: torch.Tensor, *, show_progress: bool = False
    ) -> torch.Tensor:
        mean = self.problem.posterior_mean(x)
        return torch.distributions.MultivariateNormal(mean, scale_tril=self.scale_tril).log_prob(
            theta
        )

    def sample_and_log_prob(
        self, n: int, x: torch.Tensor, *, show_progress: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        theta = self.sample(n, x)
        return theta, self.log_prob(theta, x)


class ReplayPosterior:
    """Returns fixed samples (n, N, d); an observation x is its column index as a float (1,)."""

    def __init__(self, samples: torch.Tensor):
        self.samples = samples

    def sample(self, n: int, x: torch.Tensor, *, show_progress: bool = False) -> torch.Tensor:
        return self.samples[:n, x[:, 0].long()]


@pytest.fixture(scope="module")
def problem() -> LinearGaussian:
    return LinearGaussian()


@pytest.fixture(scope="module")
def pairs(problem) -> tuple[torch.Tensor, torch.Tensor]:
    return problem.simulate(NUM_PAIRS, seed=1)


# Scale of the posterior's spread, and whether it is calibrated.
SCALES = {"exact": 1.0, "too-wide": 2.0, "too-narrow": 0.5}


def _run(function, problem, pairs, scale, **kwargs):
    thetas, xs = pairs
    posterior = GaussianPosterior(problem, SCALES[scale])
    return function(thetas, xs, posterior, NUM_SAMPLES, show_progress=False, **kwargs)


# ----- SBC ---------------------------------------------------------------------------------


def test_sbc_ranks_follow_the_exact_marginal_cdf(problem, pairs):
    thetas, xs = pairs
    ranks = run_sbc(thetas, xs, GaussianPosterior(problem), NUM_SAMPLES, show_progress=False)
    assert ranks.shape == (NUM_PAIRS, 3) and ranks.dtype == torch.int64
    std = problem.posterior_cov.diagonal().sqrt()
    cdf = stats.norm.cdf(((thetas - problem.posterior_mean(xs)) / std).numpy())
    binomial_std = np.sqrt(cdf * (1 - cdf) / NUM_SAMPLES)
    assert np.all(np.abs(ranks.numpy() / NUM_SAMPLES - cdf) <= 5 * binomial_std + 2 / NUM_SAMPLES)


@pytest.mark.parametrize("scale", SCALES)
def test_check_sbc_passes_only_the_exact_posterior(problem, pairs, scale):
    ranks = _run(run_sbc, problem, pairs, scale)
    result = check_sbc(ranks, NUM_SAMPLES)
    assert result["ks_pvals"].shape == (3,) and result["c2st_ranks"].shape == (3,)
    if scale == "exact":
        assert (result["ks_pvals"] > 1e-3).all()
        assert (result["c2st_ranks"] < 0.57).all()
    else:
        assert (result["ks_pvals"] < 1e-6).all()
        assert (result["c2st_ranks"] > 0.6).all()


def test_run_sbc_calls_the_posterior_once_per_chunk(problem, pairs):
    thetas, xs = pairs
    posterior = GaussianPosterior(problem)
    ranks = run_sbc(thetas[:25], xs[:25], posterior, 10, chunk_size=10, show_progress=False)
    assert posterior.batch_sizes == [10, 10, 5]
    assert ranks.shape == (25, 3)


def test_sbc_ranks_count_samples_below_the_truth():
    samples = torch.randn(50, 7, 2, generator=torch.Generator().manual_seed(3))
    thetas = torch.randn(7, 2, generator=torch.Generator().manual_seed(4))
    xs = torch.arange(7.0)[:, None]
    ranks = run_sbc(thetas, xs, ReplayPosterior(samples), 50, chunk_size=3, show_progress=False)
    expected = (samples.numpy() < thetas.numpy()[None]).sum(0)
    np.testing.assert_array_equal(ranks.numpy(), expected)


# ----- HPD coverage ------------------------------------------------------------------------


def test_hpd_ranks_follow_the_chi_square_cdf_of_the_mahalanobis_distance(problem, pairs):
    # Under N(μ, C) the mass denser than θ* is P(χ²_3 < (θ* − μ)ᵀ C⁻¹ (θ* − μ)).
    thetas, xs = pairs
    ranks = hpd_ranks(thetas, xs, GaussianPosterior(problem), NUM_SAMPLES, show_progress=False)
    assert ranks.shape == (NUM_PAIRS,) and ranks.dtype == torch.int64
    residual = thetas - problem.posterior_mean(xs)
    mahalanobis = (residual @ torch.linalg.inv(problem.posterior_cov) * residual).sum(-1)
    mass = stats.chi2.cdf(mahalanobis.numpy(), df=3)
    binomial_std = np.sqrt(mass * (1 - mass) / NUM_SAMPLES)
    assert np.all(np.abs(ranks.numpy() / NUM_SAMPLES - mass) <= 5 * binomial_std + 2 / NUM_SAMPLES)


@pytest.mark.parametrize("scale", SCALES)
def test_check_coverage_passes_only_the_exact_posterior(problem, pairs, scale):
    result = check_coverage(_run(hpd_ranks, problem, pairs, scale), NUM_SAMPLES)
    if scale == "exact":
        assert result["ks_pvalue"] > 1e-3
        assert result["max_deviation"] < ks_band_halfwidth(NUM_PAIRS, 0.99)
        assert abs(result["mean_deviation"]) < 0.03
    else:
        assert result["ks_pvalue"] < 1e-6
        assert result["max_deviation"] > 0.3
        # Too wide: θ* sits in denser regions than it should, so coverage exceeds the level.
        assert np.sign(result["mean_deviation"]) == (1 if scale == "too-wide" else -1)
        assert abs(result["mean_deviation"]) > 0.2


@pytest.mark.parametrize("scale", SCALES)
def test_expected_coverage_curve_lies_on_the_diagonal_only_when_exact(problem, pairs, scale):
    levels, coverage = _run(expected_coverage, problem, pairs, scale, num_levels=21)
    np.testing.assert_allclose(levels, np.linspace(0, 1, 21))
    assert coverage[0] == 0 and coverage[-1] == 1 and np.all(np.diff(coverage) >= 0)
    interior = coverage[1:-1] - levels[1:-1]
    if scale == "exact":
        assert np.abs(interior).max() < ks_band_halfwidth(NUM_PAIRS, 0.99)
    elif scale == "too-wide":
        assert np.all(interior > 0)
    else:
        assert np.all(interior < 0)


def test_coverage_curve_is_the_ecdf_of_the_credible_levels():
    ranks = torch.tensor([0, 3, 5, 9, 10])
    levels, coverage = coverage_curve(ranks, 10, num_levels=11)
    # coverage_curve jitters the ranks with the "coverage" stream of its seed.
    credibility = credible_levels(ranks, 10, diagnostic_generator(0, "coverage")).numpy()
    expected = [(credibility <= level).mean() for level in levels]
    np.testing.assert_allclose(coverage, expected)


def test_negative_log_prob_matches_scipy(problem, pairs):
    thetas, xs = pairs
    values = negative_log_prob(
        thetas, xs, GaussianPosterior(problem), chunk_size=64, show_progress=False
    )
    means = problem.posterior_mean(xs).numpy()
    cov = problem.posterior_cov.numpy()
    expected = [-stats.multivariate_normal(m, cov).logpdf(t) for m, t in zip(means, thetas.numpy())]
    np.testing.assert_allclose(values.numpy(), expected, rtol=1e-10)


def test_a_true_parameter_outside_the_support_is_never_covered():
    class Truncated(GaussianPosterior):
        def log_prob(self, theta, x, *, show_progress=False):
            return torch.full(theta.shape[:2], -torch.inf, dtype=torch.float64)

        def sample_and_log_prob(self, n, x, *, show_progress=False):
            theta = self.sample(n, x)
            return theta, torch.zeros(theta.shape[:2], dtype=torch.float64)

    problem = LinearGaussian()
    thetas, xs = problem.simulate(4, seed=0)
    ranks = hpd_ranks(thetas, xs, Truncated(problem), 20, show_progress=False)
    assert ranks.tolist() == [20, 20, 20, 20]


# ----- TARP --------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", SCALES)
def test_check_tarp_passes_only_the_exact_posterior(problem, pairs, scale):
    ecp, alpha = _run(run_tarp, problem, pairs, scale, num_bins=50)
    assert ecp.shape == alpha.shape == (51,)
    assert ecp[0] == 0 and ecp[-1] == 1
    atc, pvalue = check_tarp(ecp, alpha, NUM_PAIRS)
    if scale == "exact":
        assert pvalue > 1e-3 and abs(atc) < 0.02
    else:
        assert pvalue < 1e-6
        # Too wide: the shares f concentrate around 1/2, so ECP rises above α past α = 1/2.
        assert atc > 0.05 if scale == "too-wide" else atc < -0.05


class PriorPosterior:
    """The posterior of observations that carry no information: the prior U[0, 1]^d itself."""

    def __init__(self, dim: int, seed: int = 1):
        self.dim = dim
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, n: int, x: torch.Tensor, *, show_progress: bool = False) -> torch.Tensor:
        return torch.rand(n, len(x), self.dim, generator=self.generator)


def test_tarp_references_are_not_the_true_parameters_of_the_same_seed():
    # `fmpe diagnose --seed s` draws θ* from the prior under torch.manual_seed(s) and runs
    # TARP with seed s. From a uniform prior, θ* were once the reference points themselves,
    # and a calibrated posterior failed with ATC 0.14.
    seed = 3
    torch.manual_seed(seed)
    thetas = torch.rand(500, 2)
    ecp, alpha = run_tarp(
        thetas, torch.zeros(500, 1), PriorPosterior(2), 200, seed=seed, show_progress=False
    )
    atc, pvalue = check_tarp(ecp, alpha, 500)
    assert pvalue > 1e-3 and abs(atc) < 0.03


def test_check_tarp_on_analytic_curves():
    alpha = np.linspace(0, 1, 1001)
    assert check_tarp(alpha, alpha, 100) == (0.0, 1.0)
    # ∫_{1/2}^{1} (α² − α) dα = −1/12, and max |α² − α| = 1/4.
    atc, pvalue = check_tarp(alpha**2, alpha, 100)
    assert atc == pytest.approx(-1 / 12, abs=1e-3)
    assert pvalue == pytest.approx(stats.kstwo.sf(0.25, 100))


def _tarp_package_coverage(samples, thetas, references, normalize, num_bins):
    """The tarp package's curve; it expects references in the unit cube when it normalizes."""
    tarp = pytest.importorskip("tarp")
    if normalize:
        low, high = thetas.min(0).values, thetas.max(0).values
        references = (references - low) / (high - low + 1e-10)
    # tarp modifies nothing here, but copies keep it from sharing memory with the tensors.
    return tarp.get_tarp_coverage(
        samples.numpy().copy(),
        thetas.numpy().copy(),
        references=references.numpy().copy(),
        norm=normalize,
        num_alpha_bins=num_bins,
    )


@pytest.fixture(scope="module")
def tarp_case(problem, pairs):
    """Samples of the too-narrow posterior, whose shares f spread over all of [0, 1]."""
    thetas, xs = pairs
    samples = GaussianPosterior(problem, 0.5).sample(NUM_SAMPLES, xs)
    references = 4 * torch.rand(thetas.shape, generator=torch.Generator().manual_seed(5)) - 2
    return samples, thetas, references.double()


@pytest.mark.parametrize("normalize", [False, True])
def test_tarp_ranks_agree_with_the_tarp_package(tarp_case, normalize):
    samples, thetas, references = tarp_case
    ecp, alpha = _tarp_package_coverage(samples, thetas, references, normalize, num_bins=60)
    if normalize:
        low, scale = thetas.min(0).values, thetas.max(0).values - thetas.min(0).values
        samples, thetas, references = ((t - low) / scale for t in (samples, thetas, references))
    shares = tarp_ranks(samples, thetas, references).numpy() / NUM_SAMPLES
    # tarp's ECP at each inner grid point is the share of f below it; shares within rounding
    # of a grid point may fall on either side.
    tie = 1e-9
    below = (shares[:, None] < alpha[None, :-1] - tie).mean(0)
    below_or_tied = (shares[:, None] < alpha[None, :-1] + tie).mean(0)
    assert np.all((below - 1e-12 <= ecp[:-1]) & (ecp[:-1] <= below_or_tied + 1e-12))
    assert ecp[-1] == pytest.approx(1.0)


def test_run_tarp_agrees_with_the_tarp_package_end_to_end(tarp_case):
    samples, thetas, references = tarp_case
    xs = torch.arange(float(NUM_PAIRS))[:, None]
    ecp, alpha = run_tarp(
        thetas, xs, ReplayPosterior(samples), NUM_SAMPLES, references,
        num_bins=50, chunk_size=37, show_progress=False,
    )  # fmt: skip
    package_ecp, package_alpha = _tarp_package_coverage(
        samples, thetas, references, normalize=True, num_bins=1000
    )
    # The curves differ only by the jitter of the shares (< 1/L) and tarp's grid spacing.
    interpolated = np.interp(alpha, package_alpha, package_ecp, left=0.0, right=1.0)
    assert np.abs(ecp - interpolated).max() < 0.01


def test_tarp_ranks_manhattan_counts_closer_samples():
    samples = torch.tensor([[[0.0, 0.0]], [[2.0, 0.0]], [[0.5, 0.4]]])  # (3, 1, 2)
    thetas, references = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    # Distances to the reference: 0, 2, 0.9 (L1) or 0, 2, 0.64 (L2); θ* is at 1.
    assert tarp_ranks(samples, thetas, references, "manhattan").tolist() == [2]
    assert tarp_ranks(samples, thetas, references).tolist() == [2]
    thetas = torch.tensor([[0.8, 0.0]])
    assert tarp_ranks(samples, thetas, references, "manhattan").tolist() == [1]
    assert tarp_ranks(samples, thetas, references).tolist() == [2]


# ----- shared rank statistics --------------------------------------------------------------


def test_credible_levels_stay_within_their_rank_bin_and_are_uniform():
    ranks = torch.randint(0, 21, (5000, 2), generator=torch.Generator().manual_seed(0))
    levels = credible_levels(ranks, 20)
    assert torch.all((ranks / 21 <= levels) & (levels < (ranks + 1) / 21))
    _, pvalues = ks_uniform(levels)
    assert np.all(pvalues > 1e-3)


def test_ks_band_is_exceeded_exactly_when_the_ks_test_rejects():
    rng = np.random.default_rng(0)
    half_width = ks_band_halfwidth(40, 0.95)
    for _ in range(200):
        levels = rng.beta(1.3, 1.0, size=40)
        statistic, pvalue = ks_uniform(levels)
        assert (statistic > half_width) == (pvalue < 0.05)


def test_binomial_band_holds_the_requested_probability():
    low, high = binomial_band(300, 0.1, 0.95)
    inside = stats.binom.cdf(high, 300, 0.1) - stats.binom.cdf(low - 1, 300, 0.1)
    assert inside >= 0.95
    assert stats.binom.cdf(low, 300, 0.1) >= 0.025 and stats.binom.sf(high - 1, 300, 0.1) >= 0.025


# ----- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda t, x, p: run_sbc(t[0], x, p), r"thetas must have shape \(n, n\)"),
        (lambda t, x, p: run_sbc(t, x[:-1], p), r"xs must have shape \(5, \*x_shape\)"),
        (lambda t, x, p: run_sbc(t, x.long(), p), "xs must have a floating-point dtype"),
        (lambda t, x, p: run_sbc(t, x, p, 0), "num_posterior_samples must be an integer >= 1"),
        (lambda t, x, p: hpd_ranks(t, x, p, chunk_size=0), "chunk_size must be an integer >= 1"),
        (lambda t, x, p: run_tarp(t, x, p, references=t[:2]), "references must have the shape"),
        (lambda t, x, p: run_tarp(t, x, p, metric="cosine"), "metric must be one of"),
        (lambda t, x, p: check_sbc(torch.tensor([[3]]), 2), r"ranks must lie in \[0"),
        (lambda t, x, p: check_sbc(torch.zeros(4, 2), 2), "ranks must have an integer dtype"),
        (lambda t, x, p: check_tarp(np.zeros(3), np.zeros(4), 5), "same shape"),
        (lambda t, x, p: check_coverage(torch.zeros(3, 2).long(), 5), r"shape \(N,\)"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(problem, call, message):
    thetas, xs = problem.simulate(5, seed=0)
    with pytest.raises(ValueError, match=message):
        call(thetas, xs, GaussianPosterior(problem))


def test_a_posterior_returning_the_wrong_shape_is_refused(problem):
    class Unbatched(GaussianPosterior):
        def sample(self, n, x, *, show_progress=False):
            return super().sample(n, x)[:, 0]

    thetas, xs = problem.simulate(5, seed=0)
    with pytest.raises(ValueError, match=r"posterior.sample\(n, x\) for a batch x must have shape"):
        run_sbc(thetas, xs, Unbatched(problem), 10, show_progress=False)


def test_nan_log_densities_are_refused(problem):
    class Broken(GaussianPosterior):
        def log_prob(self, theta, x, *, show_progress=False):
            return torch.full(theta.shape[:2], torch.nan, dtype=torch.float64)

    thetas, xs = problem.simulate(5, seed=0)
    with pytest.raises(ValueError, match="NaN log densities"):
        hpd_ranks(thetas, xs, Broken(problem), 10, show_progress=False)


# ----- all checks in one pass ----------------------------------------------------------------


class CountingPosterior:
    """Delegates to a posterior and records the name of each method called."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        self.calls.append(name)
        return getattr(self.inner, name)


def test_calibrate_draws_each_observation_once_and_agrees_with_the_separate_checks(problem, pairs):
    thetas, xs = pairs[0][:60], pairs[1][:60]
    counting = CountingPosterior(GaussianPosterior(problem, 2.0, seed=5))
    result = calibrate(counting, thetas, xs, 50, chunk_size=25, seed=3, show_progress=False)
    assert counting.calls == ["sample_and_log_prob", "log_prob"] * 3

    # Each separate check, on a fresh posterior of the same seed, sees the same samples.
    def fresh():
        return GaussianPosterior(problem, 2.0, seed=5)

    options = {"chunk_size": 25, "show_progress": False}
    assert torch.equal(result.sbc_ranks, run_sbc(thetas, xs, fresh(), 50, **options))
    assert torch.equal(result.hpd_ranks, hpd_ranks(thetas, xs, fresh(), 50, **options))
    ecp, alpha = run_tarp(thetas, xs, fresh(), 50, seed=3, **options)
    np.testing.assert_array_equal(result.tarp[0], ecp)
    np.testing.assert_array_equal(result.tarp[1], alpha)
    assert torch.equal(result.negative_log_prob, negative_log_prob(thetas, xs, fresh(), **options))
    assert result.numbers["coverage"] == check_coverage(result.hpd_ranks, 50, seed=3)
    assert result.numbers["coverage"]["mean_deviation"] > 0.1  # twice too wide


# ----- with fmpe's flow-matching posterior ---------------------------------------------------


def test_diagnostics_run_on_a_trained_fmpe_posterior(gaussian, gaussian_posterior, capsys):
    torch.manual_seed(0)
    thetas = gaussian.prior.sample((6,))
    xs = gaussian.simulator(thetas)
    ranks = run_sbc(thetas, xs, gaussian_posterior, 40, chunk_size=4)
    assert "SBC: 100%" in capsys.readouterr().err and ranks.shape == (6, 2)
    assert hpd_ranks(thetas, xs, gaussian_posterior, 40, show_progress=False).shape == (6,)
    ecp, _ = run_tarp(thetas, xs, gaussian_posterior, 40, num_bins=5, show_progress=False)
    assert ecp.shape == (6,)
    values = negative_log_prob(thetas, xs, gaussian_posterior, chunk_size=4, show_progress=False)
    one_by_one = [-gaussian_posterior.log_prob(t[None], x).item() for t, x in zip(thetas, xs)]
    np.testing.assert_allclose(values.numpy(), one_by_one, rtol=1e-4, atol=1e-4)
