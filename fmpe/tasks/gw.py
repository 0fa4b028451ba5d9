"""A gravitational-wave task: a binary black-hole inspiral seen by LIGO Hanford and Livingston.

The simulator is `fmpe.gw.GWSimulator` with its defaults: H1 + L1 at design sensitivity,
20-128 Hz in bins of 0.25 Hz, a non-spinning TaylorF2 signal of nine parameters (chirp mass,
mass ratio, distance, time, phase, cos ι, ψ, ra, sin δ) with a box-uniform prior, and x the
whitened strain (detector, real/imaginary part, frequency): (2, 2, 433).

The benchmark trains on noise-free waveforms (`training_simulate`) and adds fresh noise every
time a pair is used (`augment_x`), as dingo does; `simulate` is the noisy simulator. The
likelihood is Gaussian and exact (`log_likelihood`), so posteriors are scored by importance
sampling and by the credible levels of the true parameters (P–P plots).

The observations are injections drawn from the prior with a fixed seed, kept if their network
optimal SNR is at least 8, each with noise of its own fixed seed; they are computed (not
shipped) and are the same on every machine.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fmpe.diagnostics import PhaseConditionalProposal, PhaseMarginal
from fmpe.gw import GWSimulator
from fmpe.tasks.base import Task

NUM_INJECTIONS = 100
MIN_SNR = 8.0
INJECTION_SEED = 150914
CANDIDATES = 1000  # prior draws the injections are picked from; about 85% pass the SNR cut

PARAMETER_LABELS = ("M_c", "q", "d_L", "t_c", "φ_c", "cos ι", "ψ", "ra", "sin δ")
"""Short names of the nine parameters, for figures."""

PHASE_INDEX, PHASE_HARMONIC = 4, 2
"""φ_c's column, and its harmonic: φ_c turns the (2, 2)-mode signal by e^{-2iφ_c}, so log L is
K + R cos(2φ_c − β) (`fmpe.diagnostics.PhaseMarginal`)."""


class GWTask(Task):
    """TaylorF2 in H1 + L1: ``theta: (n, 9)`` -> whitened strain ``x: (n, 2, 2, 433)``.

    Attributes:
        simulator: the float32 `GWSimulator` that simulates training data.
        parameter_names: the nine parameter names, in order.
    """

    name = "gw"
    theta_dim = 9
    num_observations = NUM_INJECTIONS
    # Registered in `fmpe.benchmark.gw_metrics`: importance_sampling fills is_efficiency,
    # is_log_evidence and is_log_evidence_error; credible_levels credible_level_<parameter>.
    metrics = ("nltp", "importance_sampling", "credible_levels")

    def __init__(self) -> None:
        self.simulator = GWSimulator()
        # The likelihood and the injections are computed in float64.
        self._exact = GWSimulator(dtype=torch.float64)
        self.parameter_names = self.simulator.parameter_names
        self.x_shape = self.simulator.x_shape
        self.prior = self.simulator.prior()
        self._injections: tuple[Tensor, Tensor, Tensor] | None = None

    # ----- simulation -------------------------------------------------------------------

    def training_simulate(self, theta: Tensor) -> Tensor:
        """Noise-free whitened waveforms, ``(n, 9) -> (n, 2, 2, 433)`` float32."""
        self._check_theta(theta)
        return self.simulator.waveforms(theta).float()

    def augment_x(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x plus fresh whitened noise (standard normal in every real number), on x's device;
        `generator`, if given, must be on that device."""
        return self.simulator.add_noise(x, generator)

    def _simulate(self, theta: Tensor) -> Tensor:
        return self.simulator.simulate(theta)

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        """The exact Gaussian log L(x | θ) in float64: theta (n, 9), x (2, 2, 433) -> (n,).

        Normalized over the real numbers of x; computed on the CPU, returned there.
        """
        self._check_theta(theta)
        if tuple(x.shape) != self.x_shape:
            raise ValueError(f"x must be one observation of shape {self.x_shape}, got {x.shape}")
        return self._exact.log_likelihood(theta.detach().cpu().double(), x.detach().cpu().double())

    def phase_conditional_proposal(
        self, theta: Tensor, weights: Tensor, **flow_options
    ) -> PhaseConditionalProposal:
        """A proposal for importance sampling at one observation: a flow over the eight
        parameters besides φ_c, placed on the weighted samples θ (N, 9), and φ_c drawn from its
        exact conditional posterior; `adapt_flow_proposal`'s `proposal_for`."""
        return PhaseConditionalProposal.for_samples(
            self.prior,
            theta,
            weights,
            log_likelihood=self.log_likelihood,
            index=PHASE_INDEX,
            harmonic=PHASE_HARMONIC,
            **flow_options,
        )

    def phase_marginal(self) -> PhaseMarginal:
        """φ_c's exact conditional posterior and the likelihood with φ_c marginalized
        (`log_likelihood` averaged over φ_c's prior), for a sampler of the other parameters."""
        return PhaseMarginal(self.prior, self.log_likelihood, PHASE_INDEX, PHASE_HARMONIC)

    def _check_theta(self, theta: Tensor) -> None:
        if theta.dim() != 2 or theta.shape[1] != self.theta_dim:
            raise ValueError(
                f"gw: theta must have shape (n, {self.theta_dim}), got {tuple(theta.shape)}"
            )

    # ----- observations -----------------------------------------------------------------

    def _injected(self) -> tuple[Tensor, Tensor, Tensor]:
        """(θ (N, 9) float64, SNR (N,) float64, x (N, *x_shape) float32) of every injection."""
        if self._injections is None:
            self._injections = draw_injections(self._exact, NUM_INJECTIONS, MIN_SNR)
        return self._injections

    def observation(self, i: int) -> Tensor:
        """Injection i's noisy whitened strain, (2, 2, 433) float32."""
        self._check_observation(i)
        return self._injected()[2][i - 1].clone()

    def true_parameters(self, i: int) -> Tensor:
        """The parameters of injection i, (9,) float32."""
        self._check_observation(i)
        return self._injected()[0][i - 1].float()

    def snr(self, i: int) -> float:
        """The network optimal SNR of injection i (of the signal, without its noise)."""
        self._check_observation(i)
        return float(self._injected()[1][i - 1])


