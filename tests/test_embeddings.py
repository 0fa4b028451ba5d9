"""The structured embedding nets: shapes, the set net's invariances, and each one trained end
to end on a linear-Gaussian model whose x only a net of its kind reads well, against the
closed-form posterior."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

import fmpe
from fmpe import FMPE
from fmpe.networks import build_embedding
from fmpe.standardize import RunningMoments, Standardizer

SHAPES = [
    ("cnn1d", (64,)),
    ("cnn1d", (2, 32)),
    ("cnn2d", (8, 8)),
    ("cnn2d", (3, 8, 8)),
    ("rnn", (20,)),
    ("rnn", (20, 3)),
    ("set", (10,)),
    ({"name": "set", "pooling": "attention"}, (10, 2)),
]


@pytest.mark.parametrize(("spec", "x_shape"), SHAPES)
def test_every_embedding_maps_a_batch_to_features(spec, x_shape):
    net = build_embedding(spec, x_shape)
    assert net(torch.randn(5, *x_shape)).shape == (5, 64)


@pytest.mark.parametrize(
    ("spec", "x_shape", "message"),
    [
        ("cnn1d", (2, 3, 64), "x_shape must be the grid"),
        ("cnn1d", (3,), "poolings by 2 leave nothing"),
        ("cnn2d", (64,), "x_shape must be the grid"),
        ("rnn", (2, 3, 4), r"x_shape must be \(steps,\)"),
        ("set", (2, 3, 4), r"x_shape must be \(trials,\)"),
        ({"name": "set", "pooling": "max"}, (10, 2), "unknown pooling 'max'"),
        ({"name": "set", "pooling": "attention", "heads": 5}, (10, 2), "must divide"),
    ],
)
def test_bad_shapes_and_options_are_named(spec, x_shape, message):
    with pytest.raises(ValueError, match=message):
        build_embedding(spec, x_shape)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_the_set_net_ignores_the_order_of_trials_and_the_content_of_missing_ones(pooling):
    torch.manual_seed(0)
    net = build_embedding({"name": "set", "pooling": pooling}, (6, 2)).eval()
    x = torch.randn(4, 6, 2)
    x[:, 4:, 0] = float("nan")  # trials 5 and 6 missing
    features = net(x)
    assert torch.allclose(net(x[:, torch.randperm(6)]), features, atol=1e-5)
    other = x.clone()
    other[:, 4:, 1] = 100.0  # what is left of a missing trial does not count
    assert torch.allclose(net(other), features, atol=1e-5)
    fewer = x.clone()
    fewer[:, 3, 0] = float("nan")  # one trial fewer is another observation
    assert not torch.allclose(net(fewer), features, atol=1e-3)


def _waveforms(length: int) -> torch.Tensor:
    """(length, 2): a sine and a cosine, so that θ shows only in the shape of the series."""
    t = torch.linspace(0, 1, length)
    return torch.stack([torch.sin(2 * math.pi * 3 * t), torch.cos(2 * math.pi * 3 * t)], 1)


# (spec, x_shape, design matrix): x = A θ + ε, flattened in x_shape's order.
PROBLEMS = {
    "cnn1d": ("cnn1d", (64,), _waveforms(64)),
    "cnn2d": ({"name": "cnn2d", "channels": [8, 16]}, (8, 8), _waveforms(64)),
    "rnn": ("rnn", (32, 2), _waveforms(64)),
    "set": ("set", (10, 2), torch.eye(2).repeat(10, 1)),
    "set-attention": ({"name": "set", "pooling": "attention"}, (10, 2), torch.eye(2).repeat(10, 1)),
}


@pytest.mark.parametrize("name", PROBLEMS)
def test_an_embedding_trained_end_to_end_recovers_the_closed_form_posterior(name, tmp_path):
    """θ ~ N(0, I₂), x = A θ + ε with ε ~ N(0, σ² I): q(θ | x) = N(C Aᵀ x / σ², C) with
    C = (I + AᵀA / σ²)⁻¹, with σ = 2.5. Checked on three observations: the mean within 0.5
    posterior standard deviations, each standard deviation within 20% (measured: at most
    0.31 and 8%). The saved posterior loads by the embedding's name and gives the same
    densities."""
    spec, x_shape, design = PROBLEMS[name]
    noise = 2.5
    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))

    def simulator(theta):
        x = theta @ design.T + noise * torch.randn(len(theta), len(design))
        return x.reshape(len(theta), *x_shape)

    torch.manual_seed(0)
    estimator = FMPE(
        simulator, prior, embedding_net=spec, network_options={"hidden_widths": (64, 64)}
    )
    posterior = estimator.train(
        8000, max_epochs=40, batch_size=128, learning_rate=2e-3, show_progress=False
    )
    covariance = torch.linalg.inv(torch.eye(2) + design.T @ design / noise**2)
    for theta in torch.tensor([[0.5, -1.0], [-1.2, 0.3], [0.0, 1.5]]):
        x = simulator(theta[None])[0]
        mean = covariance @ design.T @ x.flatten() / noise**2
        samples = posterior.sample(4000, x)
        std = covariance.diagonal().sqrt()
        assert ((samples.mean(0) - mean).abs() / std).max() < 0.5, name
        assert ((samples.std(0) / std).log().abs() < math.log(1.2)).all(), name
    posterior.save(tmp_path / "posterior.fmpe")
    loaded = fmpe.load(tmp_path / "posterior.fmpe")
    assert torch.allclose(
        loaded.log_prob(samples[:50], x), posterior.log_prob(samples[:50], x), atol=1e-4
    )


PRIOR_VARIANCE, MAX_TRIALS = 4.0, 20


def _trials(theta: torch.Tensor) -> torch.Tensor:
    """x_1..x_n ~ N(θ, I₂) iid, with n uniform in 1..MAX_TRIALS per θ and NaN after the n-th."""
    x = theta[:, None] + torch.randn(len(theta), MAX_TRIALS, 2)
    counts = torch.randint(1, MAX_TRIALS + 1, (len(theta), 1))
    x[torch.arange(MAX_TRIALS) >= counts] = float("nan")
    return x


def test_one_set_net_trained_on_varying_trials_gives_the_posterior_for_1_5_and_20():
    """θ ~ N(0, 4 I₂), x_1..x_n ~ N(θ, I₂) iid: q(θ | x_1..x_n) = N(Σx / (n + 1/4), I / (n + 1/4)).
    One net (mean pooling) is trained on n from 1 to 20 (missing trials NaN) and checked at
    n = 1, 5 and 20: the mean within 0.5 posterior standard deviations, each standard
    deviation within 25%. Measured over three such θ: mean off by at most 0.19 sd; sd off by
    up to 17% at n = 1 (the rarest count, 1 in 20 simulations), 1% at 5, 10% at 20."""
    prior = MultivariateNormal(torch.zeros(2), PRIOR_VARIANCE * torch.eye(2))
    torch.manual_seed(0)
    estimator = FMPE(
        _trials,
        prior,
        embedding_net="set",
        network_options={"hidden_widths": (64, 64)},
    )
    posterior = estimator.train(
        16_000, max_epochs=40, batch_size=128, learning_rate=2e-3, show_progress=False
    )
    theta = torch.tensor([0.8, -1.5])
    trials = theta + torch.randn(MAX_TRIALS, 2)
    for n in (1, 5, 20):
        x = torch.full((MAX_TRIALS, 2), float("nan"))
        x[:n] = trials[:n]
        precision = n + 1 / PRIOR_VARIANCE
        mean, std = trials[:n].sum(0) / precision, precision**-0.5
        samples = posterior.sample(4000, x)
        assert ((samples.mean(0) - mean).abs() / std).max() < 0.5, n
        assert ((samples.std(0) / std).log().abs() < math.log(1.25)).all(), n
        shuffled = x[torch.randperm(MAX_TRIALS)]  # the trials in another order, NaN between
        assert torch.allclose(
            posterior.log_prob(samples[:20], shuffled),
            posterior.log_prob(samples[:20], x),
            atol=1e-3,
        )


def test_missing_values_leave_the_moments_and_exchangeable_trials_share_them():
    values = torch.tensor([[[1.0], [2.0]], [[3.0], [float("nan")]], [[5.0], [6.0]]])  # (3, 2, 1)
    fitted = Standardizer.fit(values)
    assert torch.allclose(fitted.mean, torch.tensor([[3.0], [4.0]]))
    assert torch.allclose(fitted.std, torch.tensor([[2.0], [2.0**0.5 * 2]]))
    shared = fitted.shared_along((0,))
    assert torch.equal(shared.mean[0], shared.mean[1]) and torch.equal(shared.std[0], shared.std[1])
    assert shared.mean.shape == fitted.mean.shape
    # pooled moments: mean 3.5, second moment ((4 + 9) + (8 + 16)) / 2 = 18.5
    assert torch.allclose(shared.std[0], torch.tensor([(18.5 - 3.5**2) ** 0.5]))


def test_streamed_moments_leave_missing_values_out_as_the_fitted_ones_do():
    values = _trials(torch.randn(300, 2))
    values[:, :, 1][values[:, :, 0] > 2.5] = float("nan")  # a few entries missing alone
    values[:, 19] = float("nan")  # one trial never present: mean 0, std 1
    moments = RunningMoments()
    for batch in values.split(70):
        moments.add(batch)
    streamed, fitted = moments.standardizer(), Standardizer.fit(values)
    assert torch.allclose(streamed.mean, fitted.mean, atol=1e-6)
    assert torch.allclose(streamed.std, fitted.std, atol=1e-6)
    assert (streamed.mean[19] == 0).all() and (streamed.std[19] == 1).all()


def test_a_set_net_trains_from_a_store_with_missing_trials(tmp_path):
    prior = MultivariateNormal(torch.zeros(2), PRIOR_VARIANCE * torch.eye(2))
    estimator = FMPE(_trials, prior, embedding_net="set")
    estimator.simulate(600, store=tmp_path / "store")
    _, x = estimator.store.load_shard(0)
    assert x.isnan().any() and len(x) == 600  # the padded trials are kept
    posterior = estimator.train(max_epochs=2, batch_size=100, show_progress=False)
    assert math.isfinite(posterior.training_record.best_validation_loss)
    assert posterior.sample(10, x[0]).isfinite().all()


def test_nan_in_x_is_kept_only_for_an_embedding_that_reads_it():
    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
    theta = prior.sample((50,))
    x = _trials(theta)
    x[:5] = torch.randn(5, MAX_TRIALS, 2)  # five with every trial
    assert FMPE(None, prior, embedding_net="set").append_simulations(theta, x).x.isnan().any()
    with pytest.warns(UserWarning, match="dropped"):
        kept = FMPE(None, prior, embedding_net="mlp").append_simulations(theta, x).x
    assert not kept.isnan().any() and len(kept) >= 5
