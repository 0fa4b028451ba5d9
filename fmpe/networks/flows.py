"""Conditional normalizing flows q(θ | x) for neural posterior estimation, built with zuko.

Registered: "nsf" (neural spline flow, sbibm's NPE) and "maf" (masked autoregressive flow).
"""

from collections.abc import Sequence
from functools import partial

import torch
import zuko
from torch import Tensor, nn
from torch.distributions import Distribution

from fmpe.networks.registry import register_network

FLOWS = {"nsf": zuko.flows.NSF, "maf": zuko.flows.MAF}


class ConditionalFlow(nn.Module):
    """A zuko flow over standardized θ, conditioned on the embedded standardized x.

    Args:
        theta_dim: d.
        x_shape: shape of one observation.
        flow: "nsf" (monotonic rational-quadratic splines) or "maf" (affine).
        transforms: number of autoregressive transforms.
        hidden_features: widths of each transform's conditioner network.
        bins: spline bins (nsf only).
        embedding_net: maps x (n, *x_shape) to (n, k); None flattens x.
    """

    def __init__(
        self,
        theta_dim: int,
        x_shape: Sequence[int],
        flow: str = "nsf",
        transforms: int = 5,
        hidden_features: Sequence[int] = (50, 50),
        bins: int = 10,
        embedding_net: nn.Module | None = None,
    ):
        super().__init__()
        if flow not in FLOWS:
            raise ValueError(f"flow must be one of {sorted(FLOWS)}, got {flow!r}")
        self.embedding_net = embedding_net if embedding_net is not None else nn.Flatten()
        with torch.no_grad():
            context = self.embedding_net.eval()(torch.zeros(2, *x_shape)).shape[-1]
        self.embedding_net.train()
        options = {"bins": bins} if flow == "nsf" else {}
        self.flow = FLOWS[flow](
            theta_dim,
            context,
            transforms=transforms,
            hidden_features=tuple(hidden_features),
            **options,
        )

    def embed(self, x: Tensor) -> Tensor:
        """x: (n, *x_shape) -> (n, k)"""
        return self.embedding_net(x)

    def distribution(self, embedded_x: Tensor) -> Distribution:
        """q(θ | x) for embedded x (n, k): a distribution with batch shape (n,), event (d,)."""
        return self.flow(embedded_x)

    def forward(self, x: Tensor) -> Distribution:
        """x: (n, *x_shape) -> q(θ | x), batch shape (n,)."""
        return self.distribution(self.embed(x))


register_network("nsf", partial(ConditionalFlow, flow="nsf"))
register_network("maf", partial(ConditionalFlow, flow="maf"))
