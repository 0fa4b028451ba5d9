"""fmpe: flow matching posterior estimation for simulation-based inference."""

__version__ = "0.5.0"

from fmpe.coupling import register_coupling  # noqa: E402
from fmpe.estimators import FMPE, NPE, register_estimator  # noqa: E402
from fmpe.io.posterior_file import load  # noqa: E402
from fmpe.networks import register_embedding, register_linear, register_network  # noqa: E402
from fmpe.ode import SolverSettings, register_solver  # noqa: E402
from fmpe.posteriors import Cost, Posterior  # noqa: E402
from fmpe.tasks import register_task  # noqa: E402
from fmpe.training import TrainingSettings  # noqa: E402

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
