"""Figures of posterior samples and of calibration diagnostics.

Figures are built as `matplotlib.figure.Figure` objects without pyplot, so they work under any
backend (Agg included), hold no global state and are freed once unreferenced. Save one with
`fig.savefig(path)`, or let a notebook display the returned figure; to draw into a pyplot
window, pass `fig=plt.figure()` or `ax=plt.gca()`.

The 95% bands of the ECDF-type plots (coverage, TARP, P–P, SBC ECDF) are simultaneous by
default: the Kolmogorov–Smirnov band that a calibrated curve of N observations leaves with
probability 5% over all levels at once, so a curve leaves it exactly when the KS test rejects
at 5%. `band="pointwise"` draws the binomial interval of each level on its own instead (the
GW convention), which a calibrated curve leaves somewhere far more often than 5% of the time.
Rank histograms use the pointwise binomial band of one bin's count.
"""

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from scipy import stats
from scipy.ndimage import gaussian_filter
from torch import Tensor

from fmpe.diagnostics.calibration import Calibration
from fmpe.diagnostics.coverage import coverage_curve
from fmpe.diagnostics.lc2st import LC2STResult
from fmpe.diagnostics.uniformity import (
    binomial_band,
    check_levels,
    credible_levels,
    ks_band_halfwidth,
    ks_uniform,
)

ArrayLike = Tensor | np.ndarray
BANDS = ("simultaneous", "pointwise")
RANK_PLOT_KINDS = ("hist", "ecdf")
# Masses of the 2-D contours: those of the 1σ and 2σ ellipses of a 2-D Gaussian.
CONTOUR_MASSES = (1 - math.exp(-0.5), 1 - math.exp(-2.0))
_BAND_COLOR = "0.85"
_PANEL_INCHES = 1.9
_MARGIN_INCHES = 0.8


# ----- samples -----------------------------------------------------------------------------


def pairplot(
    samples: ArrayLike | Sequence[ArrayLike],
    labels: Sequence[str] | None = None,
    truth: ArrayLike | None = None,
    *,
    set_labels: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
    bins: int = 40,
    masses: Sequence[float] = CONTOUR_MASSES,
    smooth: float = 1.0,
    fig: Figure | None = None,
) -> Figure:
    """Corner plot of one or more sample sets: 1-D histograms on the diagonal, contours of the
    highest-density regions holding `masses` below it, and the true value marked.

    Args:
        samples: (n, d), or a list of sets (n_k, d) of the same d, drawn over each other.
        labels: d parameter names for the axes.
        truth: (d,) the true parameter, drawn as black lines.
        set_labels: one legend entry per sample set.
        colors: one matplotlib color per sample set; default C0, C1, ….
        bins: histogram bins per axis (1-D and 2-D).
        masses: probability masses of the 2-D contours, each in (0, 1), as shares of the
            samples inside the plotted range (which holds the central 99% of each marginal).
        smooth: width in bins of the Gaussian smoothing of the 2-D histograms; 0 for none.
        fig: an empty figure to draw into; default a new one sized to d.
    """
    sets = _sample_sets(samples)
    d = sets[0].shape[1]
    labels = _names(labels, d, "labels", "θ")
    colors = _names(colors, len(sets), "colors", None)
    if set_labels is not None:
        set_labels = _names(set_labels, len(sets), "set_labels", None)
    if truth is not None:
        truth = _as_array(truth, "truth")
        if truth.shape != (d,):
            raise ValueError(f"truth must have shape ({d},), got {truth.shape}")
    if not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an int of at least 2, got {bins!r}")
    masses = sorted(masses)
    if not masses or not all(0 < m < 1 for m in masses):
        raise ValueError(f"masses must be probabilities in (0, 1), got {masses!r}")

    if fig is None:
        side = max(_PANEL_INCHES, 4.0 / d) * d + _MARGIN_INCHES + 0.15
        fig = Figure(figsize=(side, side))
    width, height = fig.get_size_inches()
    limits = [_plot_range(sets, j, truth) for j in range(d)]
    # Fixed margins in inches leave room for the rotated tick labels and the axis labels.
    grid = fig.add_gridspec(
        d,
        d,
        left=_MARGIN_INCHES / width,
        bottom=_MARGIN_INCHES / height,
        right=1 - 0.15 / width,
        top=1 - 0.15 / height,
        hspace=0.06,
        wspace=0.06,
    )
    for i in range(d):
        for j in range(i + 1):
            ax = fig.add_subplot(grid[i, j])
            if i == j:
                _draw_marginal(ax, sets, j, limits[j], bins, colors)
            else:
                _draw_joint(ax, sets, (j, i), (limits[j], limits[i]), bins, masses, smooth, colors)
            if truth is not None:
                ax.axvline(truth[j], color="k", lw=1)
                if i != j:
                    ax.axhline(truth[i], color="k", lw=1)
                    ax.plot(truth[j], truth[i], "ks", ms=3)
            _format_corner_axes(ax, i, j, d, labels)
    if set_labels is not None:
        handles = [Line2D([], [], color=c) for c in colors]
        fig.legend(handles, set_labels, loc="upper right", frameon=False, fontsize="large")
    return fig


