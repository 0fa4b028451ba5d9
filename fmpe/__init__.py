"""fmpe: flow matching posterior estimation for simulation-based inference."""

from fmpe.estimator import FMPE
from fmpe.ode import SolverSettings
from fmpe.posterior import Posterior
from fmpe.serialization import load

__all__ = ["FMPE", "Posterior", "SolverSettings", "load"]
__version__ = "0.4.0"