def draw_injections(
    simulator: GWSimulator, num_injections: int, min_snr: float, seed: int = INJECTION_SEED
) -> tuple[Tensor, Tensor, Tensor]:
    """Injections drawn from the simulator's prior with a fixed seed, in order of drawing,
    keeping those of network optimal SNR ≥ `min_snr`; injection i (from 1) gets the noise of
    the seed `seed` + i.

    Returns:
        theta: (N, 9) and snr: (N,) in the simulator's dtype, x: (N, *x_shape) float32.
    """
    generator = torch.Generator().manual_seed(seed)
    low, high = (torch.tensor(b, dtype=torch.float64) for b in zip(*simulator.bounds.values()))
    draws = torch.rand(CANDIDATES, len(low), generator=generator, dtype=torch.float64)
    candidates = low + (high - low) * draws
    snr = simulator.snr(candidates.to(simulator.dtype))
    kept = (snr >= min_snr).nonzero().squeeze(1)[:num_injections]
    if len(kept) < num_injections:
        raise RuntimeError(
            f"only {len(kept)} of {CANDIDATES} prior draws reach SNR {min_snr}; draw more"
        )
    theta = candidates[kept].to(simulator.dtype)
    signals = simulator.waveforms(theta)
    x = torch.stack(
        [
            simulator.add_noise(signal[None], torch.Generator().manual_seed(seed + i))[0]
            for i, signal in enumerate(signals, start=1)
        ]
    )
    return theta, snr[kept], x.float()