def _sample_sets(samples: ArrayLike | Sequence[ArrayLike]) -> list[np.ndarray]:
    sets = [samples] if isinstance(samples, (Tensor, np.ndarray)) else list(samples)
    if not sets:
        raise ValueError("samples must be an (n, d) array or a non-empty list of them")
    sets = [_as_array(s, f"samples[{k}]") for k, s in enumerate(sets)]
    d = sets[0].shape[1] if sets[0].ndim == 2 else None
    for k, s in enumerate(sets):
        if s.ndim != 2 or s.shape[1] != d or len(s) < 2:
            raise ValueError(
                f"every sample set must have shape (n, d) with n >= 2 and the d of the first "
                f"set ({d}); samples[{k}] has shape {s.shape}"
            )
        if not np.isfinite(s).all():
            raise ValueError(f"samples[{k}] contains NaN or infinite values")
    return sets


def _plot_range(sets: list[np.ndarray], j: int, truth: np.ndarray | None) -> tuple[float, float]:
    """Axis range of parameter j: the central 99% of every set and the truth, padded by 5%."""
    low = min(np.quantile(s[:, j], 0.005) for s in sets)
    high = max(np.quantile(s[:, j], 0.995) for s in sets)
    if truth is not None:
        low, high = min(low, truth[j]), max(high, truth[j])
    pad = 0.05 * (high - low) if high > low else 0.5
    return low - pad, high + pad


def _draw_marginal(ax: Axes, sets, j: int, limits, bins: int, colors) -> None:
    edges = np.linspace(*limits, bins + 1)
    for s, color in zip(sets, colors):
        density, _ = np.histogram(s[:, j], bins=edges, density=True)
        ax.stairs(density, edges, color=color)
    ax.set_xlim(limits)
    ax.set_ylim(bottom=0)
    ax.set_yticks([])


def _draw_joint(ax: Axes, sets, dims, limits, bins: int, masses, smooth: float, colors) -> None:
    (x, y), (x_limits, y_limits) = dims, limits
    x_edges, y_edges = np.linspace(*x_limits, bins + 1), np.linspace(*y_limits, bins + 1)
    x_centers, y_centers = (x_edges[1:] + x_edges[:-1]) / 2, (y_edges[1:] + y_edges[:-1]) / 2
    regions = []
    for s, color in zip(sets, colors):
        counts, _, _ = np.histogram2d(s[:, x], s[:, y], bins=(x_edges, y_edges))
        counts = gaussian_filter(counts, smooth) if smooth > 0 else counts
        thresholds = _hpd_thresholds(counts, masses)
        if thresholds:
            regions.append((counts.T, thresholds, color))
    # All fills first and all lines over them, so that no set's shading hides another's lines.
    for density, thresholds, color in regions:
        uppers = [*thresholds[1:], density.max() * (1 + 1e-9)]
        opacities = np.linspace(0.15, 0.4, len(thresholds))  # darker towards the mode
        for threshold, upper, opacity in zip(thresholds, uppers, opacities):
            ax.contourf(
                x_centers, y_centers, density, [threshold, upper], colors=[color], alpha=opacity
            )
    for density, thresholds, color in regions:
        ax.contour(x_centers, y_centers, density, thresholds, colors=[color], linewidths=1)
    ax.set_xlim(x_limits)
    ax.set_ylim(y_limits)


