"""A recurrent embedding net for sequences: "rnn", a GRU read to the end.

FMPE(simulator, prior, embedding_net={"name": "rnn", "hidden_size": 64})
"""

from collections.abc import Sequence

from torch import Tensor, nn

from fmpe.networks.embeddings import MLPEmbedding
from fmpe.networks.registry import register_embedding


class GRUEmbedding(nn.Module):
    """A GRU over the steps of x; its last layer's final state goes through an `MLPEmbedding`
    head.

    Args:
        x_shape: one observation, (steps,) or (steps, features).
        hidden_size: the GRU's state size.
        num_layers: stacked GRU layers.
        widths: the head's layer widths; the last is k, the number of features.
    """

    def __init__(
        self,
        x_shape: Sequence[int],
        hidden_size: int = 64,
        num_layers: int = 1,
        widths: Sequence[int] = (64,),
        activation: str = "gelu",
    ):
        super().__init__()
        if len(x_shape) not in (1, 2):
            raise ValueError(f"x_shape must be (steps,) or (steps, features), got {tuple(x_shape)}")
        self.steps, self.features = x_shape[0], (x_shape[1] if len(x_shape) == 2 else 1)
        self.gru = nn.GRU(self.features, hidden_size, num_layers, batch_first=True)
        self.head = MLPEmbedding((hidden_size,), widths, activation)

    def forward(self, x: Tensor) -> Tensor:
        """x: (n, *x_shape) -> (n, widths[-1])"""
        _, state = self.gru(x.reshape(len(x), self.steps, self.features))
        return self.head(state[-1])


register_embedding("rnn", GRUEmbedding)
