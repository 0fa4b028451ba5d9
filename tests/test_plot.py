"""Tests of fmpe.plot: figures have the panels and contents asked for; no image comparison."""

import io

import numpy as np
import pytest
import torch
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import StepPatch
from scipy import stats

from fmpe.diagnostics import credible_levels, ks_uniform
from fmpe.plot import coverage_plot, pairplot, pp_plot, sbc_rank_plot, tarp_plot


def _gaussian(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return shift + np.random.default_rng(seed).normal(size=(n, d))


def _renders(fig: Figure) -> None:
    fig.savefig(io.BytesIO(), format="png", dpi=40)


def _steps(ax) -> list[StepPatch]:
    return [p for p in ax.patches if isinstance(p, StepPatch)]


def _bands(ax) -> list[PolyCollection]:
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


# ----- pairplot ----------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 4])
def test_pairplot_has_the_lower_triangle_of_panels(d):
    fig = pairplot(_gaussian(2000, d, 0), truth=np.zeros(d))
    assert len(fig.axes) == d * (d + 1) // 2
    _renders(fig)


def test_pairplot_overlays_every_set_with_a_legend_and_marks_the_truth():
    sets = [
        _gaussian(3000, 3, 0),
        torch.from_numpy(_gaussian(1000, 3, 1, 0.5)),
        _gaussian(500, 3, 2),
    ]
    truth = torch.tensor([0.1, -0.2, 0.3])
    fig = pairplot(sets, ["a", "b", "c"], truth, set_labels=["x", "y", "z"])
    assert len(fig.axes) == 6
    diagonal = [ax for ax in fig.axes if not ax.get_yticks().size]
    assert len(diagonal) == 3
    for ax in diagonal:
        assert len(_steps(ax)) == 3  # one histogram per set
        assert any(np.allclose(line.get_xdata(), t) for line in ax.lines for t in truth.numpy())
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["x", "y", "z"]
    assert [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()] == ["a", "b", "c"]
    _renders(fig)


def test_pairplot_histograms_estimate_the_density_over_a_range_holding_the_truth():
    samples = _gaussian(20_000, 2, 0)
    truth = np.array([6.0, 0.0])  # far outside the samples
    fig = pairplot(samples, truth=truth, bins=30)
    first = fig.axes[0]
    low, high = first.get_xlim()
    assert low < -2.5 and high > truth[0]
    (histogram,) = _steps(first)
    values, edges, _ = histogram.get_data()
    centers = (edges[1:] + edges[:-1]) / 2
    np.testing.assert_allclose(values, stats.norm.pdf(centers), atol=0.03)


def test_pairplot_draws_into_a_given_figure():
    fig = Figure(figsize=(3, 3))
    assert pairplot(_gaussian(200, 2, 0), fig=fig) is fig


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"samples": [_gaussian(10, 2, 0), _gaussian(10, 3, 0)]}, "every sample set must have"),
        ({"samples": _gaussian(10, 2, 0), "truth": np.zeros(3)}, r"truth must have shape \(2,\)"),
        ({"samples": _gaussian(10, 2, 0), "labels": ["a"]}, "labels must have 2 entries"),
        ({"samples": np.full((10, 2), np.nan)}, "NaN"),
        ({"samples": _gaussian(10, 2, 0), "masses": [1.5]}, "masses must be probabilities"),
        ({"samples": []}, "non-empty list"),
    ],
)
def test_pairplot_refuses_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pairplot(**kwargs)


# ----- calibration plots -------------------------------------------------------------------


