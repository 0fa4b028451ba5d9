"""Registries of the pieces networks are built from: networks, embedding nets, linear layers.

Each piece is named, so that a card or a posterior file can say which one to build, with
JSON options. A spec is a name, or a dict ``{"name": ..., **options}``.

>>> def build_mlp(theta_dim, x_shape, width=64):
...     return MyVelocity(theta_dim, x_shape, width)      # forward(t, theta, x) -> (n, d)
>>> NETWORKS.register("mlp", build_mlp)
>>> FMPE(simulator, prior, network="mlp", network_options={"width": 128})
"""

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from fmpe.registry import Registry

NetworkBuilder = Callable[..., nn.Module]
"""builder(theta_dim: int, x_shape: tuple[int, ...], **options) -> nn.Module."""

EmbeddingBuilder = Callable[..., nn.Module]
"""builder(x_shape: tuple[int, ...], **options) -> nn.Module mapping (n, *x_shape) to (n, k)."""

LinearFactory = Callable[..., nn.Module]
"""linear(in_features: int, out_features: int, bias: bool = True) -> nn.Module."""

Spec = str | dict[str, Any]
LinearSpec = Spec


def _check_callable(name: str, value: object) -> None:
    if not callable(value):
        raise ValueError(f"{name!r} must be registered as a callable, got {type(value).__name__}")


NETWORKS: Registry[NetworkBuilder] = Registry(
    "network", "fmpe.networks.NETWORKS", on_register=_check_callable
)
EMBEDDINGS: Registry[EmbeddingBuilder] = Registry(
    "embedding net", "fmpe.networks.EMBEDDINGS", on_register=_check_callable
)
LINEAR_LAYERS: Registry[Callable[..., LinearFactory]] = Registry(
    "linear layer", "fmpe.networks.LINEAR_LAYERS", on_register=_check_callable
)
"""name -> a function of the spec's options that returns a `LinearFactory`."""
LINEAR_LAYERS.register("linear", lambda: nn.Linear)


def register_network(name: str, builder: NetworkBuilder) -> None:
    """Makes `builder` available as `FMPE(..., network=name)` (or `NPE`), and lets posterior
    files that name it be loaded; the same as ``NETWORKS.register(name, builder)``.

    The built module acts on standardized inputs. For FMPE it is a velocity field:
    ``forward(t: (n,), theta: (n, d), x: (n, *x_shape)) -> (n, d)``, optionally with
    ``embed(x) -> (n, k)`` and ``forward_embedded(t, theta, e) -> (n, d)`` so that a solve
    embeds x once. For NPE it is a conditional density: ``forward(x) -> distribution`` over
    θ with ``log_prob`` and ``rsample``. See docs/extending.md for the optional hooks
    (parameter groups, training callbacks, weight averaging).
    """
    NETWORKS.register(name, builder)


def register_embedding(name: str, builder: EmbeddingBuilder) -> None:
    """Makes `builder` available as `embedding_net=name` (or ``{"name": name, ...}``); the
    same as ``EMBEDDINGS.register(name, builder)``.

    An embedding module may define ``fit_to_data(x: (n, *x_shape))``, called once before
    training with standardized training data (before any augmentation), e.g. to fit a basis.
    A builder or module with ``accepts_nan = True`` reads NaN in x as missing values (as the
    "set" net reads missing trials): training then keeps simulations with NaN, and the
    posterior takes observations with NaN. One with ``exchangeable_axes`` (axes of one
    observation, e.g. ``(0,)`` for trials) gets x z-scored alike along them.
    """
    EMBEDDINGS.register(name, builder)


def embedding_attribute(embedding_net: nn.Module | Spec | None, name: str, default: Any) -> Any:
    """What an embedding net (a module, a spec or None) declares as `name`, else `default`."""
    if embedding_net is None:
        return default
    if isinstance(embedding_net, nn.Module):
        return getattr(embedding_net, name, default)
    return getattr(EMBEDDINGS.get(split_spec(embedding_net, "embedding net")[0]), name, default)


def accepts_nan(embedding_net: nn.Module | Spec | None) -> bool:
    """Whether an embedding net (a module, a spec or None) reads NaN in x as missing values."""
    return bool(embedding_attribute(embedding_net, "accepts_nan", False))


def exchangeable_axes(embedding_net: nn.Module | Spec | None) -> tuple[int, ...]:
    """The axes of one observation along which an embedding net treats entries alike (the
    trials of a "set" net): x is z-scored with one mean and std along them."""
    return tuple(embedding_attribute(embedding_net, "exchangeable_axes", ()))


def register_linear(name: str, factory: Callable[..., LinearFactory]) -> None:
    """Makes ``linear=name`` (or ``{"name": name, **options}``) build layers with
    ``factory(**options)``, a `LinearFactory`; the same as ``LINEAR_LAYERS.register``.

    A factory may define ``training_callbacks() -> list`` (Lightning callbacks its layers need),
    and its layers ``materialize() -> nn.Linear``, so that a trained network is saved with
    ordinary layers, and ``start_near_zero(scale)``, with which the last layer of a residual
    block starts near the zero map (other layers keep their own initialization there).
    """
    LINEAR_LAYERS.register(name, factory)


def split_spec(spec: Spec, kind: str) -> tuple[str, dict[str, Any]]:
    """("name", options) of a spec "name" or {"name": ..., **options}."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict) and isinstance(spec.get("name"), str):
        options = dict(spec)
        return options.pop("name"), options
    raise ValueError(f"a {kind} must be a name or a dict with a 'name' key, got {spec!r}")


def network_builder(network: str | NetworkBuilder) -> NetworkBuilder:
    """The builder registered as `network`, or `network` itself if it is a builder."""
    if callable(network):
        return network
    return NETWORKS.get(network)


def build_embedding(spec: Spec, x_shape: Sequence[int]) -> nn.Module:
    """The embedding net of a spec, built for observations of shape `x_shape`."""
    name, options = split_spec(spec, "embedding net")
    return EMBEDDINGS.get(name)(tuple(x_shape), **options)


def linear_factory(linear: LinearFactory | LinearSpec | None) -> LinearFactory:
    """The `LinearFactory` of a spec, a factory (returned as it is) or None (nn.Linear)."""
    if linear is None:
        return nn.Linear
    if callable(linear):
        return linear
    name, options = split_spec(linear, "linear layer")
    return LINEAR_LAYERS.get(name)(**options)


def materialize(module: nn.Module) -> nn.Module:
    """`module` with every submodule that defines ``materialize()`` replaced by its result,
    e.g. POET layers by ordinary linear layers of the same function. Changes it in place."""
    for name, child in module.named_children():
        if hasattr(child, "materialize"):
            setattr(module, name, child.materialize())
        else:
            materialize(child)
    return module
