"""Writing common torch priors as plain tensors and JSON, and building them back."""

from torch import Tensor
from torch import distributions as D

# The torch classes a prior may be built from, with the tensors that define each.
# Subclasses (pyro's distributions, sbi's BoxUniform) are stored as their torch base.
PARAMETERS: dict[type[D.Distribution], tuple[str, ...]] = {
    D.Uniform: ("low", "high"),
    D.Normal: ("loc", "scale"),
    D.LogNormal: ("loc", "scale"),
    D.MultivariateNormal: ("loc", "scale_tril"),
    D.Gamma: ("concentration", "rate"),
    D.Beta: ("concentration1", "concentration0"),
    D.Exponential: ("rate",),
    D.HalfNormal: ("scale",),
}


def _torch_class(distribution: D.Distribution) -> type[D.Distribution] | None:
    for cls in type(distribution).__mro__:
        if cls in PARAMETERS or cls is D.Independent:
            return cls
    return None


def is_serializable(distribution: D.Distribution) -> bool:
    cls = _torch_class(distribution)
    if cls is D.Independent:
        return is_serializable(distribution.base_dist)
    return cls is not None


def prior_to_dict(distribution: D.Distribution, prefix: str = "prior") -> tuple[dict, dict]:
    """Describes a prior as a JSON-able spec and a dict of named tensors.

    Raises:
        ValueError: for a distribution not built from the classes in PARAMETERS.
    """
    cls = _torch_class(distribution)
    if cls is None:
        raise ValueError(
            f"cannot store a prior of type {type(distribution).__name__}; supported: "
            f"Independent of {sorted(c.__name__ for c in PARAMETERS)}"
        )
    if cls is D.Independent:
        base_spec, tensors = prior_to_dict(distribution.base_dist, f"{prefix}.base")
        spec = {
            "type": "Independent",
            "reinterpreted_batch_ndims": distribution.reinterpreted_batch_ndims,
            "base": base_spec,
        }
        return spec, tensors
    tensors = {
        f"{prefix}.{name}": getattr(distribution, name).detach().cpu().contiguous()
        for name in PARAMETERS[cls]
    }
    return {"type": cls.__name__, "prefix": prefix}, tensors


def prior_from_dict(spec: dict, tensors: dict[str, Tensor]) -> D.Distribution:
    """Inverse of `prior_to_dict`: builds a plain torch distribution."""
    if spec["type"] == "Independent":
        base = prior_from_dict(spec["base"], tensors)
        return D.Independent(base, spec["reinterpreted_batch_ndims"])
    classes = {cls.__name__: cls for cls in PARAMETERS}
    if spec["type"] not in classes:
        raise ValueError(f"unknown prior type {spec['type']!r} in file")
    cls = classes[spec["type"]]
    arguments = {name: tensors[f"{spec['prefix']}.{name}"] for name in PARAMETERS[cls]}
    return cls(**arguments)
