"""Embedding nets: maps from standardized x (n, *x_shape) to features (n, k).

Registered: "mlp" (a plain multilayer perceptron on the flattened x).
"""

import math
from collections.abc import Sequence

from torch import Tensor, nn

from fmpe.networks.registry import register_embedding
from fmpe.networks.velocity import make_activation


class MLPEmbedding(nn.Module):
    """Flattens x and applies Linear-activation layers, the last one linear.

    Args:
        x_shape: shape of one observation.
        widths: the output width of every layer; the last is k.
    """

    def __init__(
        self, x_shape: Sequence[int], widths: Sequence[int] = (64, 64), activation: str = "gelu"
    ):
        super().__init__()
        if len(widths) == 0:
            raise ValueError("widths must name at least one layer width")
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(x_shape)
        for i, out in enumerate(widths):
            if i > 0:
                layers.append(make_activation(activation))
            layers.append(nn.Linear(width, out))
            width = out
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """x: (n, *x_shape) -> (n, widths[-1])"""
        return self.net(x)


register_embedding("mlp", MLPEmbedding)
