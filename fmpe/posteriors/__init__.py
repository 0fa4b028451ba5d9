"""Posteriors: what a trained estimator returns, and the classes posterior files can name,
by their `Posterior.kind`; the file format is `fmpe.posteriors.file`."""

from fmpe.posteriors.base import Cost, Posterior
from fmpe.posteriors.composition import IID_METHODS
from fmpe.posteriors.flow_matching import FlowMatchingPosterior
from fmpe.posteriors.npe import NPEPosterior
from fmpe.registry import Registry

POSTERIORS: Registry[type[Posterior]] = Registry("posterior kind", "fmpe.posteriors.POSTERIORS")
"""kind -> posterior class; `fmpe.register_estimator` registers its estimator's class here."""
# The built-in kinds, so that loading a posterior file needs no estimator (nor Lightning).
POSTERIORS.register(FlowMatchingPosterior.kind, FlowMatchingPosterior)
POSTERIORS.register(NPEPosterior.kind, NPEPosterior)

__all__ = [
    "IID_METHODS",
    "POSTERIORS",
    "Cost",
    "FlowMatchingPosterior",
    "NPEPosterior",
    "Posterior",
]
