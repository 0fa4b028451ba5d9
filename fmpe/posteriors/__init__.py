"""Posteriors: what a trained estimator returns."""

from fmpe.posteriors.base import Cost, Posterior
from fmpe.posteriors.flow_matching import FlowMatchingPosterior
from fmpe.posteriors.npe import NPEPosterior

__all__ = ["Cost", "FlowMatchingPosterior", "NPEPosterior", "Posterior"]
