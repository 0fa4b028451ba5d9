"""The one `Registry` type, and a third-party estimator registered through the public path:
it trains, saves, loads as its own posterior class and runs through the benchmark."""

import json

import pytest
import torch
from safetensors import safe_open

import fmpe
from fmpe import FMPE
from fmpe.estimators import ESTIMATORS
from fmpe.posteriors import POSTERIORS, FlowMatchingPosterior
from fmpe.registry import Registry
from fmpe.training import TrainingSettings

X_OBS = torch.tensor([0.8, -0.4])


def test_register_as_a_call_or_a_decorator():
    shapes: Registry = Registry("shape")
    assert shapes.register("square", len) is len

    @shapes.register("circle")
    def circle(radius: float) -> float:
        return 3.0 * radius**2

    assert shapes.get("circle") is circle and shapes.get("square") is len
    assert shapes.names() == ["circle", "square"] and list(shapes) == ["square", "circle"]
    assert "circle" in shapes and "triangle" not in shapes
    assert shapes.name_of(circle) == "circle" and shapes.name_of(abs) is None
    assert shapes.unregister("square") is len and "square" not in shapes


def test_a_name_is_registered_once_unless_replaced():
    shapes: Registry = Registry("shape")
    shapes.register("square", len)
    with pytest.raises(ValueError, match="the shape 'square' is already registered; pass replace"):
        shapes.register("square", abs)
    assert shapes.get("square") is len
    shapes.register("square", abs, replace=True)
    assert shapes.get("square") is abs
    with pytest.raises(ValueError, match="shape names must be non-empty strings, got ''"):
        shapes.register("", abs)


def test_an_unknown_name_lists_the_registered_ones_and_how_to_register():
    shapes: Registry = Registry("shape", "my.SHAPES")
    with pytest.raises(ValueError, match="unknown shape 'square'; registered: none"):
        shapes.get("square")
    shapes.register("triangle", len)
    shapes.register("circle", abs)
    message = (
        "unknown shape 'square'; registered: circle, triangle. "
        "Register one with my.SHAPES.register('square', ...)"
    )
    with pytest.raises(ValueError) as error:
        shapes.get("square")
    assert str(error.value) == message


def test_on_register_can_refuse_an_entry():
    def positive(name: str, value: int) -> None:
        if value <= 0:
            raise ValueError(f"{name} must be positive")

    sizes: Registry[int] = Registry("size", on_register=positive)
    with pytest.raises(ValueError, match="small must be positive"):
        sizes.register("small", -1)
    assert "small" not in sizes


class ToyPosterior(FlowMatchingPosterior):
    """A third party's posterior: FMPE's, under a kind of its own."""

    kind = "toy_fmpe"


class ToyFMPE(FMPE):
    """A third party's estimator, which trains in moments."""

    posterior_class = ToyPosterior
    training_defaults = TrainingSettings(max_epochs=2, batch_size=100)


@pytest.fixture
def toy_estimator():
    """ToyFMPE registered as "toy_fmpe" through the public path, for one test."""
    fmpe.register_estimator("toy_fmpe", ToyFMPE)
    yield "toy_fmpe"
    ESTIMATORS.unregister("toy_fmpe")
    POSTERIORS.unregister("toy_fmpe")


def test_registering_an_estimator_registers_its_posterior_class(toy_estimator):
    assert POSTERIORS.get("toy_fmpe") is ToyPosterior
    assert POSTERIORS.get("fmpe") is FlowMatchingPosterior

    class ToyVariant(ToyFMPE):  # another estimator with the same posterior class
        pass

    fmpe.register_estimator("toy_variant", ToyVariant)
    ESTIMATORS.unregister("toy_variant")
    assert POSTERIORS.get("toy_fmpe") is ToyPosterior


def test_an_estimator_needs_a_posterior_class_of_a_kind_of_its_own():
    class Bare(FMPE):
        posterior_class = None

    class Impostor(FlowMatchingPosterior):
        kind = "fmpe"

    class Impersonating(FMPE):
        posterior_class = Impostor

    with pytest.raises(ValueError, match="'bare' must name its posterior_class"):
        fmpe.register_estimator("bare", Bare)
    with pytest.raises(ValueError, match="the posterior kind 'fmpe' is already registered"):
        fmpe.register_estimator("impersonating", Impersonating)
    assert "bare" not in ESTIMATORS and "impersonating" not in ESTIMATORS


def test_a_registered_estimator_trains_saves_and_loads(gaussian, toy_estimator, tmp_path):
    torch.manual_seed(0)
    estimator = ESTIMATORS.get(toy_estimator)(
        gaussian.simulator, gaussian.prior, network_options={"hidden_widths": (16,)}
    )
    posterior = estimator.train(300, show_progress=False)
    assert type(posterior) is ToyPosterior
    path = tmp_path / "toy.fmpe"
    posterior.save(path)
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["config"])["estimator"] == "toy_fmpe"
    loaded = fmpe.load(path)
    assert type(loaded) is ToyPosterior and loaded.kind == "toy_fmpe"
    theta = torch.randn(5, 2)
    assert torch.allclose(loaded.log_prob(theta, X_OBS), posterior.log_prob(theta, X_OBS))

    POSTERIORS.unregister("toy_fmpe")
    try:
        with pytest.raises(ValueError, match="holds a posterior of kind 'toy_fmpe', which is not"):
            fmpe.load(path)
    finally:
        POSTERIORS.register("toy_fmpe", ToyPosterior)


def test_a_posterior_of_an_unregistered_class_is_not_saved(gaussian, tmp_path):
    class Unregistered(FMPE):
        posterior_class = ToyPosterior  # never registered

    posterior = Unregistered(
        gaussian.simulator, gaussian.prior, network_options={"hidden_widths": (8,)}
    ).train(200, max_epochs=1, show_progress=False)
    with pytest.raises(ValueError, match="cannot save a posterior of type ToyPosterior"):
        posterior.save(tmp_path / "u.fmpe")


def test_a_registered_estimator_runs_through_the_benchmark(toy_estimator, tmp_path):
    pytest.importorskip("sbibm")
    from fmpe.benchmark import run

    runs = tmp_path / "runs"
    (row,) = run(["two_moons"], [300], [1], estimator=toy_estimator, device="cpu",
                 results=tmp_path / "results.csv", run_dir=runs, num_samples=500,
                 show_progress=False)  # fmt: skip
    assert (row["task"], row["estimator"], int(row["observation"])) == ("two_moons", "toy_fmpe", 1)
    assert 0.5 <= float(row["c2st"]) <= 1.0
    assert type(fmpe.load(runs / "two_moons_300_toy_fmpe_seed0.fmpe")) is ToyPosterior
