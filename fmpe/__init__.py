"""fmpe: flow matching posterior estimation for simulation-based inference."""

from fmpe._version import __version__ as __version__
from fmpe.coupling import register_coupling
from fmpe.lazy import lazy_attributes
from fmpe.networks import register_embedding, register_linear, register_network
from fmpe.ode import SolverSettings, register_solver
from fmpe.posteriors import Cost, Posterior
from fmpe.posteriors.file import load
from fmpe.tasks import register_task

# The estimators and their settings load Lightning, which takes seconds to import; they are
# imported on first use, so that loading and sampling a saved posterior does not pay for it.
_LAZY = {
    "FMPE": "fmpe.estimators",
    "NPE": "fmpe.estimators",
    "register_estimator": "fmpe.estimators",
    "TrainingSettings": "fmpe.training.settings",
}

__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)


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
