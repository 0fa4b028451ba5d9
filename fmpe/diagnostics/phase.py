"""A phase-like parameter drawn from its exact conditional posterior, for importance sampling.

Some likelihoods depend on one angle φ only through a harmonic: for fixed other parameters,

    log L(φ) = K + a cos(m (φ − l)) + b sin(m (φ − l)) = K + R cos(m (φ − l) − β),

with R = √(a² + b²), β = atan2(b, a), and l the lower bound of φ's prior. A gravitational wave
with only its dominant (2, 2) mode is one: its reference phase turns the whole signal by
e^{−2iφ}, so m = 2. Three evaluations of log L, at m (φ − l) = 0, π/2 and π, give K, a and b
(`phase_terms`). Under a uniform prior on [l, h], h − l a whole number of periods 2π/m,

    p(φ | rest, x) = exp(R cos(m (φ − l) − β)) / ((h − l) I₀(R)),

a von Mises distribution in m (φ − l), repeated over the periods. Drawing φ from it exactly
removes φ's thin ridges (width about 1/(m √R)) that wrap around its range, which a flow over
the box or over R fits badly. The same terms give the likelihood with φ marginalized over its
prior, e^K I₀(R). `PhaseMarginal` holds both; `PhaseConditionalProposal` is a flow over the
other parameters times the conditional, and its importance weights are those of the flow
against the φ-marginal posterior: π(rest) e^K I₀(R) / q(rest). A sampler of the other
parameters alone (nested sampling, MCMC) can run on the marginal likelihood likewise, and have
φ drawn afterwards (`PhaseMarginal.complete`).
"""

import copy
import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Uniform, VonMises

from fmpe.checks import as_count
from fmpe.diagnostics.adaptive import FlowProposal
from fmpe.diagnostics.importance import LogLikelihood
from fmpe.unbounded import support_bounds


def phase_terms(
    log_likelihood: LogLikelihood,
    theta: Tensor,
    x: Tensor,
    index: int,
    low: float,
    harmonic: int,
    chunk_size: int = 4096,
) -> tuple[Tensor, Tensor, Tensor]:
    """(K, R, β), each (n,) float64, of log L(φ) = K + R cos(m (φ − low) − β) at the other
    parameters of θ (n, d), whose column `index` (φ) is ignored; m is `harmonic`.

    The three evaluations of each row go to `log_likelihood` in one call of up to
    3 · `chunk_size` rows: a likelihood of a few rows costs about as much as one."""
    shifts = torch.arange(3, dtype=torch.float64) * (math.pi / (2 * harmonic))
    at = []
    for rows in theta.split(chunk_size):
        moved = rows.to(torch.float64).repeat(3, 1)  # float32 would round the shifts
        moved[:, index] = low + shifts.repeat_interleave(len(rows))
        at.append(log_likelihood(moved, x).double().cpu().view(3, len(rows)))
    at = torch.cat(at, dim=1)
    constant = (at[0] + at[2]) / 2
    cos_part, sin_part = at[0] - constant, at[1] - constant
    return constant, torch.hypot(cos_part, sin_part), torch.atan2(sin_part, cos_part)


