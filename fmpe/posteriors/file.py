"""Saving and loading posteriors: one safetensors file, with the configuration as JSON.

Nothing in the file is executed when it is loaded: tensors are raw arrays and everything
else is JSON. The posterior's class is named by its registered kind (`Posterior.kind`), the
network and its embedding net by their registered names, and rebuilt from JSON options. A
SHA-256 checksum over the format, its version, the configuration and all tensors catches
edited or damaged files.
"""

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from fmpe._version import __version__
from fmpe.coordinates import ThetaCoordinates
from fmpe.io.prior_codec import is_serializable, prior_from_dict, prior_to_dict
from fmpe.networks import build_embedding, network_builder
from fmpe.posteriors import POSTERIORS, Posterior
from fmpe.posteriors.record import TrainingRecord
from fmpe.standardize import Standardizer
from fmpe.unbounded import UnboundedTransform

FORMAT = "fmpe-posterior"
FORMAT_VERSION = "3"
READABLE_VERSIONS = ("1", "2", "3")


def _checksum(config: str, tensors: dict[str, Tensor], header: str = "") -> str:
    """SHA-256 over `header` (format and version, from version 3 on), the configuration and
    every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256((header + config).encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _header(version: str) -> str:
    return f"{FORMAT}:{version}:" if version not in ("1", "2") else ""


def _kind(posterior: Posterior) -> str:
    """The kind under which the posterior's class is registered, which the file names (as
    its "estimator")."""
    kind = POSTERIORS.name_of(type(posterior))
    if kind is None:
        raise ValueError(
            f"cannot save a posterior of type {type(posterior).__name__}: it is not a registered "
            "posterior kind. Register the estimator that returns it, with its posterior_class, "
            "by fmpe.estimators.ESTIMATORS.register(name, estimator)"
        )
    return kind


def _check_rebuilds(posterior: Posterior, network_spec: dict, embedding_spec) -> None:
    """Raises unless the file's description rebuilds a network with the posterior's weights."""
    if embedding_spec == "custom":
        return  # the module is passed again at load; its architecture cannot be checked here
    options = dict(network_spec["options"])
    if embedding_spec is not None:
        options["embedding_net"] = build_embedding(embedding_spec, posterior.x_shape)
    with torch.random.fork_rng(devices=[]):
        rebuilt = network_builder(network_spec["name"])(
            posterior.theta_dim, posterior.x_shape, **options
        )
    expected = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in posterior.network.state_dict().items()}
    if expected != actual:
        differing = sorted(set(expected.items()) ^ set(actual.items()))[:4]
        raise ValueError(
            f"network {network_spec['name']!r} rebuilt from its options does not hold the "
            f"trained weights (first differences: {differing}). Layers from a custom `linear` "
            "factory need a materialize() method that returns an ordinary nn.Linear"
        )


def save_posterior(posterior: Posterior, path: str | Path) -> None:
    """Writes `posterior` to `path`, atomically (a temporary file, then a rename).

    A prior that is not built from common torch distributions is not stored; such a file
    is loaded with `load(path, prior=...)`.
    """
    network_spec, embedding_spec = posterior.network_spec, posterior.embedding_spec
    if network_spec is None:
        raise ValueError(
            "the posterior's network was built by an unregistered builder, so a file cannot "
            "name it: register it with fmpe.register_network('my_network', builder) and train "
            "with network='my_network'"
        )
    for what, value in (
        ("the options of the network", network_spec),
        ("metadata", posterior.metadata),
    ):
        try:
            json.dumps(value)
        except TypeError as error:
            raise ValueError(f"{what} must be JSON values to be saved: {error}") from None
    _check_rebuilds(posterior, network_spec, embedding_spec)
    tensors = {name: t.detach().cpu().contiguous() for name, t in posterior.state_dict().items()}
    prior_spec = None
    if posterior.prior is not None and is_serializable(posterior.prior):
        prior_spec, prior_tensors = prior_to_dict(posterior.prior)
        tensors.update(prior_tensors)
    record = posterior.training_record
    config = json.dumps(
        {
            "estimator": _kind(posterior),
            "network": network_spec,
            "embedding": embedding_spec,
            "theta_dim": posterior.theta_dim,
            "x_shape": list(posterior.x_shape),
            "chunk_size": posterior.chunk_size,
            "options": posterior._file_options(),
            "prior": prior_spec,
            "has_prior": posterior.prior is not None,
            "training": record.__dict__ if record is not None else None,
            "metadata": posterior.metadata,
            "fmpe_version": __version__,
        },
        sort_keys=True,
    )
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config,
        "checksum": _checksum(config, tensors, _header(FORMAT_VERSION)),
    }
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    partial.replace(path)


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


def _upgraded(config: dict, version: str) -> dict:
    """The configuration of a version 1 or 2 file (fmpe 0.2 to 0.4) in version 3's terms."""
    network = dict(config["network"])
    theta_dim, x_shape = network.pop("theta_dim"), network.pop("x_shape")
    return {
        "estimator": "fmpe",
        "network": {"name": "residual", "options": network},
        "embedding": "custom" if config["custom_embedding"] else None,
        "theta_dim": theta_dim,
        "x_shape": x_shape,
        "chunk_size": config["chunk_size"],
        "options": {"solver": config["solver"]},
        "prior": config["prior"],
        "has_prior": config["has_prior"],
        "training": None,
    }


