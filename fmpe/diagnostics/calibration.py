"""All calibration checks of a posterior in one call, with their figures: SBC, highest-density
coverage, TARP and −log q(θ*), over pairs (θ*, x) drawn from the prior and the simulator."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from fmpe.diagnostics.coverage import check_coverage, coverage_curve, hpd_ranks, negative_log_prob
from fmpe.diagnostics.sbc import check_sbc, run_sbc
from fmpe.diagnostics.tarp import check_tarp, run_tarp


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

    def write(self, folder: str | Path, labels: list[str] | None = None) -> list[Path]:
        """Writes `calibration.json` and the figures (SBC ranks, coverage, TARP, P–P) into
        `folder`; returns their paths."""
        from fmpe import plot

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        n = len(self.hpd_ranks)
        figures = {
            "sbc_ranks.png": plot.sbc_rank_plot(
                self.sbc_ranks, self.num_posterior_samples, kind="ecdf", labels=labels
            ),
            "coverage.png": plot.coverage_plot(
                *coverage_curve(self.hpd_ranks, self.num_posterior_samples), num_observations=n
            ),
            "tarp.png": plot.tarp_plot(*self.tarp, num_observations=n),
            "pp_plot.png": plot.pp_plot(
                self.sbc_ranks, num_posterior_samples=self.num_posterior_samples, labels=labels
            ),
        }
        paths = []
        for name, figure in figures.items():
            figure.savefig(folder / name, dpi=120, bbox_inches="tight")
            paths.append(folder / name)
        numbers = folder / "calibration.json"
        numbers.write_text(json.dumps(self.numbers, indent=2))
        return [numbers, *paths]


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
    """SBC, HPD coverage, TARP and −log q(θ*) of `posterior` on pairs θ* (N, d), x (N, ...)."""
    options = {"chunk_size": chunk_size, "show_progress": show_progress}
    sbc = run_sbc(thetas, xs, posterior, num_posterior_samples, **options)
    hpd = hpd_ranks(thetas, xs, posterior, num_posterior_samples, **options)
    ecp, alpha = run_tarp(thetas, xs, posterior, num_posterior_samples, seed=seed, **options)
    nltp = negative_log_prob(thetas, xs, posterior, **options)
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
