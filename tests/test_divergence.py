import pytest
import torch

from fmpe.ode import SolverSettings, solve, standard_normal_log_prob
from fmpe.ode.divergence import exact_divergence, hutchinson_divergence


def nonlinear_field(theta: torch.Tensor) -> torch.Tensor:
    weight = torch.tensor([[0.3, -1.2, 0.5], [0.7, 0.1, -0.4], [-0.2, 0.9, 0.6]])
    return torch.tanh(theta @ weight) * theta.roll(1, dims=-1) + theta**2


def jacobian_trace(field, theta):
    traces = []
    for row in theta:
        jacobian = torch.autograd.functional.jacobian(lambda r: field(r.unsqueeze(0))[0], row)
        traces.append(jacobian.trace())
    return torch.stack(traces)


def test_exact_divergence_matches_jacobian_trace():
    theta = torch.randn(16, 3)
    value, divergence = exact_divergence(nonlinear_field, theta)
    assert torch.allclose(value, nonlinear_field(theta))
    assert torch.allclose(divergence, jacobian_trace(nonlinear_field, theta), atol=1e-5)


def test_hutchinson_is_unbiased():
    theta = torch.randn(4, 3)
    probes = torch.randn(20_000, 4, 3, generator=torch.Generator().manual_seed(0))
    _, estimate = hutchinson_divergence(nonlinear_field, theta, probes)
    exact = jacobian_trace(nonlinear_field, theta)
    assert torch.allclose(estimate, exact, atol=0.1 * exact.abs().max().item())


@pytest.mark.parametrize("method", ["dopri5_per_row", "dopri5"])
def test_log_density_of_linear_flow_is_exact(method):
    # v(t, θ) = A θ maps N(0, I) to N(0, e^A e^Aᵀ) at t = 1; the augmented ODE must give the
    # change of variables exactly: log q1(θ1) = log N(θ0) - trace(A).
    a = torch.tensor([[0.4, 0.3], [-0.2, -0.6]], dtype=torch.float64)
    theta0 = torch.randn(50, 2, dtype=torch.float64)
    settings = SolverSettings(method, rtol=1e-10, atol=1e-10)

    def linear(t, th, rows):
        return th @ a.T

    solution = solve(linear, theta0, 0.0, 1.0, settings, track_log_density=True)
    expected_end = theta0 @ torch.linalg.matrix_exp(a).T
    assert torch.allclose(solution.theta, expected_end, atol=1e-8)
    assert torch.allclose(solution.log_density_change, -a.trace().expand(50), atol=1e-8)
    back = solve(linear, expected_end, 1.0, 0.0, settings, track_log_density=True)
    assert torch.allclose(back.theta, theta0, atol=1e-8)
    log_q1 = standard_normal_log_prob(back.theta) - back.log_density_change
    assert torch.allclose(log_q1, standard_normal_log_prob(theta0) - a.trace(), atol=1e-8)
