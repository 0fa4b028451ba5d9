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
the box or over R fits badly. `PhaseConditionalProposal` is then a flow over the other
parameters times this conditional, and its importance weights are those of the flow against
the posterior with φ marginalized: π(rest) e^K I₀(R) / q(rest).
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
) -> tuple[Tensor, Tensor, Tensor]:
    """(K, R, β), each (n,) float64, of log L(φ) = K + R cos(m (φ − low) − β) at the other
    parameters of θ (n, d), whose column `index` (φ) is ignored; m is `harmonic`."""
    quarter = math.pi / (2 * harmonic)
    at = []
    for shift in (0.0, quarter, 2 * quarter):
        moved = theta.to(torch.float64, copy=True)  # float32 would round the shifts
        moved[:, index] = low + shift
        at.append(log_likelihood(moved, x).double().cpu())
    constant = (at[0] + at[2]) / 2
    cos_part, sin_part = at[0] - constant, at[1] - constant
    return constant, torch.hypot(cos_part, sin_part), torch.atan2(sin_part, cos_part)


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
        prior: π over all d parameters, whose support is a box with φ's side a whole number
            of periods 2π/m (φ's conditional is normalized over it); with π uniform in φ the
            weights are those of the flow against the φ-marginal posterior.
        log_likelihood: ``log_likelihood(theta: (n, d), x) -> (n,)``, the exact log L.
        index: φ's column in θ.
        harmonic: m, the number of periods of L in 2π of φ.
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
        self.prior = prior
        self.log_likelihood = log_likelihood
        self.index = index
        self.harmonic = as_count(harmonic, "harmonic", minimum=1)
        low, high = support_bounds(prior, len(flow.shift) + 1)
        self.low, self.width = float(low[index]), float(high[index] - low[index])
        periods = self.width * harmonic / (2 * math.pi)
        if not math.isclose(periods, round(periods), rel_tol=1e-6) or round(periods) < 1:
            raise ValueError(
                f"the prior of parameter {index} must span whole periods 2π/{harmonic} of the "
                f"likelihood, got a width of {self.width}"
            )
        self.periods = round(periods)
        self.rest = _other_columns(len(low), index)

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
        flow = copy.deepcopy(self.flow, memo)
        return type(self)(flow, self.prior, self.log_likelihood, self.index, self.harmonic)

    def _conditional(self, theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """(R, β) of φ's conditional at θ's other parameters."""
        _, concentration, location = phase_terms(
            self.log_likelihood, theta, x, self.index, self.low, self.harmonic
        )
        return concentration, location

    def _phase_log_prob(self, phase: Tensor, concentration: Tensor, location: Tensor) -> Tensor:
        angle = self.harmonic * (phase.double() - self.low) - location
        # log I₀(R) = R + log i0e(R): finite where I₀(R) itself overflows.
        log_i0 = concentration + torch.special.i0e(concentration).log()
        log_normalizer = math.log(self.width) + log_i0
        return concentration * angle.cos() - log_normalizer

    def _draw_phase(self, concentration: Tensor, location: Tensor) -> Tensor:
        """φ (n,) float64 from its conditional of parameters (R, β), each (n,)."""
        # The von Mises sampler needs R > 0; R = 0 (a flat conditional) draws it uniformly.
        turn = VonMises(location, concentration.clamp(min=1e-12)).sample()
        period = 2 * math.pi / self.harmonic
        which = torch.randint(self.periods, turn.shape, dtype=torch.float64)
        return self.low + torch.remainder(turn / self.harmonic, period) + which * period

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        """log q(θ) (n,) float64 of θ (n, d); −inf outside the prior's support."""
        theta = theta.detach().cpu()
        log_q = self.flow.log_prob(theta[:, self.rest])
        phase = theta[:, self.index].double()
        inside = torch.isfinite(log_q) & (phase >= self.low) & (phase <= self.low + self.width)
        log_q = torch.where(inside, log_q, -math.inf)
        if inside.any():
            concentration, location = self._conditional(theta[inside], x)
            log_q[inside] += self._phase_log_prob(phase[inside], concentration, location)
        return log_q

    def sample_and_log_prob(
        self, n: int, x: Tensor, *, reject_outside_prior: bool = False
    ) -> tuple[Tensor, Tensor]:
        """n samples (n, d), all inside the prior's support, and their log q (n,) float64."""
        rest, log_q = self.flow.sample_and_log_prob(n)
        theta = torch.empty(len(rest), len(self.rest) + 1)
        theta[:, self.rest] = rest
        theta[:, self.index] = self.low  # a stand-in: the conditional ignores φ
        concentration, location = self._conditional(theta, x)
        theta[:, self.index] = self._draw_phase(concentration, location).float()
        phase = theta[:, self.index].double()  # log q of the float32 value that is returned
        return theta, log_q + self._phase_log_prob(phase, concentration, location)

    def fit(self, theta: Tensor, weights: Tensor, **options) -> float:
        """Fits the flow to the other parameters of the weighted samples (`FlowProposal.fit`)."""
        return self.flow.fit(theta[:, self.rest], weights, **options)

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Writes the flow, φ's column and the harmonic to `path`, a safetensors file."""
        phase = json.dumps({"index": self.index, "harmonic": self.harmonic})
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
