"""Estimators by name: FMPE, and NPE as the baseline.

>>> register_estimator("my_method", MyEstimator)     # an `Estimator` subclass

and then ``fmpe benchmark two_moons --budget 10000 --estimator my_method``.
"""

from fmpe.estimators.base import Estimator
from fmpe.estimators.fmpe import FMPE
from fmpe.estimators.npe import NPE

ESTIMATORS: dict[str, type[Estimator]] = {"fmpe": FMPE, "npe": NPE}


def register_estimator(name: str, estimator: type[Estimator]) -> None:
    """Makes `estimator` available by `name` to the benchmark, the sweep and the cards."""
    if name in ESTIMATORS:
        raise ValueError(f"an estimator named {name!r} is already registered")
    ESTIMATORS[name] = estimator


def get_estimator(name: str) -> type[Estimator]:
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; registered: {', '.join(sorted(ESTIMATORS))}")
    return ESTIMATORS[name]


__all__ = ["ESTIMATORS", "FMPE", "NPE", "Estimator", "get_estimator", "register_estimator"]
