"""A permutation-invariant embedding net for iid trials: "set" (DeepSets).

FMPE(simulator, prior, embedding_net={"name": "set", "pooling": "attention"})
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fmpe.networks.embeddings import MLPEmbedding
from fmpe.networks.registry import register_embedding

POOLINGS = ("mean", "attention")


class SetEmbedding(nn.Module):
    """ρ(pool_i φ(x_i), m / trials): the same network φ on every trial, pooled over the
    trials, then ρ; the result does not depend on the trials' order.

    A trial with a NaN is missing: it is left out of the pooling, and ρ sees the fraction m /
    trials of trials present, so one net serves any number of trials up to ``x_shape[0]``.

    Args:
        x_shape: one observation, (trials,) or (trials, features).
        trial_widths: φ's layer widths, applied to each trial.
        widths: ρ's layer widths; the last is k, the number of features.
        pooling: "mean", or "attention": one learned query attends over the trials (the
            pooling by multihead attention of the Set Transformer).
        heads: attention heads; they must divide ``trial_widths[-1]``.
    """

    accepts_nan = True
    exchangeable_axes = (0,)  # the trials

    def __init__(
        self,
        x_shape: Sequence[int],
        trial_widths: Sequence[int] = (64, 64),
        widths: Sequence[int] = (64, 64),
        pooling: str = "mean",
        heads: int = 4,
        activation: str = "gelu",
    ):
        super().__init__()
        if len(x_shape) not in (1, 2):
            raise ValueError(
                f"x_shape must be (trials,) or (trials, features), got {tuple(x_shape)}"
            )
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        self.trials, self.features = x_shape[0], (x_shape[1] if len(x_shape) == 2 else 1)
        self.pooling = pooling
        self.trial_net = MLPEmbedding((self.features,), trial_widths, activation)
        width = trial_widths[-1]
        if pooling == "attention":
            if width % heads:
                raise ValueError(f"heads ({heads}) must divide trial_widths[-1] ({width})")
            self.query = nn.Parameter(torch.randn(1, 1, width) / width**0.5)
            self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.head = MLPEmbedding((width + 1,), widths, activation)

    def forward(self, x: Tensor) -> Tensor:
        """x: (n, *x_shape), NaN in missing trials -> (n, widths[-1])"""
        n = len(x)
        trials = x.reshape(n, self.trials, self.features)
        present = ~torch.isnan(trials).any(-1)  # (n, trials)
        encoded = self.trial_net(torch.nan_to_num(trials, nan=0.0).flatten(0, 1)).unflatten(
            0, (n, -1)
        )
        count = present.sum(1, keepdim=True)
        if self.pooling == "mean":
            pooled = (encoded * present.unsqueeze(-1)).sum(1) / count.clamp(min=1)
        else:
            # A row without any trial attends to all, rather than to none (which gives NaN).
            ignored = ~present & (count > 0)
            query = self.query.expand(n, -1, -1)
            pooled = self.attention(query, encoded, encoded, key_padding_mask=ignored)[0][:, 0]
        return self.head(torch.cat([pooled, count / self.trials], 1))


register_embedding("set", SetEmbedding)
