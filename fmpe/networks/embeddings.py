"""Embedding nets: maps from standardized x (n, *x_shape) to features (n, k).

Registered: "mlp" (a plain multilayer perceptron on the flattened x) and "svd" (a projection
per channel onto a basis fitted by SVD, then a residual network).
"""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fmpe.networks.registry import register_embedding
from fmpe.networks.velocity import DenseResidualNet, make_activation


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


EXACT_SVD_FEATURES = 2048
"""Up to this many numbers per channel, `SVDEmbedding.fit_to_data` is exact; above, randomized."""
RANDOMIZED_OVERSAMPLING = 16


class SVDEmbedding(nn.Module):
    """A linear projection of each detector's data onto a basis fitted by SVD, then a residual
    network, as in the FMPE paper's gravitational-wave embedding (there: 150 elements per
    detector).

    x has shape (channels, *rest), e.g. (detectors, 2, bins) for `fmpe.gw.GWSimulator`; every
    channel is projected onto its own `basis` elements. Until `fit_to_data` is called the basis
    is a random orthonormal one. The basis is a trainable weight, so it is fine-tuned with the
    rest of the network, and it is saved with the weights, so a loaded network needs no refit.

    Args:
        x_shape: shape of one observation, (channels, *rest).
        basis: basis elements per channel.
        hidden_widths: one residual block (`DenseResidualNet`) per entry.
        width: k, the number of output features.
    """

    def __init__(
        self,
        x_shape: Sequence[int],
        basis: int = 64,
        hidden_widths: Sequence[int] = (256, 256),
        width: int = 128,
        activation: str = "gelu",
    ):
        super().__init__()
        if len(x_shape) < 1:
            raise ValueError(f"x_shape must be (channels, *rest), got {tuple(x_shape)}")
        channels, features = x_shape[0], math.prod(x_shape[1:])
        if not isinstance(basis, int) or not 1 <= basis <= features:
            raise ValueError(
                f"basis must be an int in [1, {features}] (the numbers per channel), got {basis!r}"
            )
        self.x_shape = tuple(x_shape)
        random = torch.linalg.qr(torch.randn(channels, features, basis)).Q
        self.basis = nn.Parameter(random.transpose(1, 2).contiguous())  # (channels, basis, m)
        self.net = DenseResidualNet(channels * basis, width, hidden_widths, activation=activation)

    @torch.no_grad()
    def fit_to_data(self, x: Tensor) -> None:
        """Sets each channel's basis to the leading right singular vectors of the training
        data x: (n, *x_shape), standardized (and, for GW, noise-free): exactly, or by a
        randomized SVD with four power iterations above `EXACT_SVD_FEATURES` per channel."""
        if tuple(x.shape[1:]) != self.x_shape:
            raise ValueError(
                f"fit_to_data needs x of shape (n, *{self.x_shape}), got {tuple(x.shape)}"
            )
        channels, basis, features = self.basis.shape
        if len(x) < basis:
            raise ValueError(f"fitting {basis} basis elements needs at least {basis} rows of x")
        rows = x.reshape(len(x), channels, features).transpose(0, 1).double()
        if features <= EXACT_SVD_FEATURES:
            # Eigenvectors of the Gram matrix XᵀX are the right singular vectors of X.
            _, vectors = torch.linalg.eigh(rows.transpose(1, 2) @ rows)  # ascending eigenvalues
            leading = vectors.flip(-1)[..., :basis]
        else:
            # The Gram matrix's eigendecomposition costs features³ (minutes at 20-512 Hz); a
            # randomized SVD costs rows·features·basis. It runs on the CPU with its own seed,
            # so that fitting does not move the caller's random streams.
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(0)
                q = min(basis + RANDOMIZED_OVERSAMPLING, len(x))
                leading = torch.svd_lowrank(rows.cpu(), q=q, niter=4)[2]
            leading = leading[..., :basis]
        self.basis.copy_(leading.transpose(1, 2).to(self.basis))

    def project(self, x: Tensor) -> Tensor:
        """The basis coefficients, x: (n, *x_shape) -> (n, channels, basis)."""
        channels, _, features = self.basis.shape
        return torch.einsum("ncm,ckm->nck", x.reshape(len(x), channels, features), self.basis)

    def forward(self, x: Tensor) -> Tensor:
        """x: (n, *x_shape) -> (n, width)"""
        return self.net(self.project(x).flatten(1))


register_embedding("svd", SVDEmbedding)