class PhaseMarginal:
    """The dependence of log L on the phase φ (column `index` of θ), under a prior uniform in
    φ over whole periods: φ's exact conditional p(φ | the rest, x), and L with φ marginalized.

    Example:
        >>> phase = PhaseMarginal(prior, task.log_likelihood, index=4, harmonic=2)
        >>> phase.log_likelihood(theta, x)  # (n,): log E_π(φ)[L], θ's column 4 ignored
        >>> theta = phase.complete(theta, x)  # column 4 drawn from p(φ | the rest, x)

    Args:
        prior: π over all d parameters, whose support is a box with φ's side a whole number
            of periods 2π/m (φ's conditional is normalized over it).
        log_likelihood: ``log_likelihood(theta: (n, d), x) -> (n,)``, the exact log L.
        index: φ's column in θ.
        harmonic: m, the number of periods of L in 2π of φ.
    """

    def __init__(
        self, prior: Distribution, log_likelihood: LogLikelihood, index: int, harmonic: int
    ):
        self.prior = prior
        self.full_log_likelihood = log_likelihood
        self.index = index
        self.harmonic = as_count(harmonic, "harmonic", minimum=1)
        self.dim = prior.event_shape[0]
        low, high = support_bounds(prior, self.dim)
        self.low, self.width = float(low[index]), float(high[index] - low[index])
        periods = self.width * harmonic / (2 * math.pi)
        if not math.isclose(periods, round(periods), rel_tol=1e-6) or round(periods) < 1:
            raise ValueError(
                f"the prior of parameter {index} must span whole periods 2π/{harmonic} of the "
                f"likelihood, got a width of {self.width}"
            )
        self.periods = round(periods)
        self.rest = _other_columns(self.dim, index)

    def embed(self, rest: Tensor) -> Tensor:
        """θ (n, d), in `rest`'s dtype, of the other parameters (n, d − 1), φ at its lower bound
        (a stand-in: `terms` and the marginal likelihood ignore it)."""
        theta = torch.full((len(rest), self.dim), self.low, dtype=rest.dtype)
        theta[:, self.rest] = rest
        return theta

    def terms(self, theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(K, R, β), each (n,) float64, at the other parameters of θ (n, d) (`phase_terms`)."""
        return phase_terms(self.full_log_likelihood, theta, x, self.index, self.low, self.harmonic)

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        """log ∫ L π(φ) dφ = K + log I₀(R), (n,) float64, at the other parameters of θ (n, d)
        (φ's column is ignored); its evidence under π is that of L."""
        constant, concentration, _ = self.terms(theta, x)
        return constant + _log_i0(concentration)

    def log_conditional(self, phase: Tensor, concentration: Tensor, location: Tensor) -> Tensor:
        """log p(φ | the rest, x) (n,) float64 of φ (n,), given its (R, β), each (n,)."""
        angle = self.harmonic * (phase.double() - self.low) - location
        return concentration * angle.cos() - math.log(self.width) - _log_i0(concentration)

    def draw(self, concentration: Tensor, location: Tensor) -> Tensor:
        """φ (n,) float64 from its conditional of parameters (R, β), each (n,)."""
        # The von Mises sampler needs R > 0; R = 0 (a flat conditional) draws it uniformly.
        turn = VonMises(location, concentration.clamp(min=1e-12)).sample()
        period = 2 * math.pi / self.harmonic
        which = torch.randint(self.periods, turn.shape, dtype=torch.float64)
        return self.low + torch.remainder(turn / self.harmonic, period) + which * period

    def complete(self, theta: Tensor, x: Tensor) -> Tensor:
        """θ (n, d) with φ's column drawn from its conditional at the other parameters: samples
        of the φ-marginal posterior become samples of the posterior, with the same weights."""
        _, concentration, location = self.terms(theta, x)
        theta = theta.clone()
        theta[:, self.index] = self.draw(concentration, location).to(theta.dtype)
        return theta


def _log_i0(concentration: Tensor) -> Tensor:
    """log I₀(R) = R + log i0e(R): finite where I₀(R) itself overflows."""
    return concentration + torch.special.i0e(concentration).log()


class PhaseConditionalProposal(nn.Module):
    """q(θ) = q_flow(θ without φ) · p(φ | the rest, x): an unconditional flow over all
    parameters but φ, and φ drawn from its exact conditional posterior (see the module).

    It is a `Proposal` for `defensive_importance_sample`, and fits like a `FlowProposal`, so
    `adapt_flow_proposal(..., proposal_for=...)` refines it.

    Example:
        >>> proposal = PhaseConditionalProposal.for_samples(
        ...     prior, theta, weights, log_likelihood=task.log_likelihood, index=4, harmonic=2)
        >>> proposal.fit(theta, weights)
        >>> theta, log_q = proposal.sample_and_log_prob(10_000, x)

    Args:
        flow: a `FlowProposal` over the d − 1 other parameters, in θ's order.
        prior, log_likelihood, index, harmonic: φ's place in them (`PhaseMarginal`); with π
            uniform in φ the weights are those of the flow against the φ-marginal posterior.
    """

    device = torch.device("cpu")

    def __init__(
        self,
        flow: FlowProposal,
        prior: Distribution,
        log_likelihood: LogLikelihood,
        index: int,
        harmonic: int,
    ):
        super().__init__()
        self.flow = flow
        self.phase = PhaseMarginal(prior, log_likelihood, index, harmonic)

    @property
    def prior(self) -> Distribution:
        """π over all d parameters (`Proposal.prior`)."""
        return self.phase.prior

    @classmethod
    def for_samples(
        cls,
        prior: Distribution,
        theta: Tensor,
        weights: Tensor,
        *,
        log_likelihood: LogLikelihood,
        index: int,
        harmonic: int,
        **flow_options,
    ) -> "PhaseConditionalProposal":
        """A proposal whose flow is placed on the weighted samples θ (N, d), as
        `FlowProposal.for_samples` places one (φ's column is dropped)."""
        rest = _other_columns(theta.shape[1], index)
        flow = FlowProposal.for_samples(
            _box_prior(prior, theta.shape[1], index), theta[:, rest], weights, **flow_options
        )
        return cls(flow, prior, log_likelihood, index, harmonic)

    def __deepcopy__(self, memo: dict) -> "PhaseConditionalProposal":
        # The likelihood (often a method of a task holding its data) is shared, not copied.
        phase = self.phase
        flow = copy.deepcopy(self.flow, memo)
        return type(self)(flow, phase.prior, phase.full_log_likelihood, phase.index, phase.harmonic)

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        """log q(θ) (n,) float64 of θ (n, d); −inf outside the prior's support."""
        phase = self.phase
        theta = theta.detach().cpu()
        log_q = self.flow.log_prob(theta[:, phase.rest])
        angle = theta[:, phase.index].double()
        inside = torch.isfinite(log_q) & (angle >= phase.low) & (angle <= phase.low + phase.width)
        log_q = torch.where(inside, log_q, -math.inf)
        if inside.any():
            _, concentration, location = phase.terms(theta[inside], x)
            log_q[inside] += phase.log_conditional(angle[inside], concentration, location)
        return log_q

    def sample_and_log_prob(
        self, n: int, x: Tensor, *, reject_outside_prior: bool = False
    ) -> tuple[Tensor, Tensor]:
        """n samples (n, d), all inside the prior's support, and their log q (n,) float64."""
        phase = self.phase
        rest, log_q = self.flow.sample_and_log_prob(n)
        theta = phase.embed(rest)
        _, concentration, location = phase.terms(theta, x)
        theta[:, phase.index] = phase.draw(concentration, location).float()
        angle = theta[:, phase.index].double()  # log q of the float32 value that is returned
        return theta, log_q + phase.log_conditional(angle, concentration, location)

    def fit(self, theta: Tensor, weights: Tensor, **options) -> float:
        """Fits the flow to the other parameters of the weighted samples (`FlowProposal.fit`)."""
        return self.flow.fit(theta[:, self.phase.rest], weights, **options)

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Writes the flow, φ's column and the harmonic to `path`, a safetensors file."""
        phase = json.dumps({"index": self.phase.index, "harmonic": self.phase.harmonic})
        self.flow.save(path, {**(metadata or {}), "phase": phase})

    @classmethod
    def load(
        cls, path: str | Path, prior: Distribution, log_likelihood: LogLikelihood
    ) -> tuple["PhaseConditionalProposal", dict[str, str]]:
        """The proposal that `save` wrote to `path`, and the metadata saved with it."""
        with safe_open(str(path), "pt") as f:
            phase = (f.metadata() or {}).get("phase")
        if phase is None:
            raise ValueError(
                f"{path} holds no PhaseConditionalProposal: its metadata names no phase"
            )
        phase = json.loads(phase)
        flow_prior = _box_prior(prior, prior.event_shape[0], phase["index"])
        flow, metadata = FlowProposal.load(path, flow_prior)
        del metadata["phase"]
        return cls(flow, prior, log_likelihood, **phase), metadata


def _other_columns(dim: int, index: int) -> list[int]:
    """The columns of θ (d = `dim`) besides φ's, in order."""
    return [j for j in range(dim) if j != index]


def _box_prior(prior: Distribution, dim: int, index: int) -> Distribution:
    """A uniform distribution on the box of `prior`'s support over all columns but φ's
    (`index`): the support that the flow over the other parameters maps onto R."""
    low, high = support_bounds(prior, dim)
    if not (torch.isfinite(low) & torch.isfinite(high)).all():
        raise ValueError("PhaseConditionalProposal needs a prior whose support is a box")
    keep = _other_columns(dim, index)
    return Independent(Uniform(low[keep], high[keep]), 1)
