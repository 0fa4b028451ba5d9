"""Importance sampling with a posterior estimate as the proposal, for any task whose
likelihood can be evaluated.

For θ_i ~ q(θ | x), i = 1..N, the weights w_i = π(θ_i) L(x | θ_i) / q(θ_i | x) give

- the evidence: log Z = logsumexp(log w) − log N;
- the effective sample size n_eff = (Σ w)² / Σ w² and the sample efficiency ε = n_eff / N;
- the standard error of log Z: sqrt((N − n_eff) / (N · n_eff));

and the weighted samples are draws from the exact posterior π(θ) L(x | θ) / Z.

Samples are drawn without rejection: the proposal is q itself, and a sample outside the
prior's support gets weight 0. The defensive version draws from a mixture of several
proposals and the prior, with fixed shares, and weighs by the mixture's density (the balance
heuristic of multiple importance sampling, unbiased for fixed shares); the prior's share
keeps every weight bounded where all the estimates miss the posterior.
"""

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
from torch.distributions import Distribution
from tqdm.auto import tqdm

from fmpe.checks import as_count
from fmpe.unbounded import in_support

LogLikelihood = Callable[[Tensor, Tensor], Tensor]
"""log_likelihood(theta: (n, d), x: (*x_shape)) -> (n,), the exact log L(x | θ)."""


