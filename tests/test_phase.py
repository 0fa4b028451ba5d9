"""A phase drawn from its exact conditional: against a likelihood whose evidence is known in
closed form, against quadrature, and against the gravitational-wave likelihood itself."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy import integrate, stats
from torch.distributions import Independent, MultivariateNormal, Uniform

from fmpe.diagnostics import (
    PhaseConditionalProposal,
    PhaseMarginal,
    adapt_flow_proposal,
    defensive_importance_sample,
    importance_sample,
    phase_terms,
)

# θ = (r_0, φ, r_1): φ uniform on [1, 1 + 2π], three periods of the likelihood (m = 3).
LOW, HARMONIC, KAPPA = 1.0, 3, 40.0
PRIOR = Independent(
    Uniform(torch.tensor([-6.0, LOW, -6.0]), torch.tensor([6.0, LOW + 2 * math.pi, 6.0])), 1
)
CENTRE = torch.tensor([0.5, -1.0])
X = torch.zeros(1)  # the likelihood ignores x
SMALL = {"transforms": 2, "hidden_features": (32, 32)}


def log_likelihood(theta, x):
    """N(r; CENTRE, 1) · exp(κ cos(m (φ − LOW) − r_0)): φ's ridge turns with r_0."""
    theta = theta.double()
    rest = theta[:, [0, 2]]
    gaussian = -0.5 * (rest - CENTRE.double()).square().sum(-1) - math.log(2 * math.pi)
    return gaussian + KAPPA * torch.cos(HARMONIC * (theta[:, 1] - LOW) - theta[:, 0])


def exact_log_evidence() -> float:
    """∫ π L: the Gaussian's mass (all of it inside the box, to 1e-9) over the box's area,
    times the mean of exp(κ cos) over whole periods, I₀(κ)."""
    return -math.log(12.0 * 12.0) + math.log(torch.special.i0(torch.tensor(KAPPA)).item())


def broad_start():
    class Start:
        prior = PRIOR
        distribution = MultivariateNormal(
            torch.tensor([0.0, LOW + math.pi, 0.0]), torch.diag(torch.tensor([4.0, 4.0, 4.0]))
        )

        def sample_and_log_prob(self, n, x, *, reject_outside_prior=False):
            theta = self.distribution.sample((n,))
            return theta, self.distribution.log_prob(theta)

        def log_prob(self, theta, x):
            return self.distribution.log_prob(theta)

    return Start()


def proposal_for(theta, weights):
    return PhaseConditionalProposal.for_samples(
        PRIOR, theta, weights, log_likelihood=log_likelihood, index=1, harmonic=HARMONIC, **SMALL
    )


def test_phase_terms_give_the_likelihood_at_every_phase():
    torch.manual_seed(0)
    theta = PRIOR.sample((500,))
    constant, concentration, location = phase_terms(log_likelihood, theta, X, 1, LOW, HARMONIC)
    expected = constant + concentration * torch.cos(
        HARMONIC * (theta[:, 1].double() - LOW) - location
    )
    assert torch.allclose(expected, log_likelihood(theta, X), rtol=0, atol=1e-10)
    assert torch.allclose(concentration, torch.full_like(concentration, KAPPA), atol=1e-10)
    # In chunks of 7 rows (three evaluations of each in one call), the same terms.
    chunked = phase_terms(log_likelihood, theta, X, 1, LOW, HARMONIC, chunk_size=7)
    assert all(torch.equal(a, b) for a, b in zip(chunked, (constant, concentration, location)))