def _ranks(n: int, d: int, num_samples: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, num_samples + 1, (n, d), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("d", [1, 3, 5])
def test_sbc_rank_histogram_has_one_panel_per_parameter_counting_every_rank(d):
    fig = sbc_rank_plot(_ranks(400, d, 100), 100, labels=[f"p{j}" for j in range(d)])
    assert len(fig.axes) == d
    for j, ax in enumerate(fig.axes):
        (histogram,) = _steps(ax)
        assert histogram.get_data()[0].sum() == 400
        assert len(histogram.get_data()[0]) == 20  # default: N // 20 bins
        assert ax.get_title() == f"p{j}"
    _renders(fig)


def test_sbc_rank_ecdf_has_a_band_and_the_ecdf_per_parameter():
    fig = sbc_rank_plot(_ranks(300, 2, 50), 50, kind="ecdf", band="pointwise")
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert len(_bands(ax)) == 1
        (ecdf,) = [line for line in ax.lines if line.get_drawstyle() == "steps-post"]
        assert ecdf.get_ydata()[-1] == 1.0
    _renders(fig)


def test_sbc_rank_plot_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="kind must be one of"):
        sbc_rank_plot(_ranks(10, 1, 5), 5, kind="violin")


def test_coverage_and_tarp_plots_overlay_curves_and_draw_a_band_only_for_known_n():
    levels = np.linspace(0, 1, 11)
    fig = coverage_plot(levels, levels**2, label="q")
    ax = fig.axes[0]
    assert _bands(ax) == []
    coverage_plot(levels, levels, 200, label="exact", ax=ax)
    assert len(_bands(ax)) == 1
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["q", "exact"]
    _renders(fig)

    fig = tarp_plot(levels, levels, 200)
    assert len(fig.axes) == 1 and len(_bands(fig.axes[0])) == 1
    _renders(fig)


def test_simultaneous_band_is_the_ks_critical_value_around_the_diagonal():
    fig = coverage_plot(np.linspace(0, 1, 5), np.linspace(0, 1, 5), 100)
    (band,) = _bands(fig.axes[0])
    upper = band.get_paths()[0].vertices[:, 1].max()  # reached at α where clipping starts
    assert upper == pytest.approx(1.0)
    half_width = stats.kstwo.ppf(0.95, 100)
    vertices = band.get_paths()[0].vertices
    at_half = vertices[np.isclose(vertices[:, 0], 0.5)][:, 1]
    np.testing.assert_allclose(sorted(at_half), [0.5 - half_width, 0.5 + half_width])


def test_pp_plot_legend_gives_each_ks_pvalue_and_their_fisher_combination():
    levels = np.random.default_rng(0).uniform(size=(300, 3))
    levels[:, 2] = levels[:, 2] ** 1.5  # one miscalibrated parameter
    fig = pp_plot(levels, ["m1", "m2", "chi"])
    (legend,) = fig.legends
    pvalues = [stats.kstest(levels[:, j], "uniform").pvalue for j in range(3)]
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == [f"{name} ({p:.3g})" for name, p in zip(["m1", "m2", "chi"], pvalues)]
    combined = stats.combine_pvalues(pvalues, method="fisher").pvalue
    assert legend.get_title().get_text() == f"N = 300, combined p = {combined:.3g}"
    _renders(fig)


def test_pp_plot_accepts_ranks_and_one_parameter():
    ranks = _ranks(200, 1, 99)
    fig = Figure()
    pp_plot(ranks, ["a"], num_posterior_samples=99, ax=fig.add_subplot())
    (_, pvalue) = ks_uniform(credible_levels(ranks, 99)[:, 0])
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == f"a ({pvalue:.3g})"
    fig = pp_plot(np.random.default_rng(1).uniform(size=100))
    assert len(fig.axes) == 1


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: pp_plot(np.full((10, 2), 1.5)), r"must lie in \[0, 1\]"),
        (lambda: coverage_plot(np.linspace(0, 1, 3), np.linspace(0, 1, 4)), "one shape"),
        (lambda: tarp_plot(np.linspace(0, 1, 3), np.linspace(0, 1, 3), 5, band="x"), "band must"),
        (
            lambda: coverage_plot(np.linspace(0, 1, 3), np.linspace(0, 1, 3), 0),
            "must be an integer >= 1",
        ),
    ],
)
def test_calibration_plots_refuse_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