class Proposal(Protocol):
    """What importance sampling needs of a posterior (fmpe's posteriors have it)."""

    prior: Distribution | None

    def sample_and_log_prob(
        self, n: int, x: Tensor, *, reject_outside_prior: bool = ...
    ) -> tuple[Tensor, Tensor]: ...

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class ImportanceResult:
    """Weighted samples of the exact posterior.

    Attributes:
        theta: (N, d) the proposal's samples, on the CPU.
        log_weights: (N,) float64, log π(θ) + log L(x | θ) − log q(θ | x) (−inf outside the
            prior's support, and where a density could not be computed).
    """

    theta: Tensor
    log_weights: Tensor

    @property
    def num_samples(self) -> int:
        return len(self.log_weights)

    @property
    def weights(self) -> Tensor:
        """(N,) normalized weights, summing to 1 (zeros if every weight is 0)."""
        if not torch.isfinite(self.log_weights).any():
            return torch.zeros_like(self.log_weights)
        return torch.softmax(self.log_weights, 0)

    @property
    def effective_sample_size(self) -> float:
        """n_eff = (Σ w)² / Σ w²."""
        if not torch.isfinite(self.log_weights).any():
            return 0.0
        return float(1 / self.weights.square().sum())

    @property
    def sample_efficiency(self) -> float:
        """ε = n_eff / N, in [0, 1]; 1 when the proposal is the exact posterior."""
        return self.effective_sample_size / self.num_samples

    @property
    def log_evidence(self) -> float:
        """log Z = logsumexp(log w) − log N."""
        return float(torch.logsumexp(self.log_weights, 0) - math.log(self.num_samples))

    @property
    def log_evidence_error(self) -> float:
        """The standard error of log Z, sqrt((N − n_eff) / (N · n_eff))."""
        n, n_eff = self.num_samples, self.effective_sample_size
        if n_eff == 0:
            return math.inf
        return math.sqrt(max(n - n_eff, 0.0) / (n * n_eff))

    def resample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws (n, d) with replacement, each θ_i with probability w_i: unweighted
        samples of the posterior (repeats are many unless n ≪ n_eff)."""
        n = as_count(n, "the number of samples", minimum=1)
        if self.effective_sample_size == 0:
            raise ValueError("every importance weight is 0: there is nothing to resample")
        index = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.theta[index]

    @classmethod
    def joined(cls, results: Sequence["ImportanceResult"]) -> "ImportanceResult":
        """The results of several runs with the same proposal, as one run."""
        if not results:
            raise ValueError("joined needs at least one ImportanceResult")
        return cls(
            torch.cat([r.theta for r in results]), torch.cat([r.log_weights for r in results])
        )


class KernelDensityProposal:
    """A Gaussian kernel density estimate of weighted samples, as a proposal for
    `defensive_importance_sample`: it turns the output of a nested sampler or an MCMC run into
    a density that importance sampling then corrects exactly.

    q(θ) = Σ_j w_j N(θ; θ_j, h² Σ), with Σ the samples' weighted covariance and h Scott's
    factor n_eff^(−1/(d+4)) times `bandwidth_scale` (scipy's `gaussian_kde` with weights, for
    `bandwidth_scale=1`). It ignores x: it is a proposal for one observation.

    Example:
        >>> proposal = KernelDensityProposal(dynesty_samples, dynesty_weights, prior)
        >>> defensive_importance_sample([proposal, posterior], 10_000, x, log_likelihood)

    Args:
        theta: (m, d) samples.
        weights: (m,) non-negative weights, default equal.
        prior: π, for the importance sampler (`Proposal.prior`).
        bandwidth_scale: h's multiple of Scott's factor; above 1 for heavier coverage.
    """

    device = torch.device("cpu")

    def __init__(
        self,
        theta: Tensor,
        weights: Tensor | None = None,
        prior: Distribution | None = None,
        *,
        bandwidth_scale: float = 1.0,
    ):
        theta = torch.as_tensor(theta).detach().cpu()
        if theta.ndim != 2 or len(theta) < 2:
            raise ValueError(f"theta must be (m, d) samples with m >= 2, got {tuple(theta.shape)}")
        w = torch.ones(len(theta)) if weights is None else torch.as_tensor(weights)
        w = w.detach().cpu().double()
        if w.shape != (len(theta),) or not (w >= 0).all() or not w.sum() > 0:
            raise ValueError(f"weights must be ({len(theta)},) non-negative with a positive sum")
        w = w / w.sum()
        keep = w > 0
        self.prior = prior
        self.dtype = theta.dtype
        self.centres, self.log_weights = theta[keep].double(), w[keep].log()
        w = w[keep]
        n_eff = float(1 / w.square().sum())
        d = theta.shape[1]
        centred = self.centres - (w[:, None] * self.centres).sum(0)
        covariance = (w[:, None] * centred).T @ centred / (1 - w.square().sum())
        bandwidth = bandwidth_scale * n_eff ** (-1 / (d + 4))
        self.scale_tril = torch.linalg.cholesky(bandwidth**2 * covariance)
        self._whitened_centres = self._whiten(self.centres)
        self._log_normalizer = (
            -0.5 * d * math.log(2 * math.pi) - self.scale_tril.diagonal().log().sum()
        )

    def _whiten(self, theta: Tensor) -> Tensor:
        return torch.linalg.solve_triangular(self.scale_tril, theta.T, upper=False).T

    def log_prob(self, theta: Tensor, x: Tensor | None = None) -> Tensor:
        """log q(θ) (n,) float64 of θ (n, d)."""
        z = self._whiten(theta.detach().cpu().double())
        c = self._whitened_centres
        rows = max(1, 10_000_000 // len(c))
        pieces = []
        for part in z.split(rows):
            distance = (
                part.square().sum(1, keepdim=True) + c.square().sum(1) - 2 * part @ c.T
            ).clamp(min=0)
            pieces.append(torch.logsumexp(self.log_weights - 0.5 * distance, 1))
        return torch.cat(pieces) + self._log_normalizer

    def sample_and_log_prob(
        self, n: int, x: Tensor | None = None, *, reject_outside_prior: bool = False
    ) -> tuple[Tensor, Tensor]:
        """n samples (n, d) and their log q (n,); the density of samples restricted to the
        prior's support is unknown, so `reject_outside_prior` must be False."""
        if reject_outside_prior:
            raise ValueError(
                "a KernelDensityProposal samples its whole kernel mixture: pass "
                "reject_outside_prior=False (importance sampling gives 0 weight outside)"
            )
        index = torch.multinomial(self.log_weights.exp(), n, replacement=True)
        noise = torch.randn(n, self.centres.shape[1], dtype=torch.float64) @ self.scale_tril.T
        theta = self.centres[index] + noise
        return theta.to(self.dtype), self.log_prob(theta)


