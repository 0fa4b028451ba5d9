"""Local classifier two-sample test (L-C2ST): is q(θ | x) right at one observation x_o?

A classifier learns to tell pairs (θ, x) of the joint (θ from the prior, x simulated) from
pairs (θ', x) with θ' ~ q(θ | x), on calibration simulations the posterior was not trained
on. If q is the true posterior, no classifier does better than chance at any x, so at x_o its
probabilities d(θ', x_o), θ' ~ q(θ | x_o), stay near 1/2. The statistic is their mean squared
distance from 1/2; its null distribution comes from classifiers trained on the same pairs
with the labels shuffled (Linhart et al. 2023, as sbi's ``LC2ST`` with permutations).

    result = lc2st(posterior, x_obs, theta, x)      # theta (N, d), x (N, *x_shape)
    result.p_value, result.rejects(0.05)
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from fmpe.metrics import fit_classifiers
from fmpe.standardize import Standardizer


@dataclass(frozen=True)
class LC2STResult:
    """The test at one observation.

    Attributes:
        statistic: mean of (d(θ', x_o) − 1/2)² over θ' ~ q(θ | x_o).
        null_statistics: (num_null,) the same of the shuffled-label classifiers.
        probabilities: (num_samples,) d(θ', x_o), the classifier's probability that (θ', x_o)
            is a pair of the joint rather than of the posterior.
    """

    statistic: float
    null_statistics: Tensor
    probabilities: Tensor

    @property
    def p_value(self) -> float:
        """The share of null statistics at least as large, counting the statistic itself."""
        larger = int((self.null_statistics >= self.statistic).sum())
        return (1 + larger) / (1 + len(self.null_statistics))

    def rejects(self, level: float = 0.05) -> bool:
        """Whether q(θ | x_o) is rejected at `level`."""
        return self.p_value < level


def lc2st(
    posterior,
    x_obs: Tensor,
    theta: Tensor,
    x: Tensor,
    *,
    num_samples: int = 1000,
    num_null: int = 50,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> LC2STResult:
    """L-C2ST of `posterior` at `x_obs`.

    Args:
        posterior: has fmpe's batched ``sample(n, x)``: (n, b, d) for x (b, *x_shape).
        x_obs: the observation, (*x_shape).
        theta: (N, d) calibration parameters from the prior, x: (N, *x_shape) their
            simulations; neither trained the posterior. A few thousand are typical.
        num_samples: θ' ~ q(θ | x_obs) the statistic averages over.
        num_null: shuffled-label classifiers; the smallest p-value is 1 / (1 + num_null).
        seed: of the posterior's samples, the shuffles and the classifiers.
        device: where the classifiers train; None picks CUDA when available.
    """
    if theta.dim() != 2 or len(theta) != len(x):
        raise ValueError(
            f"theta must be (N, d) and x (N, *x_shape) with the same N, got {tuple(theta.shape)} "
            f"and {tuple(x.shape)}"
        )
    if num_null < 1:
        raise ValueError(f"num_null must be at least 1, got {num_null}")
    torch.manual_seed(seed)
    theta, x = theta.to(posterior.device), x.to(posterior.device)
    sampled = posterior.sample(1, x)[0]  # (N, d): one θ' per calibration x
    flat_x = x.flatten(1)
    features = torch.cat([torch.cat([theta, flat_x], 1), torch.cat([sampled, flat_x], 1)]).cpu()
    z_score = Standardizer.fit(features)
    labels = torch.cat([torch.ones(len(theta)), torch.zeros(len(theta))])
    generator = torch.Generator().manual_seed(seed)
    shuffled = [labels[torch.randperm(len(labels), generator=generator)] for _ in range(num_null)]
    inputs = z_score(features).expand(1 + num_null, -1, -1)
    probabilities = fit_classifiers(
        inputs, torch.stack([labels, *shuffled]), seed=seed, device=device
    )

    at_obs = posterior.sample(num_samples, x_obs.to(posterior.device)).cpu()
    points = torch.cat([at_obs, x_obs.cpu().flatten().expand(num_samples, -1)], 1)
    d = probabilities(z_score(points)).cpu()  # (1 + num_null, num_samples)
    statistics = (d - 0.5).square().mean(1)
    return LC2STResult(statistics[0].item(), statistics[1:], d[0])