def _hpd_thresholds(density: np.ndarray, masses: Sequence[float]) -> list[float]:
    """Increasing density levels whose super-level sets hold the given masses (largest mass
    first); levels that coincide on a coarse histogram are merged."""
    values = np.sort(density.ravel())[::-1]
    cumulative = np.cumsum(values) / values.sum()
    indices = np.minimum(np.searchsorted(cumulative, masses), len(values) - 1)
    levels = np.unique(values[indices])
    return [float(v) for v in levels if v > 0]


def _format_corner_axes(ax: Axes, i: int, j: int, d: int, labels: list[str]) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(3, prune="both"))
    if i != j:
        ax.yaxis.set_major_locator(MaxNLocator(3, prune="both"))
    if i == d - 1:
        ax.set_xlabel(labels[j])
        ax.tick_params(axis="x", labelrotation=45)
    else:
        ax.tick_params(axis="x", labelbottom=False)
    if j == 0 and i > 0:
        ax.set_ylabel(labels[i])
        ax.tick_params(axis="y", labelrotation=45)
    else:
        ax.tick_params(axis="y", labelleft=False)


# ----- calibration -------------------------------------------------------------------------


def calibration_figures(
    calibration: Calibration, labels: Sequence[str] | None = None
) -> dict[str, Figure]:
    """The figures of `fmpe.diagnostics.calibrate`'s result by file name: SBC rank ECDFs,
    HPD coverage, TARP and the P–P plot, with `labels` naming the parameters."""
    c, n = calibration, len(calibration.hpd_ranks)
    labels = None if labels is None else list(labels)
    return {
        "sbc_ranks.png": sbc_rank_plot(
            c.sbc_ranks, c.num_posterior_samples, kind="ecdf", labels=labels
        ),
        "coverage.png": coverage_plot(
            *coverage_curve(c.hpd_ranks, c.num_posterior_samples), num_observations=n
        ),
        "tarp.png": tarp_plot(*c.tarp, num_observations=n),
        "pp_plot.png": pp_plot(
            c.sbc_ranks, num_posterior_samples=c.num_posterior_samples, labels=labels
        ),
    }