def importance_sample(
    posterior: Proposal,
    n: int,
    x: Tensor,
    log_likelihood: LogLikelihood,
    prior: Distribution | None = None,
    *,
    chunk_size: int = 10_000,
    show_progress: bool = False,
) -> ImportanceResult:
    """Importance-samples the exact posterior with q(θ | x) as the proposal.

    Args:
        posterior: the proposal, with `sample_and_log_prob` (e.g. an fmpe posterior).
        n: the number of samples N, drawn `chunk_size` at a time.
        x: one observation (*x_shape), on the posterior's device.
        log_likelihood: ``log_likelihood(theta: (m, d), x) -> (m,)``, the exact log L.
        prior: π; default the posterior's prior.

    Returns:
        the weighted samples, their efficiency and the evidence (`ImportanceResult`).
    """
    n = as_count(n, "the number of samples", minimum=1)
    chunk_size = as_count(chunk_size, "chunk_size", minimum=1)
    prior = _prior_of(prior, [posterior])
    thetas, log_weights = [], []
    with tqdm(total=n, desc="importance sampling", disable=not show_progress) as bar:
        for size in _chunk_sizes(n, chunk_size):
            theta, log_q = posterior.sample_and_log_prob(size, x, reject_outside_prior=False)
            theta, log_q = theta.detach().cpu(), log_q.detach().cpu().double()
            thetas.append(theta)
            log_weights.append(_log_target(theta, x, log_likelihood, prior) - log_q)
            bar.update(size)
    return _checked(ImportanceResult(torch.cat(thetas), torch.cat(log_weights)))


def defensive_importance_sample(
    posteriors: Sequence[Proposal],
    n: int,
    x: Tensor,
    log_likelihood: LogLikelihood,
    prior: Distribution | None = None,
    *,
    prior_fraction: float = 0.05,
    shares: Sequence[float] | None = None,
    chunk_size: int = 10_000,
    show_progress: bool = False,
) -> ImportanceResult:
    """Importance-samples the exact posterior from a defensive mixture of proposals.

    The mixture is q_mix = Σ_k α_k q_k + α_π π: a share α_π = `prior_fraction` of the N
    samples comes from the prior, the rest from the posteriors in proportion to `shares`
    (equal by default), and every sample is weighted by π L / q_mix, which needs every q_k
    at every sample: each sample's own proposal gives it with the sample
    (`sample_and_log_prob`), the others by `log_prob`.

    Args:
        posteriors: the proposals q_k, each with `sample_and_log_prob` and `log_prob`.
        prior: π; default the first posterior's prior.
        prior_fraction: α_π, in [0, 1).
        shares: one positive number per posterior, the relative shares of the samples not
            drawn from the prior; default equal.
        The others are those of `importance_sample`.
    """
    n = as_count(n, "the number of samples", minimum=1)
    chunk_size = as_count(chunk_size, "chunk_size", minimum=1)
    if not posteriors:
        raise ValueError("defensive_importance_sample needs at least one posterior")
    if not 0 <= prior_fraction < 1:
        raise ValueError(f"prior_fraction must be in [0, 1), got {prior_fraction!r}")
    shares = [1.0] * len(posteriors) if shares is None else [float(a) for a in shares]
    if len(shares) != len(posteriors) or not all(a > 0 and math.isfinite(a) for a in shares):
        raise ValueError(
            f"shares must be {len(posteriors)} positive numbers, one per posterior, got {shares!r}"
        )
    prior = _prior_of(prior, posteriors)
    counts = _mixture_counts(n, shares, prior_fraction)
    # log_densities[i, k]: log q_k(θ_i), the last column the prior's.
    blocks: list[tuple[Tensor, Tensor]] = []
    with tqdm(total=n, desc="defensive importance sampling", disable=not show_progress) as bar:
        for k, (posterior, count) in enumerate(zip(posteriors, counts)):
            for size in _chunk_sizes(count, chunk_size):
                theta, log_q = posterior.sample_and_log_prob(size, x, reject_outside_prior=False)
                theta = theta.detach().cpu()
                log_densities = _log_densities(posteriors, prior, theta, x, chunk_size, skip=k)
                log_densities[:, k] = log_q.detach().cpu().double()
                blocks.append((theta, log_densities))
                bar.update(size)
        for size in _chunk_sizes(counts[-1], chunk_size):
            theta = prior.sample((size,)).cpu()
            blocks.append((theta, _log_densities(posteriors, prior, theta, x, chunk_size)))
            bar.update(size)
    theta = torch.cat([block[0] for block in blocks])
    log_densities = torch.cat([block[1] for block in blocks])
    log_shares = torch.tensor(counts, dtype=torch.float64).log() - math.log(n)
    log_mixture = torch.logsumexp(log_densities + log_shares, 1)
    log_target = _log_target(theta, x, log_likelihood, prior)
    # Outside the prior's support the target is 0, whatever the proposals' densities are there.
    log_weights = torch.where(torch.isfinite(log_target), log_target - log_mixture, -math.inf)
    return _checked(ImportanceResult(theta, log_weights))


