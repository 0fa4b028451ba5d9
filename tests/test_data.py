"""The fixed validation set: its draws of (t, θ0) per validation pair."""

import torch

from fmpe.training.data import MIN_VALIDATION_POINTS, fixed_path_noise


def test_a_small_validation_set_gets_several_draws_per_pair():
    theta_z, x_z = torch.randn(100, 3), torch.randn(100, 2, 4)
    theta, x, t, theta0 = fixed_path_noise(theta_z, x_z, seed=0).tensors
    repeats = MIN_VALIDATION_POINTS // 100
    assert theta.shape == (repeats * 100, 3) and x.shape == (repeats * 100, 2, 4)
    for i in range(100):
        copies = (theta == theta_z[i]).all(1)
        assert copies.sum() == repeats
        assert (x[copies] == x_z[i]).all()
        assert len(set(t[copies].tolist())) == repeats  # a time of its own for each copy
        assert len(set(theta0[copies, 0].tolist())) == repeats
    # One time in each of the strata [k/n, (k+1)/n).
    n = len(t)
    assert torch.equal((t.sort().values * n).floor(), torch.arange(n, dtype=t.dtype))


def test_a_large_validation_set_gets_one_draw_per_pair():
    theta_z, x_z = (
        torch.randn(MIN_VALIDATION_POINTS + 1, 2),
        torch.randn(MIN_VALIDATION_POINTS + 1, 5),
    )
    theta, x, t, _ = fixed_path_noise(theta_z, x_z, seed=0).tensors
    assert torch.equal(theta, theta_z) and torch.equal(x, x_z)
    assert len(t) == MIN_VALIDATION_POINTS + 1
