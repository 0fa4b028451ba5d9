"""The seams: a user's own network, embedding net, linear layer, solver, optimizer, metric and
task plug in by registration, and what they build saves and loads."""

import math

import pytest
import torch
from torch import nn

import fmpe
from fmpe import FMPE, NPE
from fmpe.networks import registry
from fmpe.ode import SOLVERS

X_OBS = torch.tensor([0.8, -0.4])


class ConcatVelocity(nn.Module):
    """A user's velocity network: an MLP on (t, θ, x) concatenated, with no embed hooks."""

    def __init__(self, theta_dim, x_shape, width=32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(1 + theta_dim + math.prod(x_shape), width),
            nn.SiLU(),
            nn.Linear(width, theta_dim),
        )

    def forward(self, t, theta, x):
        return self.net(torch.cat([t.unsqueeze(-1), theta, x.flatten(1)], dim=-1))


@pytest.fixture
def registered():
    """Registrations made by a test are removed after it."""
    tables = (registry.NETWORKS, registry.EMBEDDINGS, registry.LINEAR_LAYERS, SOLVERS)
    before = [set(table) for table in tables]
    yield
    for table, names in zip(tables, before):
        for name in set(table) - names:
            table.unregister(name)


def test_own_network_trains_saves_loads_and_samples_alike(gaussian, registered, tmp_path):
    fmpe.register_network("concat_mlp", ConcatVelocity)
    torch.manual_seed(0)
    estimator = FMPE(gaussian.simulator, gaussian.prior, network="concat_mlp",
                     network_options={"width": 48})  # fmt: skip
    posterior = estimator.train(2000, max_epochs=20, show_progress=False)
    assert isinstance(posterior.network, ConcatVelocity)
    path = tmp_path / "own.fmpe"
    posterior.save(path)
    loaded = fmpe.load(path)
    assert isinstance(loaded.network, ConcatVelocity) and loaded.network.net[0].out_features == 48
    torch.manual_seed(1)
    before, log_before = posterior.sample_and_log_prob(200, X_OBS)
    torch.manual_seed(1)
    after, log_after = loaded.sample_and_log_prob(200, X_OBS)
    assert torch.equal(before, after) and torch.equal(log_before, log_after)
    # It learned something: the samples sit near the exact posterior's mean.
    assert (before.mean(0) - gaussian.posterior(X_OBS).mean).abs().max() < 0.25


def test_unregistered_network_trains_but_saving_says_how_to_register(gaussian, tmp_path):
    posterior = FMPE(gaussian.simulator, gaussian.prior, network=ConcatVelocity).train(
        300, max_epochs=1, show_progress=False
    )
    with pytest.raises(ValueError, match=r"register it with fmpe.register_network\('my_network'"):
        posterior.save(tmp_path / "x.fmpe")


def test_loading_an_unregistered_network_names_it(gaussian, registered, tmp_path):
    fmpe.register_network("temporary", ConcatVelocity)
    posterior = FMPE(gaussian.simulator, gaussian.prior, network="temporary").train(
        300, max_epochs=1, show_progress=False
    )
    posterior.save(tmp_path / "t.fmpe")
    registry.NETWORKS.unregister("temporary")
    with pytest.raises(ValueError, match="names network 'temporary', which is not registered"):
        fmpe.load(tmp_path / "t.fmpe")


def test_unknown_names_list_the_registered_ones(gaussian):
    with pytest.raises(
        ValueError, match="unknown network 'resnet'; registered: maf, nsf, residual"
    ):
        FMPE(gaussian.simulator, gaussian.prior, network="resnet")
    with pytest.raises(ValueError, match="unknown embedding net 'cnn'"):
        FMPE(gaussian.simulator, gaussian.prior, embedding_net="cnn").train(
            100, max_epochs=1, show_progress=False
        )


def test_a_network_of_the_wrong_shape_is_named(gaussian, registered):
    fmpe.register_network("scalar", lambda theta_dim, x_shape: nn.Linear(theta_dim, 1))
    with pytest.raises(ValueError, match=r"must map t \(n,\), theta \(n, 2\)"):
        FMPE(gaussian.simulator, gaussian.prior, network="scalar").train(
            100, max_epochs=1, show_progress=False
        )


def test_registered_embedding_is_saved_by_name(gaussian, tmp_path):
    estimator = FMPE(
        gaussian.simulator,
        gaussian.prior,
        network_options={"hidden_widths": (16,)},
        embedding_net={"name": "mlp", "widths": [16, 8]},
    )
    posterior = estimator.train(300, max_epochs=1, show_progress=False)
    path = tmp_path / "e.fmpe"
    posterior.save(path)
    loaded = fmpe.load(path)  # no embedding_net needed
    theta = torch.randn(5, 2)
    assert torch.equal(loaded.log_prob(theta, X_OBS), posterior.log_prob(theta, X_OBS))


