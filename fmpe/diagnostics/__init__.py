"""Calibration diagnostics of posteriors: SBC ranks, highest-density coverage, TARP.

Each takes true parameters thetas (N, d), their observations xs (N, *x_shape) and a posterior
with fmpe's batched `sample`, `log_prob` and `sample_and_log_prob`, and evaluates it on
`chunk_size` observations per call under one progress bar.
"""

from fmpe.diagnostics.coverage import (
    check_coverage,
    coverage_curve,
    expected_coverage,
    hpd_ranks,
    negative_log_prob,
)
from fmpe.diagnostics.sbc import check_sbc, run_sbc
from fmpe.diagnostics.tarp import check_tarp, run_tarp, tarp_ranks
from fmpe.diagnostics.uniformity import credible_levels, ks_uniform

__all__ = [
    "check_coverage",
    "check_sbc",
    "check_tarp",
    "coverage_curve",
    "credible_levels",
    "expected_coverage",
    "hpd_ranks",
    "ks_uniform",
    "negative_log_prob",
    "run_sbc",
    "run_tarp",
    "tarp_ranks",
]
