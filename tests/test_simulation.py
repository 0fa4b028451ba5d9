"""Simulating in seeded chunks, in this process or in worker processes."""

import pytest
import torch
from torch.distributions import Independent, Normal

from fmpe.simulation import simulate

PRIOR = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)


def noisy_square(theta: torch.Tensor) -> torch.Tensor:
    """A module-level simulator, so that worker processes can unpickle it."""
    return theta**2 + torch.randn_like(theta)


def test_results_do_not_depend_on_the_number_of_workers():
    torch.manual_seed(0)
    theta, x = simulate(noisy_square, PRIOR, 1000, batch_size=100, show_progress=False)
    torch.manual_seed(0)
    theta_2, x_2 = simulate(
        noisy_square, PRIOR, 1000, batch_size=100, num_workers=2, show_progress=False
    )
    assert torch.equal(theta, theta_2) and torch.equal(x, x_2)
    assert x.shape == (1000, 3)
    # The noise is really drawn: the residuals have unit variance and differ between chunks.
    residual = x - theta**2
    assert 0.9 < residual.var().item() < 1.1
    assert not torch.equal(residual[:100], residual[100:200])


def test_simulating_leaves_the_callers_random_state_alone():
    torch.manual_seed(1)
    simulate(noisy_square, PRIOR, 10, show_progress=False)
    after = torch.rand(1)
    torch.manual_seed(1)
    PRIOR.sample((10,))
    torch.randint(2**62, ())
    assert torch.equal(after, torch.rand(1))


def test_bad_simulator_output_and_arguments_are_named():
    with pytest.raises(ValueError, match=r"theta \(10, d\) to a tensor \(10, ...\), got \(9, 3\)"):
        simulate(lambda theta: theta[:9], PRIOR, 10, show_progress=False)
    with pytest.raises(ValueError, match="num_workers"):
        simulate(noisy_square, PRIOR, 10, num_workers=-1, show_progress=False)
