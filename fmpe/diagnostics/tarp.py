"""TARP, tests of accuracy with random points (Lemos et al. 2023, arXiv:2302.03026).

For each pair (θ*, x) and a random reference point θ_r, the ball around θ_r through θ* holds a
share f of q(θ | x)'s samples. When q is the true posterior, f is uniform, so the expected coverage
probability ECP(α) = P(f ≤ α) lies on the diagonal; the test needs only samples, and with
random references it is also sensitive to miscalibration of the joint, not only the marginals.

Two choices differ from the `tarp` package and from sbi, which both histogram the raw shares
over the range [min f, max f]: the shares are made continuous by `credible_levels` (so ECP is
exactly uniform-calibrated for any number of samples, with ECP(0) = 0 and ECP(1) = 1), and α
is a fixed grid over [0, 1], so curves of different posteriors share one grid.
"""

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from fmpe.checks import as_count
from fmpe.diagnostics.batching import (
    BatchedPosterior,
    check_pairs,
    draw_samples,
    observation_chunks,
)
from fmpe.diagnostics.uniformity import (
    check_levels,
    credible_levels,
    diagnostic_generator,
    ecdf,
)

METRICS = ("euclidean", "manhattan")


def tarp_ranks(
    samples: Tensor, thetas: Tensor, references: Tensor, metric: str = "euclidean"
) -> Tensor:
    """How many samples lie closer to each reference point than the true parameter does.

    Args:
        samples: (n, b, d) posterior samples of b observations.
        thetas: (b, d) their true parameters; references: (b, d) one reference point each.
        metric: "euclidean" or "manhattan".

    Returns:
        (b,) int64 in {0, …, n}.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if samples.dim() != 3 or thetas.shape != samples.shape[1:] or references.shape != thetas.shape:
        raise ValueError(
            "samples must have shape (n, b, d) and thetas and references (b, d); got "
            f"{tuple(samples.shape)}, {tuple(thetas.shape)} and {tuple(references.shape)}"
        )
    order = 2 if metric == "euclidean" else 1
    sample_distances = torch.linalg.vector_norm(samples - references, ord=order, dim=-1)
    true_distances = torch.linalg.vector_norm(thetas - references, ord=order, dim=-1)
    return (sample_distances < true_distances).sum(0)


@dataclass(frozen=True)
class TarpFrame:
    """Where TARP measures N pairs: a reference point per pair and the map of the bounding box
    of the true parameters onto the unit cube, with the generator that drew the references
    (it goes on to make the ranks continuous, so one seed fixes both).

    Attributes:
        references: (N, d) in θ's coordinates; offset, scale: (d,) distances are taken
            between (θ - offset) / scale.
    """

    references: Tensor
    offset: Tensor
    scale: Tensor
    generator: torch.Generator

    @classmethod
    def of(
        cls,
        thetas: Tensor,
        references: Tensor | np.ndarray | None = None,
        *,
        normalize: bool = True,
        seed: int = 0,
    ) -> "TarpFrame":
        """The frame of true parameters thetas (N, d); `references` None draws them uniformly
        in the bounding box of thetas (seeded by `seed`), as sbi does."""
        generator = diagnostic_generator(seed, "tarp")
        low, high = thetas.min(0).values, thetas.max(0).values
        if references is None:
            unit = torch.rand(thetas.shape, generator=generator, dtype=thetas.dtype)
            references = low + (high - low) * unit
        else:
            references = torch.as_tensor(references, dtype=thetas.dtype).cpu()
            if references.shape != thetas.shape:
                raise ValueError(
                    f"references must have the shape of thetas {tuple(thetas.shape)}, "
                    f"got {tuple(references.shape)}"
                )
        # A parameter that is constant over thetas keeps its scale rather than dividing by 0.
        scale = torch.where(high > low, high - low, 1.0) if normalize else torch.ones_like(low)
        return cls(references, low, scale, generator)

    def ranks(
        self, samples: Tensor, thetas: Tensor, rows: slice, metric: str = "euclidean"
    ) -> Tensor:
        """`tarp_ranks` (b,) of samples (n, b, d) of the pairs `rows`, whose true parameters
        are thetas (b, d), in the frame's coordinates; on the CPU."""
        to_samples = {"device": samples.device, "dtype": samples.dtype}
        offset, size = self.offset.to(**to_samples), self.scale.to(**to_samples)
        return tarp_ranks(
            (samples - offset) / size,
            (thetas.to(**to_samples) - offset) / size,
            (self.references[rows].to(**to_samples) - offset) / size,
            metric,
        ).cpu()

    def curve(
        self, ranks: Tensor, num_posterior_samples: int, num_bins: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """ECP (G,) and α (G,) of all N pairs' ranks (N,), G = num_bins + 1; num_bins None
        uses max(N // 10, 1), as sbi and `tarp` do."""
        num_bins = max(len(ranks) // 10, 1) if num_bins is None else num_bins
        as_count(num_bins, "num_bins", minimum=1)
        coverage = credible_levels(ranks, num_posterior_samples, self.generator)
        alpha = np.linspace(0.0, 1.0, num_bins + 1)
        return ecdf(coverage, alpha), alpha


def run_tarp(
    thetas: Tensor | np.ndarray,
    xs: Tensor | np.ndarray,
    posterior: BatchedPosterior,
    num_posterior_samples: int = 1000,
    references: Tensor | np.ndarray | None = None,
    *,
    num_bins: int | None = None,
    normalize: bool = True,
    metric: str = "euclidean",
    seed: int = 0,
    chunk_size: int = 100,
    show_progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The TARP expected coverage probability of each credibility level.

    Args:
        thetas: (N, d) true parameters, drawn from the prior.
        xs: (N, *x_shape) an observation simulated from each.
        num_posterior_samples: samples drawn from q(θ | x_i) per observation.
        references: (N, d) a reference point per observation, in θ's coordinates; None draws
            them uniformly in the bounding box of thetas (seeded by `seed`), as sbi does.
        num_bins: α grid intervals; None uses max(N // 10, 1), as sbi and `tarp` do.
        normalize: whether distances are taken after mapping the bounding box of thetas onto
            the unit cube, so that no parameter dominates by its scale (sbi's default).
        metric: "euclidean" or "manhattan".

    Returns:
        ecp: (num_bins + 1,) expected coverage probability at each α.
        alpha: (num_bins + 1,) the credibility levels, evenly spaced over [0, 1].
    """
    thetas, xs = check_pairs(thetas, xs)
    as_count(num_posterior_samples, "num_posterior_samples", minimum=1)
    if num_bins is not None:
        as_count(num_bins, "num_bins", minimum=1)
    frame = TarpFrame.of(thetas, references, normalize=normalize, seed=seed)
    ranks = []
    for rows in observation_chunks(len(thetas), chunk_size, show_progress, "TARP"):
        samples = draw_samples(posterior, num_posterior_samples, xs[rows], thetas.shape[1])
        ranks.append(frame.ranks(samples, thetas[rows], rows, metric))
    return frame.curve(torch.cat(ranks), num_posterior_samples, num_bins)


def check_tarp(ecp: np.ndarray, alpha: np.ndarray, num_observations: int) -> tuple[float, float]:
    """Summaries of a TARP curve from `run_tarp`.

    Args:
        ecp, alpha: (G,) the curve and its evenly spaced grid.
        num_observations: N, the pairs behind the curve. sbi's `check_tarp` does without it by
            a two-sample KS test between the values of ecp and of alpha, which ignores N: on
            500 pairs it gave p = 0.19 for a posterior twice too wide, where this test gives
            p = 1e-21.

    Returns:
        atc: the area between ECP and the diagonal over α ≥ 0.5 (sbi's left Riemann sum over
            the upper half of the grid): ≈ 0 calibrated, > 0 underconfident (too wide),
            < 0 overconfident.
        ks_pvalue: the one-sample Kolmogorov–Smirnov test of uniform coverage, with the KS
            distance taken on the grid (so slightly conservative on a coarse one).
    """
    ecp, alpha = check_levels(ecp, "ecp"), check_levels(alpha, "alpha")
    if ecp.ndim != 1 or ecp.shape != alpha.shape or len(alpha) < 2:
        raise ValueError(
            "ecp and alpha must have the same shape (G,) with G >= 2, "
            f"got {ecp.shape} and {alpha.shape}"
        )
    as_count(num_observations, "num_observations", minimum=1)
    middle = len(alpha) // 2
    atc = float(((ecp[middle:] - alpha[middle:]) * (alpha[1] - alpha[0])).sum())
    distance = float(np.abs(ecp - alpha).max())
    return atc, float(stats.kstwo.sf(distance, num_observations))
