"""Under a calibrated posterior, the rank of the true parameter among posterior samples is
uniform; these are the transforms, tests and bands that check it.

Every diagnostic here reduces an observation to a rank r ∈ {0, …, L}: the number of the L
posterior samples that lie "before" θ* in some ordering (below it in one coordinate, denser
than it, closer to a reference point). r is then uniform on {0, …, L}, and the randomised
probability integral transform (r + U) / (L + 1), U ~ Uniform(0, 1), is exactly Uniform(0, 1),
so continuous tests and curves apply without any discreteness correction.
"""

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from fmpe.checks import as_count


def diagnostic_generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator for one use (`stream`) of a diagnostic's `seed`.

    Not ``torch.Generator().manual_seed(seed)``: callers usually draw their θ* under
    ``torch.manual_seed(seed)`` with that very seed, and from a uniform prior those θ* would be
    the generator's own first draws (TARP's reference points landed on them).
    """
    words = np.random.SeedSequence([seed, *stream.encode()]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(words[0]))


def credible_levels(
    ranks: Tensor, num_posterior_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """Ranks in {0, …, L} mapped to levels in (0, 1) that are uniform under calibration.

    Args:
        ranks: (N, ...) integer ranks among L = num_posterior_samples samples.
        generator: the source of the uniform jitter; None means a fixed one.

    Returns:
        (N, ...) float64 levels (r + U) / (L + 1).
    """
    ranks = check_ranks(ranks, num_posterior_samples)
    if generator is None:
        generator = diagnostic_generator(0, "credible levels")
    jitter = torch.rand(ranks.shape, generator=generator, dtype=torch.float64)
    return (ranks.double() + jitter) / (num_posterior_samples + 1)


def check_ranks(ranks: Tensor | np.ndarray, num_posterior_samples: int) -> Tensor:
    """ranks as an integer CPU tensor, with a ValueError unless each lies in {0, …, L}."""
    as_count(num_posterior_samples, "num_posterior_samples", minimum=1)
    ranks = torch.as_tensor(ranks).cpu()
    if ranks.is_floating_point() or ranks.dtype == torch.bool:
        raise ValueError(f"ranks must have an integer dtype, got {ranks.dtype}")
    if ranks.numel() == 0:
        raise ValueError("ranks is empty")
    if ranks.min() < 0 or ranks.max() > num_posterior_samples:
        raise ValueError(
            f"ranks must lie in [0, num_posterior_samples = {num_posterior_samples}], "
            f"got values in [{int(ranks.min())}, {int(ranks.max())}]"
        )
    return ranks


def check_levels(levels: Tensor | np.ndarray, name: str = "levels") -> np.ndarray:
    """levels as a float64 array, with a ValueError unless each lies in [0, 1]."""
    levels = np.asarray(torch.as_tensor(levels).detach().cpu(), dtype=np.float64)
    if levels.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all((levels >= 0) & (levels <= 1)):
        raise ValueError(f"{name} must lie in [0, 1] (NaN is not allowed)")
    return levels


def ks_uniform(levels: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kolmogorov–Smirnov test of each column against Uniform(0, 1).

    levels: (N,) or (N, k) -> statistic, p-value: () or (k,)
    """
    levels = check_levels(levels)
    results = [stats.kstest(column, "uniform") for column in levels.reshape(len(levels), -1).T]
    shape = levels.shape[1:]
    statistic = np.array([r.statistic for r in results]).reshape(shape)
    return statistic, np.array([r.pvalue for r in results]).reshape(shape)


def ecdf(levels: Tensor | np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Empirical CDF, the share of levels ≤ each grid point: (N,) or (N, k) -> (G,) or (G, k)."""
    levels = np.sort(check_levels(levels), axis=0)
    grid = np.asarray(grid, dtype=np.float64)
    if levels.ndim == 1:
        return np.searchsorted(levels, grid, side="right") / len(levels)
    columns = [np.searchsorted(column, grid, side="right") for column in levels.T]
    return np.stack(columns, axis=-1) / len(levels)


def ks_band_halfwidth(num_observations: int, confidence: float = 0.95) -> float:
    """Half-width ε of the simultaneous band |ECDF(α) − α| ≤ ε that the ECDF of
    num_observations uniform levels stays inside with probability `confidence`.

    This is the exact Kolmogorov–Smirnov critical value, so an ECDF leaves the band exactly
    when `ks_uniform` gives a p-value below 1 − confidence.
    """
    _check_band_arguments(num_observations, confidence)
    return float(stats.kstwo.ppf(confidence, num_observations))


def binomial_band(
    num_observations: int, probability: float, confidence: float = 0.95
) -> tuple[float, float]:
    """Central interval of Binomial(num_observations, probability) holding `confidence`: the
    pointwise band of one histogram bin's count."""
    _check_band_arguments(num_observations, confidence)
    tail = (1 - confidence) / 2
    low, high = stats.binom.ppf([tail, 1 - tail], num_observations, probability)
    return float(low), float(high)


def _check_band_arguments(num_observations: int, confidence: float) -> None:
    as_count(num_observations, "num_observations", minimum=1)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
