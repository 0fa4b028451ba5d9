import pytest
import torch

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
