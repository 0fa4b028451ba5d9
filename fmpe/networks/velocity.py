"""The default velocity network v(t, θ_t, x): a dense residual network with gated
conditioning, registered as "residual"."""

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from fmpe.networks.registry import LinearFactory, LinearSpec, linear_factory

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}

Route = Literal["main", "gate", "both"]

NEAR_ZERO = 1e-3
"""The scale of the last layer of a residual block at initialization."""


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def start_near_zero(layer: nn.Module) -> None:
    """Draws `layer` within about `NEAR_ZERO` of the zero map. A reparameterized layer that
    offers `start_near_zero` does it its own way: POET fixes W0's singular values, so shrinking
    its weight here would keep the layer near zero for good."""
    if isinstance(layer, nn.Linear):
        nn.init.uniform_(layer.weight, -NEAR_ZERO, NEAR_ZERO)
        nn.init.uniform_(layer.bias, -NEAR_ZERO, NEAR_ZERO)
    elif hasattr(layer, "start_near_zero"):
        layer.start_near_zero(NEAR_ZERO)


class ResidualBlock(nn.Module):
    """Pre-activation residual block with an optional gated linear unit (GLU) for a context.

    h = Linear(Dropout(act(BN(Linear(act(BN(z)))))))
    h = h * sigmoid(W c + b)      if a context c is given
    out = z + h

    With `near_identity` (the default) the last linear layer starts within `NEAR_ZERO` of the
    zero map, so that the block starts near the identity.
    """

    def __init__(
        self,
        width: int,
        context_dim: int,
        activation: str,
        dropout: float,
        batch_norm: bool,
        linear: LinearFactory = nn.Linear,
        near_identity: bool = True,
    ):
        super().__init__()
        self.norm1 = nn.BatchNorm1d(width) if batch_norm else nn.Identity()
        self.norm2 = nn.BatchNorm1d(width) if batch_norm else nn.Identity()
        self.act = make_activation(activation)
        self.linear1 = linear(width, width)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = linear(width, width)
        if near_identity:
            start_near_zero(self.linear2)
        self.gate = linear(context_dim, width) if context_dim > 0 else None

    def forward(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """z: (n, width), context: (n, context_dim) -> (n, width)"""
        h = self.linear1(self.act(self.norm1(z)))
        h = self.linear2(self.dropout(self.act(self.norm2(h))))
        if self.gate is not None:
            h = h * torch.sigmoid(self.gate(context))
        return z + h


class DenseResidualNet(nn.Module):
    """An input layer, one residual block per hidden width, linear resizes where the width
    changes, and an output layer.

    Args:
        input_dim: width of the main input.
        output_dim: width of the output.
        hidden_widths: one residual block per entry.
        context_dim: width of the context that gates every block (0 for no gating).
        linear: builds every linear layer, `linear(in_features, out_features)`.
        near_identity_blocks: start every block near the identity (`ResidualBlock`).
        end_linear: builds the input and output layers instead of `linear` (None: `linear`).
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        hidden_widths: Sequence[int],
        context_dim: int = 0,
        activation: str = "gelu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        linear: LinearFactory = nn.Linear,
        near_identity_blocks: bool = True,
        end_linear: LinearFactory | None = None,
    ):
        super().__init__()
        if len(hidden_widths) == 0:
            raise ValueError("hidden_widths must name at least one block width")
        widths = list(hidden_widths)
        end_linear = end_linear or linear
        self.input_layer = end_linear(input_dim, widths[0])
        self.blocks = nn.ModuleList(
            ResidualBlock(
                w, context_dim, activation, dropout, batch_norm, linear, near_identity_blocks
            )
            for w in widths
        )
        self.resizes = nn.ModuleList(
            linear(w, w_next) if w != w_next else nn.Identity()
            for w, w_next in zip(widths, widths[1:] + widths[-1:])
        )
        self.output_act = make_activation(activation)
        self.output_layer = end_linear(widths[-1], output_dim)

    def forward(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """z: (n, input_dim), context: (n, context_dim) -> (n, output_dim)"""
        z = self.input_layer(z)
        for block, resize in zip(self.blocks, self.resizes):
            z = resize(block(z, context))
        return self.output_layer(self.output_act(z))


class VelocityNetwork(nn.Module):
    """v(t, θ_t, x) for standardized θ and x.

    `theta_route` and `x_route` say where (t, θ) and the embedded x enter the residual network:
    "main" concatenates them into its input, "gate" feeds them to the GLU gate of every block,
    "both" does both. The FMPE paper concatenates everything for low-dimensional data and
    gates with (t, θ) for 100-dimensional data.

    Args:
        theta_dim: d, the number of parameters.
        x_shape: shape of one (standardized) observation.
        hidden_widths: one residual block per entry; the default is the sweep's one
            configuration at 1e4 simulations (tasks/defaults.toml, `[fmpe.selected.10000]`).
        embedding_net: maps x (n, *x_shape) to (n, k); None flattens x.
        linear: builds every linear layer: a factory `linear(in_features, out_features)`,
            or the name of a registered one ("linear", "poet") or {"name": ..., **options}.
        near_identity_blocks: start every residual block near the identity (the default);
            False leaves each block's last layer as its `linear` factory initializes it.
        t_theta_widths: one residual block per entry of a network that embeds (t, θ) into
            `t_theta_widths[-1]` features before they enter their route, as the FMPE paper
            does for gravitational waves; empty (the default): (t, θ) enters as it is. A gate
            of the raw (t, θ) is a linear map through a sigmoid, so the velocity then depends
            on θ only through those gates.
        end_linear: builds the first and last layer of each residual network instead of
            `linear`, as `linear` does; None (the default): `linear`. E.g. linear="poet" with
            end_linear="linear" keeps ordinary layers where the few inputs enter and the
            velocity leaves, whose gains a fixed spectrum would otherwise fix.
    """

    def __init__(
        self,
        theta_dim: int,
        x_shape: Sequence[int],
        hidden_widths: Sequence[int] = (64, 128, 256, 128, 64),
        theta_route: Route = "main",
        x_route: Route = "main",
        embedding_net: nn.Module | None = None,
        activation: str = "gelu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        linear: LinearFactory | LinearSpec | None = None,
        near_identity_blocks: bool = True,
        t_theta_widths: Sequence[int] = (),
        end_linear: LinearFactory | LinearSpec | None = None,
    ):
        super().__init__()
        for name, route in (("theta_route", theta_route), ("x_route", x_route)):
            if route not in ("main", "gate", "both"):
                raise ValueError(f"{name} must be 'main', 'gate' or 'both', got {route!r}")
        self.theta_dim = theta_dim
        self.x_shape = tuple(x_shape)
        self.theta_route = theta_route
        self.x_route = x_route
        self.linear = linear_factory(linear)
        self.end_linear = linear_factory(end_linear) if end_linear is not None else self.linear
        self.embedding_net = embedding_net if embedding_net is not None else nn.Flatten()
        embedding_dim = self._embedding_dim()
        t_theta_dim = t_theta_widths[-1] if len(t_theta_widths) > 0 else 1 + theta_dim
        self.t_theta_embedding = (
            DenseResidualNet(
                1 + theta_dim,
                t_theta_dim,
                t_theta_widths,
                activation=activation,
                linear=self.linear,
                near_identity_blocks=near_identity_blocks,
                end_linear=self.end_linear,
            )
            if len(t_theta_widths) > 0
            else nn.Identity()
        )

        widths = {"main": 0, "gate": 0}
        for route, dim in ((theta_route, t_theta_dim), (x_route, embedding_dim)):
            for target in ("main", "gate"):
                if route in (target, "both"):
                    widths[target] += dim
        if widths["main"] == 0:
            raise ValueError("at least one of theta_route and x_route must include 'main'")
        self.net = DenseResidualNet(
            widths["main"],
            theta_dim,
            hidden_widths,
            context_dim=widths["gate"],
            activation=activation,
            dropout=dropout,
            batch_norm=batch_norm,
            linear=self.linear,
            near_identity_blocks=near_identity_blocks,
            end_linear=self.end_linear,
        )

    def _embedding_dim(self) -> int:
        with torch.no_grad():
            was_training = self.embedding_net.training
            self.embedding_net.eval()
            out = self.embedding_net(torch.zeros(2, *self.x_shape))
            self.embedding_net.train(was_training)
        if out.dim() != 2:
            raise ValueError(
                "the embedding net must map x (n, *x_shape) to (n, k), "
                f"got shape {tuple(out.shape)}"
            )
        return out.shape[1]

    def embed(self, x: Tensor) -> Tensor:
        """x: (n, *x_shape) -> (n, k)"""
        return self.embedding_net(x)

    def forward_embedded(self, t: Tensor, theta: Tensor, embedded_x: Tensor) -> Tensor:
        """Velocity from an already embedded x, so that an ODE solve embeds x only once.

        Args:
            t: (n,) or a scalar, theta: (n, d), embedded_x: (n, k)

        Returns:
            (n, d)
        """
        t = t.expand(theta.shape[0]) if t.dim() == 0 else t
        t_theta = self.t_theta_embedding(torch.cat([t.unsqueeze(-1).to(theta.dtype), theta], -1))
        parts = {"main": [], "gate": []}
        for route, value in ((self.theta_route, t_theta), (self.x_route, embedded_x)):
            for target in ("main", "gate"):
                if route in (target, "both"):
                    parts[target].append(value)
        context = torch.cat(parts["gate"], dim=-1) if parts["gate"] else None
        return self.net(torch.cat(parts["main"], dim=-1), context)

    def forward(self, t: Tensor, theta: Tensor, x: Tensor) -> Tensor:
        """t: (n,), theta: (n, d), x: (n, *x_shape) -> (n, d)"""
        return self.forward_embedded(t, theta, self.embed(x))

    def _layer_factory_with(self, method: str):
        """`linear`, else `end_linear`, whichever first defines `method`; None if neither.
        A factory's method covers every layer of its kind in the network (POET's merges and
        optimizer groups find POET layers wherever they are), so one of them is used."""
        return next((f for f in (self.linear, self.end_linear) if hasattr(f, method)), None)

    def training_callbacks(self) -> list:
        """Lightning callbacks that the layers need while training (POET's merges)."""
        factory = self._layer_factory_with("training_callbacks")
        return list(factory.training_callbacks()) if factory is not None else []

    def parameter_groups(self) -> list[dict]:
        """The layer factory's optimizer groups (POET's rotations), else one group."""
        factory = self._layer_factory_with("parameter_groups")
        if factory is not None:
            return factory.parameter_groups(self)
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]
