import pytest
import torch
from scipy import stats

from fmpe.flow_matching import interpolate, sample_time, target_velocity, time_log_density


@pytest.mark.parametrize("exponent", [-0.5, 0.0, 1.0, 4.0])
def test_time_prior_follows_power_law(exponent):
    t = sample_time(20_000, exponent, generator=torch.Generator().manual_seed(0))
    assert t.shape == (20_000,) and t.min() >= 0 and t.max() <= 1
    # The CDF of p(t) = (1 + α) t^α is t^(1 + α).
    result = stats.kstest(t.numpy(), lambda s: s ** (1 + exponent))
    assert result.pvalue > 1e-3


def test_time_log_density_integrates_to_one():
    t = torch.linspace(1e-6, 1, 200_001, dtype=torch.float64)
    for exponent in (0.0, 1.0, 4.0):
        mass = torch.trapezoid(time_log_density(t, exponent).exp(), t)
        assert abs(mass.item() - 1) < 1e-4


def test_time_prior_rejects_non_integrable_exponent():
    with pytest.raises(ValueError, match="> -1"):
        sample_time(10, -1.0)


def test_path_ends_at_base_and_data():
    theta0, theta1 = torch.randn(5, 3), torch.randn(5, 3)
    sigma_min = 1e-3
    assert torch.allclose(interpolate(theta0, theta1, torch.zeros(5), sigma_min), theta0)
    at_one = interpolate(theta0, theta1, torch.ones(5), sigma_min)
    assert torch.allclose(at_one, theta1 + sigma_min * theta0)


def test_target_velocity_is_time_derivative_of_path():
    theta0 = torch.randn(7, 4, dtype=torch.float64)
    theta1 = torch.randn(7, 4, dtype=torch.float64)
    t = torch.rand(7, dtype=torch.float64, requires_grad=True)
    path = interpolate(theta0, theta1, t, 1e-4)
    derivative = torch.stack(
        [torch.autograd.grad(path[:, j].sum(), t, retain_graph=True)[0] for j in range(4)], dim=1
    )
    assert torch.allclose(derivative, target_velocity(theta0, theta1, 1e-4))