class ScaledLinear(nn.Linear):
    """A reparameterized layer: W = s · V with a learned scalar s, saved as an nn.Linear."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__(in_features, out_features, bias)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return nn.functional.linear(x, self.scale * self.weight, self.bias)

    def materialize(self) -> nn.Linear:
        layer = nn.Linear(self.in_features, self.out_features)
        with torch.no_grad():
            layer.weight.copy_(self.scale * self.weight)
            layer.bias.copy_(self.bias)
        return layer


def test_own_linear_layers_train_and_are_saved_as_ordinary_ones(gaussian, registered, tmp_path):
    fmpe.register_linear("scaled", lambda: ScaledLinear)
    estimator = FMPE(gaussian.simulator, gaussian.prior,
                     network_options={"hidden_widths": (16, 16), "linear": "scaled"})  # fmt: skip
    posterior = estimator.train(500, max_epochs=2, show_progress=False)
    layers = [m for m in posterior.network.modules() if isinstance(m, nn.Linear)]
    assert layers and not any(isinstance(m, ScaledLinear) for m in layers)
    path = tmp_path / "s.fmpe"
    posterior.save(path)
    theta = torch.randn(5, 2)
    assert torch.allclose(fmpe.load(path).log_prob(theta, X_OBS), posterior.log_prob(theta, X_OBS))


def test_own_solver_is_one_registry_entry(gaussian_posterior, registered):
    def euler(field, y0, start, end, *, rtol, atol, steps):
        y, h = y0, (end - start) / steps
        for k in range(steps):
            y = y + h * field(torch.tensor(start + k * h), y)
        return y

    fmpe.register_solver("my_euler", euler, adaptive=False)
    torch.manual_seed(2)
    theta = gaussian_posterior.sample(300, X_OBS)
    ours = gaussian_posterior.log_prob(theta, X_OBS, method="my_euler", steps=400)
    torchdiffeq_euler = gaussian_posterior.log_prob(theta, X_OBS, method="euler", steps=400)
    assert torch.allclose(ours, torchdiffeq_euler, atol=1e-4)
    _, cost = gaussian_posterior.sample(10, X_OBS, method="my_euler", steps=7, return_cost=True)
    assert cost.evaluations == 7


class GroupedVelocity(ConcatVelocity):
    """A network that asks for its own optimizer groups and opts out of weight averaging."""

    weight_averaging = False

    def parameter_groups(self):
        first, second = self.net[0], self.net[2]
        return [{"params": first.parameters(), "lr": 1e-2}, {"params": second.parameters()}]


def test_network_parameter_groups_and_optimizer_factory(gaussian):
    seen = {}

    def sgd(groups, lr, weight_decay):
        optimizer = torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay)
        seen["lrs"] = [g["lr"] for g in optimizer.param_groups]
        return optimizer

    estimator = FMPE(gaussian.simulator, gaussian.prior, network=GroupedVelocity)
    estimator.train(300, max_epochs=1, optimizer=sgd, learning_rate=1e-3, schedule="constant",
                    show_progress=False)  # fmt: skip
    assert seen["lrs"] == [1e-2, 1e-3]


def test_unknown_training_settings_are_named(gaussian):
    estimator = FMPE(gaussian.simulator, gaussian.prior)
    with pytest.raises(
        ValueError, match="unknown training setting 'lr'; valid settings: batch_size"
    ):
        estimator.train(100, lr=1e-3)
    with pytest.raises(ValueError, match="pass max_epochs to train"):
        estimator.train(100, trainer_kwargs={"max_epochs": 3}, show_progress=False)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        estimator.train(100, optimizer="rmsprop", max_epochs=1, show_progress=False)


def test_schedule_spans_the_epochs_actually_trained(gaussian):
    """max_epochs has one source: the cosine schedule ends at 1% exactly at the last epoch."""
    import lightning as L

    rates = []

    class Rates(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    FMPE(gaussian.simulator, gaussian.prior, network_options={"hidden_widths": (8,)}).train(
        200, max_epochs=4, learning_rate=1e-2, trainer_kwargs={"callbacks": [Rates()]},
        show_progress=False,
    )  # fmt: skip
    expected = [1e-4 + (1e-2 - 1e-4) * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    assert rates == pytest.approx(expected)


def test_npe_through_the_public_api(gaussian, tmp_path):
    torch.manual_seed(0)
    posterior = NPE(gaussian.simulator, gaussian.prior).train(
        3000, max_epochs=30, batch_size=256, learning_rate=1e-3, show_progress=False
    )
    theta, log_prob = posterior.sample_and_log_prob(500, X_OBS)
    assert theta.shape == (500, 2) and log_prob.shape == (500,)
    assert torch.allclose(posterior.log_prob(theta, X_OBS), log_prob, atol=1e-4)
    path = tmp_path / "npe.fmpe"
    posterior.save(path)
    loaded = fmpe.load(path)
    assert type(loaded).__name__ == "NPEPosterior"
    assert torch.allclose(loaded.log_prob(theta, X_OBS), log_prob, atol=1e-4)
    with pytest.raises(ValueError, match="NPE posterior takes no solver options"):
        posterior.sample(10, X_OBS, method="rk4")
