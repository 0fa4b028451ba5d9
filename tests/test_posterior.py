"""The posterior against the closed-form answer of a linear-Gaussian problem."""

import math

import pytest
import torch

from fmpe.metrics import c2st

X_OBS = torch.tensor([0.8, -0.4])


BULK_LOG_PROB_ERROR = 0.05  # nats, mean over the bulk, for FMPE and NPE alike
MODE_ERROR = 0.05


@pytest.fixture(params=["fmpe", "npe"])
def any_posterior(request):
    """FMPE's and NPE's posteriors of the linear-Gaussian problem."""
    names = {"fmpe": "gaussian_posterior", "npe": "gaussian_npe_posterior"}
    return request.getfixturevalue(names[request.param])


def test_samples_match_exact_posterior(gaussian, any_posterior):
    torch.manual_seed(1)
    samples = any_posterior.sample(5000, X_OBS)
    assert samples.shape == (5000, 2)
    exact = gaussian.posterior(X_OBS).sample((5000,))
    assert c2st(exact, samples) < 0.56


def test_log_prob_matches_exact_density_in_bulk(gaussian, any_posterior):
    exact = gaussian.posterior(X_OBS)
    torch.manual_seed(2)
    theta = exact.sample((1000,))
    # The bulk: the 90% of draws nearest the mode in Mahalanobis distance.
    log_exact = exact.log_prob(theta)
    bulk = log_exact >= log_exact.quantile(0.1)
    log_q = any_posterior.log_prob(theta[bulk], X_OBS)
    assert (log_q - log_exact[bulk]).abs().mean() < BULK_LOG_PROB_ERROR


def test_density_integrates_to_one(gaussian, any_posterior):
    mean = gaussian.posterior(X_OBS).mean
    axis = torch.linspace(-2.5, 2.5, 61)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2) + mean
    density = any_posterior.log_prob(grid, X_OBS).exp().reshape(61, 61)
    cell = (axis[1] - axis[0]) ** 2
    assert abs((density.sum() * cell).item() - 1) < 0.02


def test_log_prob_does_not_depend_on_batch_composition(gaussian, any_posterior):
    torch.manual_seed(3)
    point = gaussian.posterior(X_OBS).sample((1,))
    alone = any_posterior.log_prob(point, X_OBS)
    # The same point next to far-out points, which force small adaptive steps.
    neighbours = torch.cat([point, 4 * torch.randn(255, 2)])
    crowded = any_posterior.log_prob(neighbours, X_OBS)[:1]
    assert (alone - crowded).abs().item() <= 1e-4


def test_sample_and_log_prob_agree_with_log_prob(any_posterior):
    torch.manual_seed(4)
    theta, log_q = any_posterior.sample_and_log_prob(200, X_OBS)
    assert theta.shape == (200, 2) and log_q.shape == (200,)
    assert torch.allclose(log_q, any_posterior.log_prob(theta, X_OBS), atol=2e-3)


def test_batch_of_observations(gaussian, any_posterior):
    xs = torch.stack([X_OBS, torch.tensor([-1.0, 0.5]), torch.tensor([0.0, 1.5])])
    torch.manual_seed(5)
    samples = any_posterior.sample(2000, xs)
    assert samples.shape == (2000, 3, 2)
    for j, x in enumerate(xs):
        exact_mean = gaussian.posterior(x).mean
        assert torch.allclose(samples[:, j].mean(0), exact_mean, atol=0.05)
    log_q = any_posterior.log_prob(samples[:50], xs)
    assert log_q.shape == (50, 3)
    single = any_posterior.log_prob(samples[:50, 1], xs[1])
    assert torch.allclose(log_q[:, 1], single, atol=1e-4)


@pytest.mark.parametrize("method", ["rk4", "midpoint"])
def test_fixed_step_solvers_agree_with_adaptive(gaussian_posterior, method):
    torch.manual_seed(6)
    theta = gaussian_posterior.sample(100, X_OBS)
    adaptive = gaussian_posterior.log_prob(theta, X_OBS)
    fixed = gaussian_posterior.log_prob(theta, X_OBS, method=method, steps=100)
    assert torch.allclose(adaptive, fixed, atol=5e-3)


def test_hutchinson_log_prob_is_close_on_average(gaussian_posterior):
    torch.manual_seed(7)
    theta = gaussian_posterior.sample(500, X_OBS)
    exact = gaussian_posterior.log_prob(theta, X_OBS)
    estimate = gaussian_posterior.log_prob(theta, X_OBS, divergence="hutchinson", probes=8)
    assert abs((estimate - exact).mean().item()) < 0.05


def test_samples_outside_prior_are_rejected():
    from torch.distributions import Independent, Uniform

    from fmpe import FMPE

    prior = Independent(Uniform(-torch.ones(2), torch.ones(2)), 1)

    def simulator(theta):
        return theta + 0.3 * torch.randn_like(theta)

    torch.manual_seed(0)
    # Trained on θ itself (the default), the flow puts some mass past the box.
    estimator = FMPE(simulator, prior, network_options={"hidden_widths": (32, 32)})
    posterior = estimator.train(2000, max_epochs=15, show_progress=False)
    x_edge = torch.tensor([0.95, 0.95])  # posterior mass piles up against the corner
    samples, cost = posterior.sample(2000, x_edge, return_cost=True)
    assert samples.shape == (2000, 2)
    assert samples.abs().max() <= 1
    assert 0 < cost.acceptance_rate < 1
    outside = torch.tensor([[1.5, 0.0]])
    assert posterior.log_prob(outside, x_edge).item() == -math.inf


