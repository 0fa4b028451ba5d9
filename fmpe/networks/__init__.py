"""Networks, embedding nets and linear layers, each registered by name.

The protocol every network follows is in `fmpe.networks.registry.register_network` and in
docs/extending.md. Registered here: the velocity network "residual" (FMPE's default), the
conditional flows "nsf" (NPE's default) and "maf", the embedding nets "mlp", "svd",
"cnn1d", "cnn2d", "rnn" and "set", and the linear layers "linear" and "poet".
"""

from fmpe.networks import convolutional as _convolutional  # noqa: F401
from fmpe.networks import embeddings as _embeddings  # noqa: F401
from fmpe.networks import flows as _flows  # noqa: F401
from fmpe.networks import recurrent as _recurrent  # noqa: F401
from fmpe.networks import sets as _sets  # noqa: F401
from fmpe.networks.registry import (
    EMBEDDINGS,
    LINEAR_LAYERS,
    NETWORKS,
    accepts_nan,
    build_embedding,
    linear_factory,
    materialize,
    network_builder,
    register_embedding,
    register_linear,
    register_network,
)
from fmpe.networks.velocity import VelocityNetwork

register_network("residual", VelocityNetwork)


def _poet(**options):
    # Imported on use: POET's merges are a Lightning callback, and importing Lightning takes
    # seconds that loading and sampling a posterior should not pay.
    from fmpe.networks.poet import POET

    return POET(**options)


register_linear("poet", _poet)

__all__ = [
    "EMBEDDINGS",
    "LINEAR_LAYERS",
    "NETWORKS",
    "VelocityNetwork",
    "accepts_nan",
    "build_embedding",
    "linear_factory",
    "materialize",
    "network_builder",
    "register_embedding",
    "register_linear",
    "register_network",
]
