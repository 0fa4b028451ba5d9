"""Estimators by name: FMPE, and NPE as the baseline.

>>> ESTIMATORS.register("my_method", MyEstimator)     # an `Estimator` subclass

and then ``fmpe.benchmark.run(["two_moons"], [10_000], [1], estimator="my_method", ...)`` in
the same process. Registering an estimator registers its `posterior_class` by its kind, so
that its posteriors can be saved and loaded.
"""

from fmpe.estimators.base import Estimator
from fmpe.estimators.fmpe import FMPE
from fmpe.estimators.npe import NPE
from fmpe.posteriors import POSTERIORS, Posterior
from fmpe.registry import Registry


def _register_posterior_class(name: str, estimator: type[Estimator]) -> None:
    """Registers the posterior class of a new estimator by its kind, unless it is already
    (several estimators may share one)."""
    posterior = getattr(estimator, "posterior_class", None)
    if not (
        isinstance(posterior, type)
        and issubclass(posterior, Posterior)
        and isinstance(getattr(posterior, "kind", None), str)
    ):
        raise ValueError(
            f"the estimator {name!r} must name its posterior_class: a Posterior subclass with "
            f"a kind (the name its posterior files give it), got {posterior!r}"
        )
    if POSTERIORS.name_of(posterior) is None:
        POSTERIORS.register(posterior.kind, posterior)


ESTIMATORS: Registry[type[Estimator]] = Registry(
    "estimator", "fmpe.estimators.ESTIMATORS", on_register=_register_posterior_class
)
ESTIMATORS.register("fmpe", FMPE)
ESTIMATORS.register("npe", NPE)


def register_estimator(name: str, estimator: type[Estimator]) -> None:
    """Makes `estimator` available by `name` to the benchmark, the sweep and the cards, and
    its posteriors to `Posterior.save` and `fmpe.load`; the same as
    ``ESTIMATORS.register(name, estimator)``."""
    ESTIMATORS.register(name, estimator)


def get_estimator(name: str) -> type[Estimator]:
    """The estimator registered as `name`."""
    return ESTIMATORS.get(name)


__all__ = ["ESTIMATORS", "FMPE", "NPE", "Estimator", "get_estimator", "register_estimator"]
