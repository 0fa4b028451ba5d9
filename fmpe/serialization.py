"""Saving and loading posteriors: one safetensors file, with the configuration as JSON.

Nothing in the file is executed when it is loaded: tensors are raw arrays and everything
else is JSON. A SHA-256 checksum over the configuration and all tensors catches edited or
damaged files; a format version catches files from incompatible releases.
"""

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from fmpe.network import VelocityNetwork
from fmpe.ode import SolverSettings
from fmpe.posterior import Posterior
from fmpe.priors import is_serializable, prior_from_dict, prior_to_dict
from fmpe.standardize import Standardizer
from fmpe.unbounded import UnboundedTransform

FORMAT = "fmpe-posterior"
FORMAT_VERSION = 2
READABLE_VERSIONS = ("1", "2")


def _checksum(config: str, tensors: dict[str, Tensor]) -> str:
    digest = hashlib.sha256(config.encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_posterior(posterior: Posterior, path: str | Path) -> None:
    """Writes `posterior` to `path`.

    A prior that is not built from common torch distributions is not stored; such a file
    is loaded with `load(path, prior=...)`.
    """
    tensors = {name: t.detach().cpu().contiguous() for name, t in posterior.state_dict().items()}
    prior_spec = None
    if posterior.prior is not None and is_serializable(posterior.prior):
        prior_spec, prior_tensors = prior_to_dict(posterior.prior)
        tensors.update(prior_tensors)
    config = json.dumps(
        {
            "network": posterior.network.config,
            "custom_embedding": posterior.network.has_custom_embedding,
            "solver": posterior.solver.to_dict(),
            "chunk_size": posterior.chunk_size,
            "prior": prior_spec,
            "has_prior": posterior.prior is not None,
        },
        sort_keys=True,
    )
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": config,
        "checksum": _checksum(config, tensors),
    }
    save_file(tensors, str(path), metadata=metadata)


def _read(path: Path) -> tuple[dict[str, str], dict[str, Tensor]]:
    if not path.is_file():
        raise FileNotFoundError(f"no posterior file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"{path} is not a readable fmpe posterior file (truncated or damaged?): {error}"
        ) from error
    return metadata, tensors


def load(
    path: str | Path,
    *,
    prior: torch.distributions.Distribution | None = None,
    embedding_net: nn.Module | None = None,
    device: str | torch.device = "cpu",
) -> Posterior:
    """Loads a posterior saved with `Posterior.save`.

    Args:
        prior: replaces the stored prior; required when the saved prior could not be stored.
        embedding_net: a module of the same architecture as the one trained, required when a
            custom embedding net was used (its weights come from the file).

    Raises:
        ValueError: for a file that is not an fmpe posterior, is damaged or edited, or comes
            from an incompatible format version.
    """
    path = Path(path)
    metadata, tensors = _read(path)
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not an fmpe posterior file (format {metadata.get('format')!r})"
        )
    version = metadata.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ValueError(
            f"{path} has format version {version}, this fmpe reads versions "
            f"{', '.join(READABLE_VERSIONS)}"
        )
    config_text = metadata.get("config", "")
    if _checksum(config_text, tensors) != metadata.get("checksum"):
        raise ValueError(f"{path} fails its checksum: the file was edited or damaged")
    config = json.loads(config_text)

    if config["custom_embedding"] and embedding_net is None:
        raise ValueError(
            f"{path} was trained with a custom embedding net: pass a module of the same "
            "architecture as load(..., embedding_net=...)"
        )
    network = VelocityNetwork(**config["network"], embedding_net=embedding_net)
    if prior is None and config["prior"] is not None:
        prior = prior_from_dict(config["prior"], tensors)
    elif prior is None and config["has_prior"]:
        raise ValueError(
            f"the prior of {path} could not be stored: pass it as load(..., prior=...)"
        )
    if version == "1":  # written before the unbounded transform existed: the identity
        identity = UnboundedTransform.identity(network.theta_dim)
        tensors.update(identity.state_dict(prefix="theta_transform."))
    try:
        theta_transform = UnboundedTransform(
            tensors["theta_transform.low"], tensors["theta_transform.high"]
        )
    except (KeyError, ValueError) as error:
        raise ValueError(f"{path} holds no valid bounds of theta: {error}") from error
    posterior = Posterior(
        network,
        Standardizer(tensors["theta_standardizer.mean"], tensors["theta_standardizer.std"]),
        Standardizer(tensors["x_standardizer.mean"], tensors["x_standardizer.std"]),
        prior=prior,
        solver=SolverSettings(**config["solver"]),
        chunk_size=config["chunk_size"],
        theta_transform=theta_transform,
    )
    state = {k: v for k, v in tensors.items() if not k.startswith("prior.")}
    try:
        posterior.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"the weights in {path} do not fit its network: {error}") from error
    return posterior.to(device)
