"""fmpe: flow matching posterior estimation for simulation-based inference."""

from fmpe._version import __version__ as __version__
from fmpe.coupling import register_coupling
from fmpe.estimators import FMPE, NPE, register_estimator
from fmpe.networks import register_embedding, register_linear, register_network
from fmpe.ode import SolverSettings, register_solver
from fmpe.posteriors import Cost, Posterior
from fmpe.posteriors.file import load
from fmpe.tasks import register_task
from fmpe.training import TrainingSettings

__all__ = [
    "FMPE",
    "NPE",
    "Cost",
    "Posterior",
    "SolverSettings",
    "TrainingSettings",
    "load",
    "register_coupling",
    "register_embedding",
    "register_estimator",
    "register_linear",
    "register_network",
    "register_solver",
    "register_task",
]
