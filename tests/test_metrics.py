"""Tests of fmpe.metrics, checked against sbibm's own metric code where it can be loaded."""

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from fmpe.metrics import c2st, mmd, negative_log_prob


def _load_sbibm_metric(name: str) -> ModuleType:
    """sbibm/metrics/<name>.py loaded on its own: importing sbibm.metrics pulls broken packages."""
    sbibm = pytest.importorskip("sbibm")
    path = Path(sbibm.__file__).parent / "metrics" / f"{name}.py"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    spec = importlib.util.spec_from_file_location(f"_sbibm_metrics_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sbibm_c2st():
    pytest.importorskip("sklearn")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    module = _load_sbibm_metric("c2st")

    def run(x: torch.Tensor, y: torch.Tensor) -> float:
        # Multi-threaded BLAS on tiny matrices is many times slower on a shared machine.
        with threadpoolctl.threadpool_limits(1):
            return module.c2st(x, y).item()

    return run


@pytest.fixture(scope="module")
def sbibm_mmd():
    return _load_sbibm_metric("mmd").mmd


def _gaussian(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return shift + scale * torch.randn(n, d, generator=g)


def _shifted_first_axis(n: int, d: int, seed: int, shift: float) -> torch.Tensor:
    samples = _gaussian(n, d, seed)
    samples[:, 0] += shift
    return samples


def _arc(n: int, seed: int) -> torch.Tensor:
    """(n, 2) points on a noisy half circle, a curved set unlike any Gaussian."""
    g = torch.Generator().manual_seed(seed)
    angle = math.pi * (torch.rand(n, generator=g) - 0.5)
    radius = 1 + 0.1 * torch.randn(n, generator=g)
    return torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)


SAMPLE_PAIRS = {
    "same-2d": lambda: (_gaussian(2000, 2, 0), _gaussian(2000, 2, 1)),
    "same-2d-unequal-sizes": lambda: (_gaussian(2003, 2, 0), _gaussian(1500, 2, 1)),
    "shift-0.3-2d": lambda: (_gaussian(2000, 2, 0), _shifted_first_axis(2000, 2, 1, 0.3)),
    "arc-vs-gaussian-2d": lambda: (_arc(2000, 0), _gaussian(2000, 2, 1, shift=0.5, scale=0.4)),
    "shift-1-5d": lambda: (_gaussian(1000, 5, 0), _shifted_first_axis(1000, 5, 1, 1.0)),
    "shift-2-10d": lambda: (_gaussian(1000, 10, 0), _gaussian(1000, 10, 1, shift=2.0)),
}


@pytest.mark.parametrize("pair", SAMPLE_PAIRS)
def test_c2st_agrees_with_sbibm(pair, sbibm_c2st):
    x, y = SAMPLE_PAIRS[pair]()
    assert c2st(x, y) == pytest.approx(sbibm_c2st(x, y), abs=0.02)


@pytest.mark.slow
@pytest.mark.parametrize(
    "pair",
    {
        "same-2d": lambda: (_gaussian(10_000, 2, 0), _gaussian(10_000, 2, 1)),
        "arc-vs-gaussian-2d": lambda: (_arc(10_000, 0), _gaussian(10_000, 2, 1, 0.5, 0.4)),
    }.items(),
    ids=lambda item: item[0],
)
def test_c2st_agrees_with_sbibm_at_benchmark_size(pair, sbibm_c2st):
    x, y = pair[1]()
    assert c2st(x, y) == pytest.approx(sbibm_c2st(x, y), abs=0.02)


def test_c2st_of_same_distribution_is_one_half():
    assert c2st(_gaussian(2000, 2, 0), _gaussian(2000, 2, 1)) == pytest.approx(0.5, abs=0.03)


def test_c2st_of_separated_sets_is_one():
    assert c2st(_gaussian(1000, 3, 0), _gaussian(1000, 3, 1, shift=10.0)) > 0.995


def test_c2st_accepts_numpy_and_is_deterministic():
    x, y = _gaussian(500, 2, 0), _shifted_first_axis(500, 2, 1, 1.0)
    assert c2st(x.numpy(), y.numpy().astype(np.float64)) == c2st(x, y)


def test_c2st_z_scores_with_the_reference():
    x, y = _gaussian(500, 2, 0), _shifted_first_axis(500, 2, 1, 1.0)
    scale, offset = torch.tensor([0.001, 100.0]), torch.tensor([3.0, -50.0])
    assert c2st(scale * x + offset, scale * y + offset) == pytest.approx(c2st(x, y), abs=0.01)


def test_c2st_seed_changes_the_folds():
    x, y = _gaussian(500, 2, 0), _shifted_first_axis(500, 2, 1, 0.5)
    assert c2st(x, y, seed=1) != c2st(x, y, seed=2)


def _mmd_full_matrix(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² from complete kernel matrices, bandwidth the lower median distance in x."""
    x, y = x.astype(np.float64), y.astype(np.float64)

    def squared_distances(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    within_x = np.sqrt(squared_distances(x, x)[np.triu_indices(len(x), k=1)])
    sigma = np.sort(within_x)[(len(within_x) - 1) // 2]

    def off_diagonal_mean(k):
        return (k.sum() - np.trace(k)) / (len(k) * (len(k) - 1))

    kernel = lambda a, b: np.exp(-squared_distances(a, b) / (2 * sigma**2))  # noqa: E731
    return (
        off_diagonal_mean(kernel(x, x)) + off_diagonal_mean(kernel(y, y)) - 2 * kernel(x, y).mean()
    )


@pytest.mark.parametrize("chunk_size", [7, 64, 10_000])
@pytest.mark.parametrize("n, m", [(300, 250), (251, 251)])
def test_mmd_matches_full_matrix_computation(n, m, chunk_size):
    x, y = _gaussian(n, 3, 0), _gaussian(m, 3, 1, shift=0.2, scale=1.1)
    expected = _mmd_full_matrix(x.numpy(), y.numpy())
    assert mmd(x, y, chunk_size=chunk_size) == pytest.approx(expected, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("shift", [0.0, 0.3, 2.0])
def test_mmd_agrees_with_sbibm(shift, sbibm_mmd):
    x, y = _gaussian(2000, 2, 0), _shifted_first_axis(2000, 2, 1, shift)
    assert mmd(x, y) == pytest.approx(sbibm_mmd(x, y).item(), rel=2e-3, abs=1e-6)


def test_mmd_is_accurate_far_from_the_origin():
    x, y = _gaussian(1000, 2, 0), _shifted_first_axis(1000, 2, 1, 0.3)
    assert mmd(x + 1000.0, y + 1000.0) == pytest.approx(mmd(x, y), rel=1e-3)


def test_mmd_is_near_zero_for_same_distribution_and_positive_when_shifted():
    x = _gaussian(2000, 2, 0)
    assert abs(mmd(x, _gaussian(2000, 2, 1))) < 1e-3
    assert mmd(x, _shifted_first_axis(2000, 2, 1, 0.5)) > 0.02


def test_negative_log_prob_of_standard_normal():
    def log_prob(theta: torch.Tensor) -> torch.Tensor:
        return torch.distributions.Normal(0.0, 1.0).log_prob(theta).sum(-1)

    theta = torch.tensor([1.0, -2.0])
    expected = math.log(2 * math.pi) + 0.5 * (1.0 + 4.0)
    assert negative_log_prob(log_prob, theta) == pytest.approx(expected)


def test_negative_log_prob_rejects_batched_theta():
    with pytest.raises(ValueError, match=r"shape \(d,\); got \(1, 2\)"):
        negative_log_prob(lambda theta: theta.sum(-1), torch.zeros(1, 2))


@pytest.mark.parametrize("metric", [c2st, mmd])
@pytest.mark.parametrize(
    "x, y, message",
    [
        (torch.zeros(10), torch.zeros(10, 2), r"shape \(num_samples, d\); got \(10,\)"),
        (torch.zeros(10, 2), torch.zeros(10, 2, 1), r"got \(10, 2, 1\)"),
        (torch.zeros(10, 2), torch.zeros(10, 3), r"shape \(m, 2\) .* \(10, 2\); got \(10, 3\)"),
        (torch.tensor([[0.0, math.nan]] * 10), torch.zeros(10, 2), "NaN or infinite"),
        (torch.randn(10, 2), torch.tensor([[math.inf, 0.0]] * 10), "NaN or infinite"),
    ],
)
def test_bad_shapes_and_values_are_rejected(metric, x, y, message):
    with pytest.raises(ValueError, match=message):
        metric(x, y)


def test_c2st_rejects_impossible_folds_and_constant_reference():
    x, y = _gaussian(3, 2, 0), _gaussian(3, 2, 1)
    with pytest.raises(ValueError, match="folds"):
        c2st(x, y, folds=7)
    with pytest.raises(ValueError, match="constant"):
        c2st(torch.ones(10, 2), _gaussian(10, 2, 0))


def test_mmd_needs_two_samples_per_set_and_spread_in_x():
    with pytest.raises(ValueError, match="at least 2"):
        mmd(torch.zeros(1, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="bandwidth"):
        mmd(torch.ones(5, 2), torch.zeros(5, 2))
