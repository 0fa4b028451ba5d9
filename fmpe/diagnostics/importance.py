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
    chunk_size: int = 10_000,
    show_progress: bool = False,
) -> ImportanceResult:
    """Importance-samples the exact posterior from a defensive mixture of proposals.

    The mixture is q_mix = Σ_k α_k q_k + α_π π: a share α_π = `prior_fraction` of the N
    samples comes from the prior, the rest in equal shares from each posterior, and every
    sample is weighted by π L / q_mix, which needs every q_k at every sample: each sample's
    own proposal gives it with the sample (`sample_and_log_prob`), the others by `log_prob`.

    Args:
        posteriors: the proposals q_k, each with `sample_and_log_prob` and `log_prob`.
        prior: π; default the first posterior's prior.
        prior_fraction: α_π, in [0, 1).
        The others are those of `importance_sample`.
    """
    n = as_count(n, "the number of samples", minimum=1)
    chunk_size = as_count(chunk_size, "chunk_size", minimum=1)
    if not posteriors:
        raise ValueError("defensive_importance_sample needs at least one posterior")
    if not 0 <= prior_fraction < 1:
        raise ValueError(f"prior_fraction must be in [0, 1), got {prior_fraction!r}")
    prior = _prior_of(prior, posteriors)
    counts = _mixture_counts(n, len(posteriors), prior_fraction)
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


def _mixture_counts(n: int, num_posteriors: int, prior_fraction: float) -> list[int]:
    """Samples per posterior, then the prior's: fixed shares summing to n."""
    from_prior = round(n * prior_fraction)
    each, extra = divmod(n - from_prior, num_posteriors)
    return [each + (k < extra) for k in range(num_posteriors)] + [from_prior]


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