def _prior_of(prior: Distribution | None, posteriors: Sequence[Proposal]) -> Distribution:
    prior = prior if prior is not None else getattr(posteriors[0], "prior", None)
    if prior is None:
        raise ValueError(
            "importance sampling needs the prior: pass prior=..., or use a posterior that has one"
        )
    return prior


def _chunk_sizes(n: int, chunk_size: int) -> list[int]:
    return [min(chunk_size, n - start) for start in range(0, n, chunk_size)]


def _mixture_counts(n: int, shares: Sequence[float], prior_fraction: float) -> list[int]:
    """Samples per posterior, then the prior's: fixed shares summing to n (the remainders of
    the posteriors' go to the first ones)."""
    from_prior = round(n * prior_fraction)
    rest = n - from_prior
    counts = [math.floor(rest * a / sum(shares)) for a in shares]
    for k in range(rest - sum(counts)):
        counts[k % len(counts)] += 1
    return counts + [from_prior]


def _prior_log_prob(prior: Distribution, theta: Tensor) -> Tensor:
    """log π(θ) (n,) float64, −inf outside the support (where a prior may raise instead)."""
    inside = in_support(prior, theta)
    log_prior = torch.full((len(theta),), -math.inf, dtype=torch.float64)
    if inside.any():
        log_prior[inside] = prior.log_prob(theta[inside]).double()
    return log_prior


def _log_target(
    theta: Tensor, x: Tensor, log_likelihood: LogLikelihood, prior: Distribution
) -> Tensor:
    """log π(θ) + log L(x | θ) (n,) float64; the likelihood is evaluated inside the support."""
    log_target = _prior_log_prob(prior, theta)
    inside = torch.isfinite(log_target)
    if inside.any():
        log_target[inside] += log_likelihood(theta[inside], x).detach().cpu().double()
    return log_target


def _log_densities(
    posteriors: Sequence[Proposal],
    prior: Distribution,
    theta: Tensor,
    x: Tensor,
    chunk_size: int,
    skip: int | None = None,
) -> Tensor:
    """(n, K + 1) float64: log q_k(θ | x) of CPU samples θ (n, d) for every posterior but
    `skip` (left 0 for the caller to fill), evaluated on its device, then log π(θ)."""
    columns = []
    for k, posterior in enumerate(posteriors):
        if k == skip:
            columns.append(torch.zeros(len(theta), dtype=torch.float64))
            continue
        device = getattr(posterior, "device", x.device)
        pieces = [
            posterior.log_prob(part.to(device), x).detach().cpu().double()
            for part in theta.split(chunk_size)
        ]
        columns.append(torch.cat(pieces))
    columns.append(_prior_log_prob(prior, theta))
    return torch.stack(columns, 1)


def _checked(result: ImportanceResult) -> ImportanceResult:
    """The result with NaN log weights (a density that failed) set to −inf, with a warning."""
    failed = torch.isnan(result.log_weights)
    if failed.any():
        warnings.warn(
            f"{int(failed.sum())} of {result.num_samples} importance weights are NaN (a log "
            "density could not be computed) and count as 0; the estimate is biased if many are",
            stacklevel=3,
        )
        result = ImportanceResult(result.theta, result.log_weights.masked_fill(failed, -math.inf))
    return result
