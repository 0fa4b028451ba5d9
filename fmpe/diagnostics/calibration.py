"""All calibration checks of a posterior in one call: SBC, highest-density coverage, TARP and
−log q(θ*), over pairs (θ*, x) drawn from the prior and the simulator. Their figures are
`fmpe.plot.calibration_figures`."""

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fmpe.checks import as_count
from fmpe.diagnostics.batching import (
    check_pairs,
    draw_samples_and_log_prob,
    observation_chunks,
    true_log_prob,
)
from fmpe.diagnostics.coverage import check_coverage, denser_than
from fmpe.diagnostics.sbc import check_sbc, sbc_ranks
from fmpe.diagnostics.tarp import TarpFrame, check_tarp


@dataclass(frozen=True)
class Calibration:
    """The outcome of `calibrate`.

    Attributes:
        sbc_ranks: (N, d) ranks of θ* per marginal; hpd_ranks: (N,) samples denser than θ*.
        num_posterior_samples: L, samples per observation behind the ranks.
        tarp: (ecp, alpha) of TARP.
        negative_log_prob: (N,) −log q(θ*_i | x_i).
        numbers: every summary, JSON-able (KS p-values, C2ST of ranks, coverage deviations,
            TARP's ATC and p-value, mean −log q(θ*)).
    """

    sbc_ranks: Tensor
    hpd_ranks: Tensor
    num_posterior_samples: int
    tarp: tuple[np.ndarray, np.ndarray]
    negative_log_prob: Tensor
    numbers: dict


def calibrate(
    posterior,
    thetas: Tensor,
    xs: Tensor,
    num_posterior_samples: int = 1000,
    *,
    chunk_size: int = 100,
    seed: int = 0,
    show_progress: bool = True,
) -> Calibration:
    """SBC, HPD coverage, TARP and −log q(θ*) of `posterior` on pairs θ* (N, d), x (N, ...).

    One pass: per chunk of observations, one `sample_and_log_prob` and one `log_prob` of the
    true parameters, from which every check is computed (`run_sbc`, `hpd_ranks`, `run_tarp`
    and `negative_log_prob` each draw their own).
    """
    thetas, xs = check_pairs(thetas, xs)
    as_count(num_posterior_samples, "num_posterior_samples", minimum=1)
    frame = TarpFrame.of(thetas, seed=seed)
    sbc, hpd, tarp, true_log_probs = [], [], [], []
    for rows in observation_chunks(len(thetas), chunk_size, show_progress, "calibration"):
        samples, log_prob = draw_samples_and_log_prob(
            posterior, num_posterior_samples, xs[rows], thetas.shape[1]
        )
        reference = true_log_prob(posterior, thetas[rows], xs[rows])
        sbc.append(sbc_ranks(samples, thetas[rows]))
        hpd.append(denser_than(log_prob, reference))
        tarp.append(frame.ranks(samples, thetas[rows], rows))
        true_log_probs.append(reference.cpu())
    sbc, hpd, nltp = torch.cat(sbc), torch.cat(hpd), -torch.cat(true_log_probs)
    ecp, alpha = frame.curve(torch.cat(tarp), num_posterior_samples)
    sbc_checks = check_sbc(sbc, num_posterior_samples, seed=seed)
    atc, tarp_pvalue = check_tarp(ecp, alpha, len(thetas))
    numbers = {
        "observations": len(thetas),
        "posterior_samples": num_posterior_samples,
        "sbc_ks_pvalues": sbc_checks["ks_pvals"].tolist(),
        "sbc_c2st_of_ranks": sbc_checks["c2st_ranks"].tolist(),
        "coverage": check_coverage(hpd, num_posterior_samples, seed=seed),
        "tarp_atc": atc,
        "tarp_ks_pvalue": tarp_pvalue,
        "mean_negative_log_prob": float(nltp[nltp.isfinite()].mean()),
        "infinite_negative_log_prob": int((~nltp.isfinite()).sum()),
    }
    return Calibration(sbc, hpd, num_posterior_samples, (ecp, alpha), nltp, numbers)