def sbc_rank_plot(
    ranks: ArrayLike,
    num_posterior_samples: int,
    kind: str = "hist",
    *,
    labels: Sequence[str] | None = None,
    num_bins: int | None = None,
    confidence: float = 0.95,
    band: str = "simultaneous",
    fig: Figure | None = None,
) -> Figure:
    """One panel per parameter: the SBC ranks against their distribution under calibration.

    Args:
        ranks: (N, d) from `fmpe.diagnostics.run_sbc`; num_posterior_samples: its L.
        kind: "hist", a histogram of the ranks with the pointwise binomial band of a bin's
            count; or "ecdf", the ECDF of the ranks' credible levels with a band (`band`).
        num_bins: histogram bins; default N // 20 (about 20 ranks a bin), within [1, 50].
        band: for kind="ecdf", "simultaneous" or "pointwise" (see the module docstring).
        fig: an empty figure to draw into; default a new one.
    """
    if kind not in RANK_PLOT_KINDS:
        raise ValueError(f"kind must be one of {RANK_PLOT_KINDS}, got {kind!r}")
    levels = _levels_of(ranks, num_posterior_samples)
    n, d = levels.shape
    labels = _names(labels, d, "labels", "θ")
    num_bins = min(max(n // 20, 1), 50) if num_bins is None else num_bins
    if not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int, got {num_bins!r}")

    columns = min(d, 4)
    rows = math.ceil(d / columns)
    fig = fig or Figure(figsize=(2.8 * columns, 2.4 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for j, ax in enumerate(axes[:d]):
        if kind == "hist":
            _draw_rank_histogram(ax, levels[:, j], num_posterior_samples, num_bins, confidence)
        else:
            _draw_band(ax, n, confidence, band)
            _draw_ecdf(ax, levels[:, j], None, color="C0")
            _format_calibration_axes(ax, "ECDF")
        ax.set_title(labels[j])
    for ax in axes[d:]:
        fig.delaxes(ax)
    return fig


def _draw_rank_histogram(
    ax: Axes, levels: np.ndarray, num_posterior_samples: int, num_bins: int, confidence: float
) -> None:
    # Credible levels scaled by L + 1 are rank + jitter in [0, L + 1): equal-width bins there
    # hold exactly equal probability under calibration, whatever L and the number of bins.
    top = num_posterior_samples + 1
    edges = np.linspace(0, top, num_bins + 1)
    counts, _ = np.histogram(levels * top, bins=edges)
    low, high = binomial_band(len(levels), 1 / num_bins, confidence)
    ax.axhspan(low, high, color=_BAND_COLOR, lw=0)
    ax.axhline(len(levels) / num_bins, color="0.5", lw=1)
    ax.stairs(counts, edges, color="C0")
    ax.set_xlim(0, top)
    ax.set_xlabel("rank")


def coverage_plot(
    levels: ArrayLike,
    coverage: ArrayLike,
    num_observations: int | None = None,
    *,
    label: str | None = None,
    confidence: float = 0.95,
    band: str = "simultaneous",
    ax: Axes | None = None,
) -> Figure:
    """Expected coverage of highest-density regions against their credibility level.

    Args:
        levels, coverage: (G,) from `fmpe.diagnostics.expected_coverage`.
        num_observations: N behind the curve; with it, the band a calibrated curve stays in.
        label: legend entry of this curve (draw more curves by passing the same ax).
        ax: an axes to draw into; default one on a new figure.
    """
    return _curve_plot(
        levels, coverage, num_observations, label, confidence, band, ax, "expected coverage"
    )


def tarp_plot(
    ecp: ArrayLike,
    alpha: ArrayLike,
    num_observations: int | None = None,
    *,
    label: str | None = None,
    confidence: float = 0.95,
    band: str = "simultaneous",
    ax: Axes | None = None,
) -> Figure:
    """TARP expected coverage probability against the credibility level α.

    Args:
        ecp, alpha: (G,) from `fmpe.diagnostics.run_tarp`.
        num_observations: N behind the curve; with it, the band a calibrated curve stays in.
        label: legend entry of this curve (draw more curves by passing the same ax).
        ax: an axes to draw into; default one on a new figure.
    """
    return _curve_plot(
        alpha, ecp, num_observations, label, confidence, band, ax, "expected coverage (TARP)"
    )


def pp_plot(
    levels: ArrayLike,
    labels: Sequence[str] | None = None,
    *,
    num_posterior_samples: int | None = None,
    confidence: float = 0.95,
    band: str = "simultaneous",
    ax: Axes | None = None,
) -> Figure:
    """P–P plot: per parameter, the share of observations whose true value lies below each
    credible level of its marginal posterior, against that level.

    The legend gives each parameter's KS p-value against uniformity and their combination by
    Fisher's method, which assumes independent parameters (correlated ones make it
    anticonservative).

    Args:
        levels: (N, d) credible levels in [0, 1] of the true values (for each observation, the
            share of posterior samples below θ*); or, with num_posterior_samples, the integer
            ranks of `fmpe.diagnostics.run_sbc`, turned into levels by `credible_levels`.
        labels: d parameter names.
        ax: an axes to draw into; default one on a new figure.
    """
    if num_posterior_samples is not None:
        levels = _levels_of(levels, num_posterior_samples)
    levels = check_levels(levels)
    if levels.ndim == 1:
        levels = levels[:, None]
    if levels.ndim != 2:
        raise ValueError(f"levels must have shape (N, d), got {levels.shape}")
    n, d = levels.shape
    labels = _names(labels, d, "labels", "θ")
    owns_figure = ax is None
    fig, ax = _figure_and_axes(ax, width=6.4)
    _, pvalues = ks_uniform(levels)
    pvalues = np.atleast_1d(pvalues)
    _draw_band(ax, n, confidence, band)
    for j in range(d):
        # Ten colours, then the same ten dashed, then dotted.
        style = {"color": f"C{j % 10}", "linestyle": ("-", "--", ":")[j // 10 % 3]}
        _draw_ecdf(ax, levels[:, j], f"{labels[j]} ({pvalues[j]:.3g})", **style)
    combined = stats.combine_pvalues(pvalues, method="fisher").pvalue if d > 1 else pvalues[0]
    _format_calibration_axes(ax, "fraction of true values below the quantile")
    title = f"N = {n}, combined p = {combined:.3g}"
    if owns_figure:  # room for many parameters beside the axes
        fig.legend(title=title, fontsize="small", loc="outside right upper")
    else:
        ax.legend(title=title, fontsize="small", loc="lower right")
    return fig


def lc2st_plot(result: LC2STResult, title: str | None = None) -> Figure:
    """L-C2ST at one observation: the statistic against the shuffled-label classifiers'
    (left), and the classifier's probabilities d(θ', x_o), θ' ~ q(θ | x_o), which stay near
    1/2 where the posterior is right (right)."""
    figure = Figure(figsize=(8.4, 3.2), layout="constrained")
    null_axes, probability_axes = figure.subplots(1, 2)
    null_axes.hist(result.null_statistics.numpy(), bins=20, color="0.7", label="shuffled labels")
    null_axes.axvline(result.statistic, color="C3", label=f"observed (p = {result.p_value:.3f})")
    null_axes.set_xlabel("mean of (d − 1/2)²")
    null_axes.set_ylabel("classifiers")
    null_axes.legend(frameon=False)
    probability_axes.hist(result.probabilities.numpy(), bins=40, range=(0, 1), color="C0")
    probability_axes.axvline(0.5, color="k", lw=0.8)
    probability_axes.set_xlabel("d(θ', x_o): probability of a joint pair")
    probability_axes.set_ylabel("samples of q(θ | x_o)")
    if title is not None:
        figure.suptitle(title)
    return figure


def _curve_plot(
    x: ArrayLike,
    y: ArrayLike,
    num_observations: int | None,
    label: str | None,
    confidence: float,
    band: str,
    ax: Axes | None,
    ylabel: str,
) -> Figure:
    x, y = check_levels(x, "the credibility levels"), check_levels(y, "the coverage")
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(
            f"the curve and its levels must have one shape (G,), got {y.shape} and {x.shape}"
        )
    fig, ax = _figure_and_axes(ax)
    if num_observations is not None:
        _draw_band(ax, num_observations, confidence, band)
    ax.plot(x, y, label=label)
    _format_calibration_axes(ax, ylabel)
    if label is not None:
        ax.legend()
    return fig


def _draw_ecdf(ax: Axes, levels: np.ndarray, label: str | None, **style) -> None:
    steps = np.concatenate([[0.0], np.sort(levels), [1.0]])
    heights = np.concatenate([[0.0], np.arange(1, len(levels) + 1) / len(levels), [1.0]])
    ax.plot(steps, heights, drawstyle="steps-post", label=label, **style)


def _draw_band(ax: Axes, n: int, confidence: float, band: str) -> None:
    """The region a calibrated curve of n observations stays in, around the diagonal."""
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    alpha = np.linspace(0, 1, 201)
    if band == "simultaneous":
        half = ks_band_halfwidth(n, confidence)
        low, high = np.clip(alpha - half, 0, 1), np.clip(alpha + half, 0, 1)
    else:
        low, high = np.transpose([binomial_band(n, a, confidence) for a in alpha]) / n
    ax.fill_between(alpha, low, high, color=_BAND_COLOR, lw=0)
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1)


def _format_calibration_axes(ax: Axes, ylabel: str) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("credibility level")
    ax.set_ylabel(ylabel)


# ----- shared ------------------------------------------------------------------------------


def _figure_and_axes(ax: Axes | None, width: float = 4.2) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=(width, 4.0), layout="constrained")
    return fig, fig.add_subplot()


def _levels_of(ranks: ArrayLike, num_posterior_samples: int) -> np.ndarray:
    """(N, d) integer ranks -> (N, d) credible levels."""
    ranks = torch.as_tensor(ranks)
    if ranks.dim() != 2:
        raise ValueError(f"ranks must have shape (N, d), got {tuple(ranks.shape)}")
    return credible_levels(ranks, num_posterior_samples).numpy()


def _as_array(value: ArrayLike, name: str) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        value = np.asarray(value)
    if not np.issubdtype(value.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {value.dtype}")
    return value.astype(np.float64)


def _names(names: Sequence[str] | None, count: int, what: str, prefix: str | None) -> list[str]:
    """`count` names: the given ones, checked, or defaults (prefix_0, … or C0, C1, …)."""
    if names is None:
        if prefix is None:
            return [f"C{k % 10}" for k in range(count)]
        return [f"${prefix}_{{{k}}}$" for k in range(count)]
    names = list(names)
    if len(names) != count:
        raise ValueError(f"{what} must have {count} entries, got {len(names)}")
    return names
