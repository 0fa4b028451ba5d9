"""Calibration diagnostics of posteriors: SBC ranks, highest-density coverage, TARP, the local
classifier two-sample test at one observation (`lc2st`); and
importance sampling with a posterior as the proposal, for tasks with a likelihood.

The calibration diagnostics take true parameters thetas (N, d), their observations
xs (N, *x_shape) and a posterior with fmpe's batched `sample`, `log_prob` and
`sample_and_log_prob`, and evaluate it on `chunk_size` observations per call under one
progress bar. Importance sampling
(`importance_sample`, `defensive_importance_sample`) takes one observation and the exact
log-likelihood; `KernelDensityProposal` and `FlowProposal` make a proposal of weighted samples
(a nested sampler's), and `adapt_flow_proposal` refines a flow round by round from a trained
posterior. `PhaseConditionalProposal` draws a phase that enters the likelihood as one harmonic
(a gravitational wave's φ_c) from its exact conditional, and a flow fits the rest;
`PhaseMarginal` gives the likelihood with that phase marginalized, for samplers of the rest.
"""

from fmpe.diagnostics.adaptive import AdaptationRound, FlowProposal, adapt_flow_proposal
from fmpe.diagnostics.calibration import Calibration, calibrate
from fmpe.diagnostics.coverage import (
    check_coverage,
    coverage_curve,
    denser_than,
    expected_coverage,
    hpd_ranks,
    negative_log_prob,
)
from fmpe.diagnostics.importance import (
    ImportanceResult,
    KernelDensityProposal,
    defensive_importance_sample,
    importance_sample,
)
from fmpe.diagnostics.lc2st import LC2STResult, lc2st
from fmpe.diagnostics.phase import PhaseConditionalProposal, PhaseMarginal, phase_terms
from fmpe.diagnostics.sbc import check_sbc, run_sbc, sbc_ranks
from fmpe.diagnostics.tarp import TarpFrame, check_tarp, run_tarp, tarp_ranks
from fmpe.diagnostics.uniformity import credible_levels, ks_uniform

__all__ = [
    "AdaptationRound",
    "Calibration",
    "FlowProposal",
    "ImportanceResult",
    "KernelDensityProposal",
    "LC2STResult",
    "PhaseConditionalProposal",
    "PhaseMarginal",
    "TarpFrame",
    "adapt_flow_proposal",
    "calibrate",
    "check_coverage",
    "check_sbc",
    "check_tarp",
    "coverage_curve",
    "credible_levels",
    "denser_than",
    "lc2st",
    "defensive_importance_sample",
    "expected_coverage",
    "hpd_ranks",
    "importance_sample",
    "ks_uniform",
    "negative_log_prob",
    "phase_terms",
    "run_sbc",
    "run_tarp",
    "sbc_ranks",
    "tarp_ranks",
]