def test_per_row_solver_agrees_with_dopri5_and_ignores_neighbours(gaussian, gaussian_posterior):
    torch.manual_seed(8)
    theta = gaussian.posterior(X_OBS).sample((200,))
    reference = gaussian_posterior.log_prob(theta, X_OBS, rtol=1e-7, atol=1e-7)
    per_row = gaussian_posterior.log_prob(theta, X_OBS, method="dopri5_per_row")
    assert (per_row - reference).abs().max() < 1e-3
    far_out = torch.cat([theta[:1], 4 * torch.randn(255, 2)])
    crowded = gaussian_posterior.log_prob(far_out, X_OBS, method="dopri5_per_row")[:1]
    assert (crowded - per_row[:1]).abs().item() <= 1e-6
    torch.manual_seed(9)
    samples = gaussian_posterior.sample(2000, X_OBS, method="dopri5_per_row")
    assert c2st(gaussian.posterior(X_OBS).sample((2000,)), samples) < 0.56


def test_sampling_alone_solves_with_the_sample_settings(gaussian, gaussian_posterior):
    """sample() takes RK4's 6 late steps by default; `method`, `rtol` and `atol` given to it set
    the sampling solve, so an adaptive one there solves at the looser sample tolerance."""
    torch.manual_seed(11)
    samples, fast = gaussian_posterior.sample(2000, X_OBS, return_cost=True)
    assert fast.evaluations == 4 * 6
    assert c2st(gaussian.posterior(X_OBS).sample((2000,)), samples) < 0.56
    adaptive = {"method": "dopri5_per_row"}
    _, loose = gaussian_posterior.sample(500, X_OBS, return_cost=True, **adaptive)
    _, tight = gaussian_posterior.sample(
        500, X_OBS, rtol=1e-5, atol=1e-5, return_cost=True, **adaptive
    )
    assert loose.evaluations < 0.8 * tight.evaluations
    # sample_and_log_prob solves with the density's settings: adaptive, at 1e-5.
    _, _, exact = gaussian_posterior.sample_and_log_prob(500, X_OBS, return_cost=True)
    assert exact.evaluations > fast.evaluations
    with pytest.raises(ValueError, match="both 'method' and 'sample_method'"):
        gaussian_posterior.sample(10, X_OBS, method="rk4", sample_method="euler")


def test_many_observations_are_solved_together(any_posterior):
    """A batch of observations is one batched solve per chunk, not one solve per observation,
    and each observation's densities are those it gets alone."""
    xs = torch.randn(100, 2)
    theta = torch.randn(10, 100, 2)
    batched, cost = any_posterior.log_prob(theta, xs, return_cost=True)
    _, single = any_posterior.log_prob(theta[:, 0], xs[0], return_cost=True)
    assert cost.evaluations < 3 * single.evaluations
    for j in (0, 57, 99):
        assert torch.allclose(batched[:, j], any_posterior.log_prob(theta[:, j], xs[j]), atol=1e-4)


def test_map_finds_the_analytic_mode(gaussian, any_posterior):
    xs = torch.stack([X_OBS, torch.tensor([-1.0, 0.5])])
    torch.manual_seed(10)
    modes = any_posterior.map(xs)
    assert modes.shape == (2, 2)
    angles = torch.linspace(0, 2 * torch.pi, 9)[:-1]
    steps = 0.03 * torch.stack([angles.cos(), angles.sin()], dim=-1)
    for x, mode in zip(xs, modes):
        # The mode of a Gaussian posterior is its mean ...
        assert torch.allclose(mode, gaussian.posterior(x).mean, atol=MODE_ERROR)
        # ... and what map returns is a maximum of q itself: every step away lowers it.
        log_q = any_posterior.log_prob(torch.cat([mode[None], mode + steps]), x)
        assert (log_q[1:] < log_q[0]).all(), log_q
    assert any_posterior.map(X_OBS).shape == (2,)


@pytest.mark.slow
def test_npe_flow_has_the_lower_validation_loss(train_gaussian_npe, gaussian_npe_posterior):
    """Validation loss, not the bounds of the tests above, picks the NPE fixture's flow."""
    spline = train_gaussian_npe("nsf")
    affine = gaussian_npe_posterior.training_record.best_validation_loss
    assert affine < spline.training_record.best_validation_loss


def test_a_gated_velocity_with_an_embedding_of_t_and_theta_learns_the_exact_posterior(
    gaussian, tmp_path
):
    """(t, θ) through its own residual network into every block's gate, x the main input: the
    route of the gw card with the FMPE paper's (t, θ) embedding, on the closed-form problem."""
    import fmpe
    from fmpe import FMPE

    torch.manual_seed(0)
    options = {"hidden_widths": (64, 64), "theta_route": "gate", "t_theta_widths": (32, 32)}
    estimator = FMPE(gaussian.simulator, gaussian.prior, network_options=options)
    posterior = estimator.train(
        8_000, max_epochs=30, batch_size=256, learning_rate=2e-3, show_progress=False
    )
    gates = [block.gate for block in posterior.network.net.blocks]
    assert all(gate.in_features == 32 for gate in gates)  # the embedding's width, not 1 + d
    torch.manual_seed(1)
    samples = posterior.sample(5000, X_OBS)
    exact = gaussian.posterior(X_OBS)
    assert torch.allclose(samples.mean(0), exact.mean, atol=0.05)
    assert c2st(exact.sample((5000,)), samples) < 0.56
    posterior.save(tmp_path / "embedded.fmpe")
    loaded = fmpe.load(tmp_path / "embedded.fmpe")
    theta = exact.sample((100,))
    assert torch.equal(loaded.log_prob(theta, X_OBS), posterior.log_prob(theta, X_OBS))