def _check_version(path: Path, version: str | None, tensors: dict[str, Tensor]) -> None:
    if version not in READABLE_VERSIONS:
        raise ValueError(
            f"{path} has format version {version}, this fmpe reads versions "
            f"{', '.join(READABLE_VERSIONS)}"
        )
    # Versions 1 and 2 kept the version outside their checksum; what each holds tells them
    # apart, so an edited version number is caught.
    has_bounds = "theta_transform.low" in tensors
    if version == "1" and has_bounds or version == "2" and not has_bounds:
        raise ValueError(
            f"{path} says format version {version} but holds "
            f"{'bounds of θ' if has_bounds else 'no bounds of θ'}: the file was edited or damaged"
        )


def load(
    path: str | Path,
    *,
    prior: torch.distributions.Distribution | None = None,
    embedding_net: nn.Module | None = None,
    device: str | torch.device = "cpu",
) -> Posterior:
    """Loads a posterior saved with `Posterior.save`.

    Args:
        prior: replaces the stored prior (it must be over θ of the posterior's dimension);
            required when the saved prior could not be stored.
        embedding_net: a module of the same architecture as the one trained, required when an
            embedding net was given as a module rather than by registered name (its weights
            come from the file).

    Raises:
        ValueError: for a file that is not an fmpe posterior, is damaged or edited, comes
            from an incompatible format version, or names a network that is not registered.
    """
    path = Path(path)
    metadata, tensors = _read(path)
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not an fmpe posterior file (format {metadata.get('format')!r})"
        )
    version = metadata.get("format_version")
    _check_version(path, version, tensors)
    config_text = metadata.get("config", "")
    if _checksum(config_text, tensors, _header(version)) != metadata.get("checksum"):
        raise ValueError(f"{path} fails its checksum: the file was edited or damaged")
    config = json.loads(config_text)
    if version in ("1", "2"):
        config = _upgraded(config, version)
    if version == "1":  # written before the unbounded transform existed: the identity
        identity = UnboundedTransform.identity(config["theta_dim"])
        tensors.update(identity.state_dict(prefix="theta_transform."))

    kind = config["estimator"]
    try:
        cls = POSTERIORS.get(kind)
    except ValueError as error:
        raise ValueError(
            f"{path} holds a posterior of kind {kind!r}, which is not registered (register "
            f"the estimator that trained it first): {error}"
        ) from None
    theta_dim, x_shape = config["theta_dim"], tuple(config["x_shape"])
    options = dict(config["network"]["options"])
    embedding = config["embedding"]
    if embedding == "custom":
        if embedding_net is None:
            raise ValueError(
                f"{path} was trained with a custom embedding net: pass a module of the same "
                "architecture as load(..., embedding_net=...)"
            )
        options["embedding_net"] = embedding_net
    elif embedding is not None:
        options["embedding_net"] = build_embedding(embedding, x_shape)
    name = config["network"]["name"]
    try:
        builder = network_builder(name)
    except ValueError as error:
        raise ValueError(
            f"{path} names network {name!r}, which is not registered: {error}"
        ) from None
    with torch.random.fork_rng(devices=[]):  # loading leaves the caller's random state alone
        network = builder(theta_dim, x_shape, **options)

    if prior is None and config["prior"] is not None:
        prior = prior_from_dict(config["prior"], tensors)
    elif prior is None and config["has_prior"]:
        raise ValueError(
            f"the prior of {path} could not be stored: pass it as load(..., prior=...)"
        )
    elif prior is not None:
        with torch.random.fork_rng(devices=[]):
            draw = prior.sample((2,))
        if tuple(draw.shape) != (2, theta_dim):
            raise ValueError(
                f"the prior passed to load draws θ of shape {tuple(draw.shape[1:])}, but {path} "
                f"is a posterior over θ of dimension {theta_dim}"
            )
    try:
        theta_transform = UnboundedTransform(
            tensors["theta_transform.low"], tensors["theta_transform.high"]
        )
    except (KeyError, ValueError) as error:
        raise ValueError(f"{path} holds no valid bounds of θ: {error}") from error
    theta_standardizer = Standardizer(
        tensors["theta_standardizer.mean"], tensors["theta_standardizer.std"]
    )
    posterior = cls(
        network,
        ThetaCoordinates(theta_transform, theta_standardizer),
        Standardizer(tensors["x_standardizer.mean"], tensors["x_standardizer.std"]),
        prior=prior,
        chunk_size=config["chunk_size"],
        **cls._init_options(config["options"]),
    )
    state = {k: v for k, v in tensors.items() if not k.startswith("prior.")}
    try:
        posterior.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"the weights in {path} do not fit its network: {error}") from error
    posterior.network_spec = config["network"]
    posterior.embedding_spec = embedding
    if config["training"] is not None:
        posterior.training_record = TrainingRecord(**config["training"])
    posterior.metadata = config.get("metadata", {})
    return posterior.to(device)
