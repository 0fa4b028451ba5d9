import math

import pytest
import torch
from torch.distributions import MultivariateNormal

import fmpe
from fmpe import FMPE

X_OBS = torch.tensor([0.8, -0.4])


def test_nan_and_inf_simulations_are_dropped_with_count(gaussian):
    theta = gaussian.prior.sample((100,))
    x = gaussian.simulator(theta)
    x[3, 0] = float("nan")
    x[10, 1] = float("inf")
    theta[20, 0] = float("-inf")
    estimator = FMPE(prior=gaussian.prior)
    with pytest.warns(UserWarning, match="dropped 3 of 100 simulations"):
        estimator.append_simulations(theta, x)
    assert estimator.theta.shape == (97, 2) and estimator.x.shape == (97, 2)
    assert torch.isfinite(estimator.x).all()


def test_all_invalid_simulations_is_an_error(gaussian):
    theta = gaussian.prior.sample((10,))
    with pytest.raises(ValueError, match="all 10 simulations"):
        FMPE(prior=gaussian.prior).append_simulations(theta, torch.full((10, 2), float("nan")))


@pytest.mark.parametrize(
    "theta_shape, x_shape, message",
    [
        ((10, 3), (10, 2), r"theta must have shape \(n, 2\), got \(10, 3\)"),
        ((10,), (10, 2), r"theta must have shape \(n, 2\), got \(10,\)"),
        ((10, 2), (9, 2), "same number of simulations, got 10 and 9"),
        ((10, 2), (10,), r"x must have shape \(n, \*x_shape\)"),
    ],
)
def test_wrong_training_shapes(gaussian, theta_shape, x_shape, message):
    with pytest.raises(ValueError, match=message):
        FMPE(prior=gaussian.prior).append_simulations(
            torch.zeros(theta_shape), torch.zeros(x_shape)
        )


def test_appended_x_must_match_earlier_shape(gaussian):
    estimator = FMPE(prior=gaussian.prior).append_simulations(torch.zeros(5, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match=r"shape \(n, 2\), got \(5, 3\)"):
        estimator.append_simulations(torch.zeros(5, 2), torch.zeros(5, 3))


def test_integer_dtype_is_rejected(gaussian):
    with pytest.raises(ValueError, match="floating-point dtype, got torch.int64"):
        FMPE(prior=gaussian.prior).append_simulations(
            torch.zeros(5, 2, dtype=torch.long), torch.zeros(5, 2)
        )


def test_training_without_data_or_simulator(gaussian):
    with pytest.raises(ValueError, match="no training data"):
        FMPE(prior=gaussian.prior).train(show_progress=False)
    with pytest.raises(ValueError, match="no simulator"):
        FMPE(prior=gaussian.prior).train(100, show_progress=False)
    with pytest.raises(ValueError, match="needs a prior"):
        FMPE(gaussian.simulator)


def test_simulator_returning_wrong_batch_is_an_error(gaussian):
    message = r"map theta \(50, d\) to a tensor \(50, ...\), got \(49, 2\)"
    with pytest.raises(ValueError, match=message):
        FMPE(lambda theta: theta[1:], gaussian.prior).train(50, show_progress=False)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.zeros(3), r"x \(one observation\) must have shape \(2\), got \(3,\)"),
        (torch.zeros(4, 3), r"x \(a batch of observations\) must have shape \(n, 2\), got"),
        (torch.zeros(1, 1, 2), r"x \(one observation\) must have shape \(2\), got \(1, 1, 2\)"),
        (torch.zeros(2, dtype=torch.int32), "floating-point dtype"),
        (torch.tensor([0.0, float("nan")]), "NaN or infinite"),
        (torch.zeros(2, device="meta"), "on device meta but the model is on cpu"),
    ],
)
def test_wrong_observations_are_rejected(gaussian_posterior, x, message):
    with pytest.raises(ValueError, match=message):
        gaussian_posterior.sample(10, x)


@pytest.mark.parametrize(
    "theta, x, message",
    [
        (torch.zeros(5, 3), X_OBS, r"theta must have shape \(n, 2\), got \(5, 3\)"),
        (torch.zeros(5, 2), torch.zeros(3, 2), r"theta \(for a batch of x\) must have shape"),
        (torch.zeros(2), X_OBS, r"theta must have shape \(n, 2\), got \(2,\)"),
    ],
)
def test_wrong_log_prob_inputs_are_rejected(gaussian_posterior, theta, x, message):
    with pytest.raises(ValueError, match=message):
        gaussian_posterior.log_prob(theta, x)


def test_bad_solver_options_are_rejected(gaussian_posterior):
    with pytest.raises(ValueError, match="unknown ODE method 'rk5'"):
        gaussian_posterior.sample(10, X_OBS, method="rk5")


# ----- the cases of the reliability review (issue 16) ----------------------------------------


