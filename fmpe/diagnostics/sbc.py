"""Simulation-based calibration (Talts et al. 2018): for θ* drawn from the prior and x from the
simulator, the rank of each coordinate of θ* among posterior samples is uniform when the
posterior is calibrated."""

import numpy as np
import torch
from torch import Tensor

from fmpe.checks import as_count
from fmpe.diagnostics.batching import (
    BatchedPosterior,
    check_pairs,
    draw_samples,
    observation_chunks,
)
from fmpe.diagnostics.uniformity import credible_levels, diagnostic_generator, ks_uniform
from fmpe.metrics import c2st


def run_sbc(
    thetas: Tensor | np.ndarray,
    xs: Tensor | np.ndarray,
    posterior: BatchedPosterior,
    num_posterior_samples: int = 1000,
    *,
    chunk_size: int = 100,
    show_progress: bool = True,
) -> Tensor:
    """Ranks of the true parameters among posterior samples, per marginal.

    Args:
        thetas: (N, d) true parameters, drawn from the prior.
        xs: (N, *x_shape) an observation simulated from each.
        num_posterior_samples: L, samples drawn from q(θ | x_i) per observation.
        chunk_size: observations per batched call of `posterior.sample`.

    Returns:
        ranks: (N, d) int64, how many of the L samples lie below θ*_i in each coordinate.
    """
    thetas, xs = check_pairs(thetas, xs)
    as_count(num_posterior_samples, "num_posterior_samples", minimum=1)
    ranks = []
    for rows in observation_chunks(len(thetas), chunk_size, show_progress, "SBC"):
        samples = draw_samples(posterior, num_posterior_samples, xs[rows], thetas.shape[1])
        ranks.append(sbc_ranks(samples, thetas[rows]))
    return torch.cat(ranks)


def sbc_ranks(samples: Tensor, thetas: Tensor) -> Tensor:
    """How many of the samples (n, b, d) lie below the true parameters thetas (b, d), per
    coordinate: (b, d) int64, on the CPU."""
    return (samples < thetas.to(samples)).sum(0).cpu()


def check_sbc(ranks: Tensor, num_posterior_samples: int, *, seed: int = 0) -> dict[str, Tensor]:
    """Uniformity checks of SBC ranks, per marginal.

    The ranks are first made continuous by `credible_levels` (seeded by `seed`).

    Args:
        ranks: (N, d) from `run_sbc`.
        num_posterior_samples: the L that `run_sbc` used.

    Returns:
        ks_pvals: (d,) p-values of a Kolmogorov–Smirnov test against Uniform(0, 1); small
            values mean miscalibration.
        c2st_ranks: (d,) C2ST accuracy (`fmpe.metrics.c2st`) between the levels and as many
            uniform draws; 0.5 for calibrated ranks, towards 1 for miscalibrated ones.
    """
    if torch.as_tensor(ranks).dim() != 2:
        raise ValueError(f"ranks must have shape (N, d), got {tuple(torch.as_tensor(ranks).shape)}")
    generator = diagnostic_generator(seed, "sbc")
    levels = credible_levels(ranks, num_posterior_samples, generator).float()
    uniform = torch.rand(levels.shape, generator=generator)
    _, pvalues = ks_uniform(levels)
    # One-dimensional inputs train too small a classifier to gain from a GPU.
    c2st_ranks = [
        c2st(uniform[:, [j]], levels[:, [j]], seed=seed, device="cpu")
        for j in range(levels.shape[1])
    ]
    return {
        "ks_pvals": torch.as_tensor(pvalues, dtype=torch.float64),
        "c2st_ranks": torch.tensor(c2st_ranks, dtype=torch.float64),
    }
