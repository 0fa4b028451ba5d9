"""Couplings of base draws with parameters: exact minibatch OT and the registry."""

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fmpe import FMPE, register_coupling
from fmpe.coupling import get_coupling, minibatch_ot_coupling


def _pairing_cost(theta0, theta, x, x_weight, order):
    return sum(
        (theta0[j] - theta[i]).pow(2).sum() + x_weight * (x[j] - x[i]).pow(2).sum()
        for i, j in enumerate(order)
    )


@pytest.mark.parametrize("x_weight", [0.0, 1.0])
def test_ot_coupling_is_the_cheapest_permutation(x_weight):
    generator = torch.Generator().manual_seed(0)
    theta0, theta, x = (torch.randn(6, 2, generator=generator) for _ in range(3))
    coupled = minibatch_ot_coupling(theta0, theta, x, x_weight)
    order = [int((theta0 == row).all(-1).nonzero()) for row in coupled]
    assert sorted(order) == list(range(6))  # a reordering of the draws, nothing new
    brute_force = min(
        _pairing_cost(theta0, theta, x, x_weight, p) for p in itertools.permutations(range(6))
    )
    assert _pairing_cost(theta0, theta, x, x_weight, order) == pytest.approx(brute_force.item())


def test_a_heavy_observation_weight_keeps_the_independent_pairs():
    generator = torch.Generator().manual_seed(1)
    theta0, theta = torch.randn(32, 2, generator=generator), torch.randn(32, 2, generator=generator)
    x = torch.arange(32.0).unsqueeze(-1)
    assert torch.equal(minibatch_ot_coupling(theta0, theta, x, x_weight=100.0), theta0)


def test_ot_straightens_paths_in_a_batch():
    generator = torch.Generator().manual_seed(2)
    theta0, theta = (
        torch.randn(256, 3, generator=generator),
        torch.randn(256, 3, generator=generator),
    )
    coupled = get_coupling("ot")(theta0, theta, torch.zeros(256, 1))
    assert (coupled - theta).pow(2).sum(-1).mean() < 0.5 * (theta0 - theta).pow(2).sum(-1).mean()


def test_unknown_coupling_names_the_known_ones(gaussian):
    with pytest.raises(ValueError, match="unknown coupling 'sinkhorn'; registered: .*independent"):
        FMPE(gaussian.simulator, gaussian.prior, coupling="sinkhorn")


def test_registered_coupling_trains(gaussian):
    calls = []

    def reversed_pairs(theta0, theta, x):
        calls.append(len(theta0))
        return theta0.flip(0)

    register_coupling("reversed_for_test", reversed_pairs)
    with pytest.raises(ValueError, match="already registered"):
        register_coupling("reversed_for_test", reversed_pairs)
    torch.manual_seed(0)
    FMPE(gaussian.simulator, gaussian.prior, coupling="reversed_for_test").train(
        300, max_epochs=1, batch_size=100, show_progress=False
    )
    assert calls and all(n <= 100 for n in calls)


def test_coupling_benchmark_smoke():
    script = Path(__file__).parents[1] / "benchmarks" / "coupling.py"
    done = subprocess.run(
        [sys.executable, str(script), "--smoke"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| gaussian_linear")]
    assert {line.split("|")[3].strip() for line in table} == {"independent", "ot", "conditional_ot"}
    assert len(table) == 6
