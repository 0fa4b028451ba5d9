"""The embedded Runge–Kutta pairs of the per-row solver, and the late time grid."""

import math

import pytest
import torch

from fmpe.ode import SolverSettings, solve, standard_normal_log_prob
from fmpe.ode.dopri import DORMAND_PRINCE_5, TSITOURAS_5, Tableau, solve_per_row

PAIRS = {"dopri5": DORMAND_PRINCE_5, "tsit5": TSITOURAS_5}


def order_conditions(tableau: Tableau, weights) -> list[tuple[float, float]]:
    """(Φ(τ), 1/γ(τ)) for Butcher's 17 rooted trees τ of up to five nodes: the weights have
    order p when the conditions of every tree of up to p nodes hold (given c = A·1)."""
    s = len(tableau.c)
    a = torch.zeros(s, s, dtype=torch.float64)
    for i, row in enumerate(tableau.a):
        a[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
    b = torch.tensor(weights, dtype=torch.float64)
    c = torch.tensor(tableau.c, dtype=torch.float64)
    ac, ac2, aac = a @ c, a @ c**2, a @ (a @ c)
    trees = [
        (b.sum(), 1),  # one node
        (b @ c, 2),
        (b @ c**2, 3),
        (b @ ac, 6),
        (b @ c**3, 4),
        (b @ (c * ac), 8),
        (b @ ac2, 12),
        (b @ aac, 24),
        (b @ c**4, 5),
        (b @ (c**2 * ac), 10),
        (b @ ac**2, 20),
        (b @ (c * ac2), 15),
        (b @ (c * aac), 30),
        (b @ (a @ c**3), 20),
        (b @ (a @ (c * ac)), 40),
        (b @ (a @ ac2), 60),
        (b @ (a @ aac), 120),
    ]
    return [(float(phi), 1 / gamma) for phi, gamma in trees]


@pytest.mark.parametrize("name", PAIRS)
def test_pairs_satisfy_the_order_conditions(name):
    tableau = PAIRS[name]
    for c, row in zip(tableau.c, tableau.a):
        assert sum(row) == pytest.approx(c, abs=1e-12)
    # The kept solution has order 5: all 17 conditions.
    for phi, expected in order_conditions(tableau, tableau.b):
        assert phi == pytest.approx(expected, abs=1e-12)
    # The embedded one has order 4 exactly: the 8 conditions of up to four nodes hold, and
    # the error estimate is of order 5 because some five-node condition fails.
    embedded = [b - e for b, e in zip(tableau.b, tableau.e)]
    conditions = order_conditions(tableau, embedded)
    for phi, expected in conditions[:8]:
        assert phi == pytest.approx(expected, abs=1e-12)
    assert max(abs(phi - expected) for phi, expected in conditions[8:]) > 1e-4
    # First same as last: the last stage is taken at the new solution.
    assert tableau.fsal and tableau.a[-1] == tableau.b[:-1] and tableau.c[-1] == 1.0


@pytest.mark.parametrize("name", PAIRS)
def test_per_row_pairs_match_the_closed_form(name):
    """y' = p y², y(0) = 1: y = 1 / (1 - p t), a different p in every row."""
    p = torch.tensor([[0.1], [-1.0], [0.5], [-3.0]], dtype=torch.float64)
    times = torch.tensor([0.0, 0.5, 1.5], dtype=torch.float64)
    y = solve_per_row(
        lambda t, y, rows: p[rows] * y**2,
        torch.ones(4, 1, dtype=torch.float64),
        times,
        rtol=1e-9,
        atol=1e-9,
        tableau=PAIRS[name],
    )
    torch.testing.assert_close(y[:, :, 0], 1 / (1 - p * times), rtol=1e-7, atol=0)


def test_tsitouras_takes_fewer_steps_than_dormand_prince_for_the_same_error():
    # Its error constants are smaller, which is why it is offered.
    p = torch.linspace(-2.0, 0.6, 64, dtype=torch.float64)[:, None]
    exact = 1 / (1 - p)
    results = {}
    for name, tableau in PAIRS.items():
        calls = 0

        def field(t, y, rows):
            nonlocal calls
            calls += 1
            return p[rows] * y**2

        times = torch.tensor([1.0], dtype=torch.float64)
        y0 = torch.ones(64, 1, dtype=torch.float64)
        y = solve_per_row(field, y0, times, rtol=1e-6, atol=1e-6, tableau=tableau)
        results[name] = (calls, (y[:, 0] - exact).abs().max().item())
    (dp_calls, dp_error), (ts_calls, ts_error) = results["dopri5"], results["tsit5"]
    assert ts_error < 3 * dp_error and ts_calls <= dp_calls, results


def test_tsit5_per_row_gives_exact_log_densities_of_a_linear_flow():
    a = torch.tensor([[0.4, 0.3], [-0.2, -0.6]], dtype=torch.float64)
    theta1 = torch.randn(40, 2, dtype=torch.float64)
    settings = SolverSettings("tsit5_per_row", rtol=1e-10, atol=1e-10)
    back = solve(lambda t, th, rows: th @ a.T, theta1, 1.0, 0.0, settings, track_log_density=True)
    torch.testing.assert_close(back.theta, theta1 @ torch.linalg.matrix_exp(-a).T)
    log_q1 = standard_normal_log_prob(back.theta) - back.log_density_change
    expected = standard_normal_log_prob(theta1 @ torch.linalg.matrix_exp(-a).T) - a.trace()
    torch.testing.assert_close(log_q1, expected)


def late_peak(t: torch.Tensor, y: torch.Tensor, rows) -> torch.Tensor:
    """dy/dt = k e^{k (t - 1)}: all of the change in the last few hundredths of [0, 1]."""
    k = 30.0
    rate = k * torch.exp(k * (t - 1.0))
    return (rate if rate.dim() == 0 else rate[:, None]) * torch.ones_like(y)


@pytest.mark.parametrize("method", ["rk4", "midpoint", "euler"])
def test_the_late_grid_resolves_a_field_that_curves_near_one(method):
    y0 = torch.zeros(3, 1, dtype=torch.float64)
    exact = 1 - math.exp(-30.0)
    errors = {}
    for grid in ("uniform", "late"):
        settings = SolverSettings(method, steps=8, time_grid=grid)
        errors[grid] = (solve(late_peak, y0, 0.0, 1.0, settings).theta - exact).abs().max()
    assert errors["late"] < errors["uniform"] / 4, errors


@pytest.mark.parametrize("method", ["rk4", "dopri5_per_row", "dopri5"])
def test_the_late_grid_keeps_the_solution(method):
    # Any start and end in [0, 1], either direction, densities included.
    a = torch.tensor([[0.4, 0.3], [-0.2, -0.6]], dtype=torch.float64)
    theta = torch.randn(20, 2, dtype=torch.float64)
    settings = SolverSettings(method, rtol=1e-10, atol=1e-10, steps=200, time_grid="late")

    def linear(t, th, rows):
        return th @ a.T

    for start, end in ((0.0, 1.0), (1.0, 0.0), (0.2, 0.7), (0.9, 0.3)):
        solution = solve(linear, theta, start, end, settings, track_log_density=True)
        torch.testing.assert_close(
            solution.theta, theta @ torch.linalg.matrix_exp((end - start) * a).T, atol=1e-8, rtol=0
        )
        torch.testing.assert_close(
            solution.log_density_change,
            -(end - start) * a.trace().expand(20),
            atol=1e-8,
            rtol=0,
        )


def test_unknown_time_grid_is_named():
    with pytest.raises(ValueError, match="time_grid must be one of"):
        SolverSettings(time_grid="log")


@pytest.mark.parametrize("method", ["dopri5_per_row", "dopri5", "rk4"])
def test_each_row_is_solved_with_its_own_condition(method):
    """dy/dt = c y with each row's c: y(1) = y0 e^c, whichever rows a solver evaluates together."""
    rates = torch.linspace(-2.0, 2.0, 30, dtype=torch.float64)[:, None]
    y0 = torch.ones(30, 1, dtype=torch.float64)
    seen = []

    def field(t, y, condition):
        seen.append(len(condition) == len(y))
        return condition * y

    settings = SolverSettings(method, rtol=1e-9, atol=1e-9, steps=200)
    solution = solve(field, y0, 0.0, 1.0, settings, condition=rates, track_log_density=True)
    tolerance = 1e-6 if method == "rk4" else 1e-7
    torch.testing.assert_close(solution.theta, torch.exp(rates), atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(solution.log_density_change, -rates[:, 0], atol=1e-6, rtol=1e-6)
    assert all(seen)


def test_a_differentiable_solve_gives_the_gradient_of_the_log_density():
    """Linear flow dθ/dt = a θ: log q_0(θ_0) = log N(e^{-a} θ_1) - tr a, differentiated in θ_1."""
    a = torch.tensor([[0.4, 0.3], [-0.2, -0.6]], dtype=torch.float64)
    theta1 = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    settings = SolverSettings("rk4", steps=40)
    back = solve(
        lambda t, th, c: th @ a.T, theta1, 1.0, 0.0, settings,
        track_log_density=True, differentiable=True,
    )  # fmt: skip
    (standard_normal_log_prob(back.theta) - back.log_density_change).sum().backward()
    inverse = torch.linalg.matrix_exp(-a)
    expected = -(theta1 @ inverse.T) @ inverse
    torch.testing.assert_close(theta1.grad, expected.detach(), atol=1e-8, rtol=1e-8)