def test_the_conditional_is_normalized_and_its_samples_follow_it():
    torch.manual_seed(1)
    theta = PRIOR.sample((4000,))
    proposal = proposal_for(theta, torch.ones(len(theta)))
    samples, log_q = proposal.sample_and_log_prob(4000, X)
    assert PRIOR.support.check(samples).all()
    assert torch.allclose(log_q, proposal.log_prob(samples, X), atol=1e-3)  # float32 φ
    # It is a `Proposal` with its prior: importance sampling needs no other.
    assert importance_sample(proposal, 200, X, log_likelihood).num_samples == 200
    # φ's conditional at one r: normalized, and φ completed at that r follows its CDF.
    phase = proposal.phase
    rest = samples[:1].repeat(4000, 1)
    _, concentration, location = phase.terms(rest, X)
    grid = np.linspace(LOW, LOW + 2 * math.pi, 20001)
    density = np.exp(
        phase.log_conditional(torch.tensor(grid), concentration[:1], location[:1]).numpy()
    )
    assert integrate.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)
    cdf = integrate.cumulative_trapezoid(density, grid, initial=0)
    torch.manual_seed(2)
    completed = phase.complete(rest, X)
    assert torch.equal(completed[:, [0, 2]], rest[:, [0, 2]])
    phases = completed[:, 1].double()
    p_value = stats.kstest(phases.numpy(), lambda v: np.interp(v, grid, cdf)).pvalue
    assert p_value > 0.01
    # Each of the three periods holds a third of the draws.
    period = ((phases - LOW) // (2 * math.pi / HARMONIC)).long()
    assert torch.bincount(period, minlength=3).float().div(4000).sub(1 / 3).abs().max() < 0.03


def test_the_phase_marginal_likelihood_is_the_likelihood_averaged_over_the_phase():
    torch.manual_seed(7)
    theta = PRIOR.sample((5,)).double()
    phase = PhaseMarginal(PRIOR, log_likelihood, index=1, harmonic=HARMONIC)
    grid = torch.linspace(LOW, LOW + 2 * math.pi, 20001, dtype=torch.float64)
    for row, marginal in zip(theta, phase.log_likelihood(theta, X), strict=True):
        on_grid = row.repeat(len(grid), 1)
        on_grid[:, 1] = grid
        log_l = log_likelihood(on_grid, X).numpy()
        peak = log_l.max()
        mean = integrate.trapezoid(np.exp(log_l - peak), grid.numpy()) / (2 * math.pi)
        assert marginal.item() == pytest.approx(peak + math.log(mean), abs=1e-8)

    # At R = 800, I₀(R) is past float64's range; its log is not: R − log(2πR)/2 + 1/(8R) + ….
    def sharp(theta, x):
        return 800.0 * torch.cos(HARMONIC * (theta[:, 1].double() - LOW))

    log_i0 = PhaseMarginal(PRIOR, sharp, index=1, harmonic=HARMONIC).log_likelihood(theta, X)
    expected = 800.0 - 0.5 * math.log(2 * math.pi * 800.0) + math.log1p(1 / 6400 + 9 / 2 / 6400**2)
    assert torch.allclose(log_i0, torch.full_like(log_i0, expected), rtol=0, atol=1e-9)


def test_adapting_a_phase_conditional_proposal_gets_the_exact_evidence():
    torch.manual_seed(3)
    proposal, history = adapt_flow_proposal(
        broad_start(),
        X,
        log_likelihood,
        PRIOR,
        samples=4000,
        rounds=3,
        fit_steps=300,
        proposal_for=proposal_for,
    )
    assert isinstance(proposal, PhaseConditionalProposal)
    result = defensive_importance_sample(
        [proposal], 20_000, X, log_likelihood, PRIOR, prior_fraction=0.05
    )
    # κ = 40 gives φ ridges 0.05 wide: what the flow would have to fit is drawn exactly.
    assert result.sample_efficiency > 0.5
    error = abs(result.log_evidence - exact_log_evidence())
    assert error < max(4 * result.log_evidence_error, 0.01)


def test_a_saved_phase_conditional_proposal_loads_with_the_same_density(tmp_path):
    torch.manual_seed(4)
    theta = PRIOR.sample((2000,))
    proposal = proposal_for(theta, torch.ones(len(theta)))
    proposal.fit(theta, torch.ones(len(theta)), steps=20)
    proposal.save(tmp_path / "proposal.safetensors", {"seconds": "3.5"})
    loaded, metadata = PhaseConditionalProposal.load(
        tmp_path / "proposal.safetensors", PRIOR, log_likelihood
    )
    assert metadata == {"seconds": "3.5"}
    assert (loaded.phase.index, loaded.phase.harmonic) == (1, HARMONIC)
    assert torch.equal(loaded.log_prob(theta, X), proposal.log_prob(theta, X))
    proposal.flow.save(tmp_path / "flow.safetensors")
    with pytest.raises(ValueError, match="holds no PhaseConditionalProposal"):
        PhaseConditionalProposal.load(tmp_path / "flow.safetensors", PRIOR, log_likelihood)
    save_file({"theta": theta}, str(tmp_path / "samples.safetensors"))
    with pytest.raises(ValueError, match="holds no PhaseConditionalProposal"):
        PhaseConditionalProposal.load(tmp_path / "samples.safetensors", PRIOR, log_likelihood)


def test_a_prior_over_part_of_a_period_is_refused():
    half = Independent(Uniform(torch.tensor([-6.0, LOW]), torch.tensor([6.0, LOW + math.pi])), 1)
    torch.manual_seed(5)
    theta = half.sample((100,))
    with pytest.raises(ValueError, match="whole periods"):
        PhaseConditionalProposal.for_samples(
            half, theta, torch.ones(100), log_likelihood=log_likelihood, index=1, harmonic=1
        )


def test_the_gravitational_wave_likelihood_is_harmonic_in_the_phase():
    from fmpe.tasks import get_task
    from fmpe.tasks.gw import PHASE_HARMONIC, PHASE_INDEX

    task = get_task("gw")
    torch.manual_seed(6)
    theta = task.prior.sample((300,))
    x = task.observation(1)
    constant, concentration, location = phase_terms(
        task.log_likelihood, theta, x, PHASE_INDEX, 0.0, PHASE_HARMONIC
    )
    phase = theta[:, PHASE_INDEX].double()
    expected = constant + concentration * torch.cos(PHASE_HARMONIC * phase - location)
    direct = task.log_likelihood(theta, x)
    assert torch.allclose(expected, direct, rtol=1e-12, atol=1e-8)
    # φ_c marginalized: the likelihood averaged over φ_c's prior, by quadrature.
    grid = torch.linspace(0.0, 2 * math.pi, 2001, dtype=torch.float64)
    marginal = task.phase_marginal().log_likelihood(theta[:2], x)
    for row, value in zip(theta[:2].double(), marginal, strict=True):
        on_grid = row.repeat(len(grid), 1)
        on_grid[:, PHASE_INDEX] = grid
        log_l = task.log_likelihood(on_grid, x).numpy()
        mean = integrate.trapezoid(np.exp(log_l - log_l.max()), grid.numpy()) / (2 * math.pi)
        assert value.item() == pytest.approx(log_l.max() + math.log(mean), abs=1e-8)
