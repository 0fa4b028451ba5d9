"""Expected coverage of highest-density regions, from the posterior's exact density.

θ* lies in the highest-density region of q(θ | x) of mass α exactly when less than a share α of
q's mass is denser than θ*. That share, estimated by the fraction of posterior samples whose log
density exceeds log q(θ* | x), is uniform over (θ*, x) drawn from the joint when q is the true
posterior; its ECDF is the expected coverage curve, on the diagonal for a calibrated posterior,
above it for an underconfident (too wide) one and below it for an overconfident one.
"""

import numpy as np
import torch
from torch import Tensor

from fmpe.checks import as_count
from fmpe.diagnostics.batching import (
    BatchedPosterior,
    check_pairs,
    draw_samples_and_log_prob,
    observation_chunks,
    true_log_prob,
)
from fmpe.diagnostics.uniformity import credible_levels, diagnostic_generator, ecdf, ks_uniform


def hpd_ranks(
    thetas: Tensor | np.ndarray,
    xs: Tensor | np.ndarray,
    posterior: BatchedPosterior,
    num_posterior_samples: int = 1000,
    *,
    chunk_size: int = 100,
    show_progress: bool = True,
) -> Tensor:
    """How many posterior samples are denser than the true parameter.

    One `sample_and_log_prob` and one `log_prob` call per chunk of observations.

    Args:
        thetas: (N, d) true parameters, drawn from the prior.
        xs: (N, *x_shape) an observation simulated from each.
        num_posterior_samples: L, samples drawn from q(θ | x_i) per observation.

    Returns:
        ranks: (N,) int64 in {0, …, L}; θ* outside q's support (log q = -inf) gets L.
    """
    thetas, xs = check_pairs(thetas, xs)
    as_count(num_posterior_samples, "num_posterior_samples", minimum=1)
    ranks = []
    for rows in observation_chunks(len(thetas), chunk_size, show_progress, "coverage"):
        x = xs[rows]
        _, log_prob = draw_samples_and_log_prob(
            posterior, num_posterior_samples, x, thetas.shape[1]
        )
        ranks.append(denser_than(log_prob, true_log_prob(posterior, thetas[rows], x)))
    return torch.cat(ranks)


def denser_than(log_prob: Tensor, reference: Tensor) -> Tensor:
    """How many samples, of log densities log_prob (n, b), are denser than the true parameter
    of their observation, of log density reference (b,): (b,) int64, on the CPU."""
    return (log_prob > reference.to(log_prob)).sum(0).cpu()


def coverage_curve(
    ranks: Tensor, num_posterior_samples: int, *, num_levels: int = 101, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The expected coverage of each credibility level.

    Args:
        ranks: (N,) from `hpd_ranks`, made continuous by `credible_levels` (seeded by `seed`).

    Returns:
        levels: (num_levels,) α evenly spaced over [0, 1].
        coverage: (num_levels,) share of observations whose θ* lies in the α-HPD region.
    """
    if not isinstance(num_levels, int) or num_levels < 2:
        raise ValueError(f"num_levels must be an int of at least 2, got {num_levels!r}")
    levels = np.linspace(0.0, 1.0, num_levels)
    credibility = _hpd_credibility(ranks, num_posterior_samples, seed)
    return levels, ecdf(credibility, levels)


def expected_coverage(
    thetas: Tensor | np.ndarray,
    xs: Tensor | np.ndarray,
    posterior: BatchedPosterior,
    num_posterior_samples: int = 1000,
    *,
    num_levels: int = 101,
    seed: int = 0,
    chunk_size: int = 100,
    show_progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """`coverage_curve` of `hpd_ranks`: levels (num_levels,) and coverage (num_levels,).

    To get both the curve and `check_coverage`, call `hpd_ranks` once and pass its ranks on.
    """
    ranks = hpd_ranks(
        thetas,
        xs,
        posterior,
        num_posterior_samples,
        chunk_size=chunk_size,
        show_progress=show_progress,
    )
    return coverage_curve(ranks, num_posterior_samples, num_levels=num_levels, seed=seed)


def check_coverage(ranks: Tensor, num_posterior_samples: int, *, seed: int = 0) -> dict[str, float]:
    """Summaries of the coverage curve of `hpd_ranks`' ranks (N,).

    Returns:
        max_deviation: the largest |coverage(α) − α|, the Kolmogorov–Smirnov statistic.
        mean_deviation: ∫ (coverage(α) − α) dα; > 0 underconfident, < 0 overconfident.
        ks_pvalue: p-value of the Kolmogorov–Smirnov test of uniform credibility.
    """
    credibility = _hpd_credibility(ranks, num_posterior_samples, seed)
    statistic, pvalue = ks_uniform(credibility)
    return {
        "max_deviation": float(statistic),
        "mean_deviation": float(0.5 - credibility.mean()),
        "ks_pvalue": float(pvalue),
    }


def negative_log_prob(
    thetas: Tensor | np.ndarray,
    xs: Tensor | np.ndarray,
    posterior: BatchedPosterior,
    *,
    chunk_size: int = 100,
    show_progress: bool = True,
) -> Tensor:
    """−log q(θ*_i | x_i) of each pair: thetas (N, d), xs (N, *x_shape) -> (N,)

    Its mean over pairs from the joint is, up to a constant, the expected KL divergence from
    the true posterior to q: lower is better.
    """
    thetas, xs = check_pairs(thetas, xs)
    values = []
    for rows in observation_chunks(len(thetas), chunk_size, show_progress, "log_prob"):
        values.append(-true_log_prob(posterior, thetas[rows], xs[rows]).cpu())
    return torch.cat(values)


def _hpd_credibility(ranks: Tensor, num_posterior_samples: int, seed: int) -> Tensor:
    """(N,) ranks -> (N,) continuous credibility levels of θ*."""
    if torch.as_tensor(ranks).dim() != 1:
        raise ValueError(f"ranks must have shape (N,), got {tuple(torch.as_tensor(ranks).shape)}")
    return credible_levels(ranks, num_posterior_samples, diagnostic_generator(seed, "coverage"))