def test_theta_outside_the_prior_is_counted_in_a_warning():
    from torch.distributions import Independent, Uniform

    prior = Independent(Uniform(-torch.ones(2), torch.ones(2)), 1)
    theta = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.5, -3.0], [1.0, 0.0]])
    with pytest.warns(UserWarning, match="3 of 4 appended θ lie outside the prior's support"):
        FMPE(prior=prior).append_simulations(theta, theta.clone())


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"max_epochs": 0}, "max_epochs must be a positive int, got 0"),
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"batch_size": 64.5}, "batch_size must be a positive int"),
        ({"learning_rate": -1.0}, "learning_rate must be a positive number"),
        ({"validation_fraction": 1.0}, r"validation_fraction must be in \(0, 1\)"),
    ],
)
def test_bad_training_settings_are_refused_before_simulating(gaussian, settings, message):
    def no_simulator(theta):
        raise AssertionError("nothing may be simulated for a run that cannot train")

    with pytest.raises(ValueError, match=message):
        FMPE(no_simulator, gaussian.prior).train(100, **settings)


@pytest.mark.parametrize("budget", [999.9, 1.5, True, "1000", -5, 0])
def test_fractional_or_odd_budgets_are_refused(gaussian, budget):
    with pytest.raises(ValueError, match="num_simulations must be an integer >= 1"):
        FMPE(gaussian.simulator, gaussian.prior).train(budget, show_progress=False)


def test_integral_float_budgets_are_accepted(gaussian):
    posterior = FMPE(gaussian.simulator, gaussian.prior, network_options={"hidden_widths": (8,)})
    assert posterior.train(1e2, max_epochs=1, show_progress=False) is not None


def test_a_checkpoint_of_another_budget_is_refused(gaussian, tmp_path):
    small = {"network_options": {"hidden_widths": (8,)}}
    FMPE(gaussian.simulator, gaussian.prior, **small).train(
        500, max_epochs=1, checkpoint_dir=tmp_path, show_progress=False
    )
    message = "holds a run with 500 simulations, but train asked for 300"
    with pytest.raises(ValueError, match=message):
        FMPE(gaussian.simulator, gaussian.prior, **small).train(
            300, max_epochs=1, checkpoint_dir=tmp_path, show_progress=False
        )


def test_simulation_batch_size_zero_is_named(gaussian):
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        FMPE(gaussian.simulator, gaussian.prior).simulate(100, batch_size=0, show_progress=False)


def test_empty_simulations_say_there_are_none(gaussian):
    with pytest.raises(ValueError, match="no simulations: theta and x hold 0 rows"):
        FMPE(prior=gaussian.prior).append_simulations(torch.zeros(0, 2), torch.zeros(0, 2))


@pytest.mark.parametrize("prior", ["uniform", 3, object()])
def test_a_prior_that_is_not_a_distribution_is_named(prior):
    with pytest.raises(ValueError, match="the prior must be a torch.distributions.Distribution"):
        FMPE(prior=prior)


@pytest.mark.parametrize("n", [True, 2.5, -1, "10"])
def test_odd_sample_counts_are_refused(gaussian_posterior, n):
    with pytest.raises(ValueError, match="the number of samples must be an integer >= 0"):
        gaussian_posterior.sample(n, X_OBS)


def test_zero_samples_are_an_empty_tensor(gaussian_posterior):
    assert gaussian_posterior.sample(0, X_OBS).shape == (0, 2)
    theta, log_prob = gaussian_posterior.sample_and_log_prob(0, torch.stack([X_OBS, X_OBS]))
    assert theta.shape == (0, 2, 2) and log_prob.shape == (0, 2)


def test_nan_theta_gets_nan_and_far_theta_minus_infinity(gaussian_posterior):
    theta = torch.tensor([[float("nan"), 0.0], [1e15, 0.0], [0.5, 0.0], [-1e20, 1e20]])
    log_prob = gaussian_posterior.log_prob(theta, X_OBS)
    assert torch.isnan(log_prob[0])
    assert log_prob[1] == -math.inf and log_prob[3] == -math.inf
    assert torch.isfinite(log_prob[2])


def test_a_prior_of_another_dimension_is_refused_at_load(gaussian_posterior, tmp_path):
    path = tmp_path / "p.fmpe"
    gaussian_posterior.save(path)
    prior = MultivariateNormal(torch.zeros(3), torch.eye(3))
    with pytest.raises(ValueError, match=r"draws θ of shape \(3,\), but .* of dimension 2"):
        fmpe.load(path, prior=prior)


def test_points_on_a_box_bound_get_the_prior_s_convention():
    """On a bound of a box, the posterior's density is -inf, with or without map_to_unbounded,
    and so is the density of fmpe's own task priors."""
    from torch.distributions import Independent, Uniform

    from fmpe.tasks.priors import masked

    prior = masked(Independent(Uniform(-torch.ones(2), torch.ones(2)), 1))
    on_bounds = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
    assert (prior.log_prob(on_bounds) == -math.inf).all()
    assert torch.isfinite(prior.log_prob(torch.tensor([[-0.999, 0.999]]))).all()
    theta = prior.sample((300,))
    for unbounded in (False, True):
        posterior = FMPE(prior=prior, map_to_unbounded=unbounded,
                         network_options={"hidden_widths": (8,)})  # fmt: skip
        posterior = posterior.append_simulations(theta, theta.clone()).train(
            max_epochs=1, show_progress=False
        )
        assert (posterior.log_prob(on_bounds, torch.zeros(2)) == -math.inf).all()
