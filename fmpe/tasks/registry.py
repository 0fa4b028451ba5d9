"""Task names to task objects."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from fmpe.tasks.base import Task
from fmpe.tasks.bernoulli_glm import BernoulliGLM
from fmpe.tasks.lotka_volterra import LotkaVolterra
from fmpe.tasks.sbibm import WRAPPED_TASKS, SbibmTask
from fmpe.tasks.sir import SIR
from fmpe.tasks.slcp_distractors import SlcpDistractors


def _gw() -> Task:
    # Imported when first used: the gw task registers benchmark metrics, and the benchmark
    # package imports this registry.
    from fmpe.tasks.gw import GWTask

    return GWTask()


_FACTORIES: dict[str, Callable[[], Task]] = {
    **{name: partial(SbibmTask, name) for name in WRAPPED_TASKS},
    "bernoulli_glm": partial(BernoulliGLM, "bernoulli_glm"),
    "bernoulli_glm_raw": partial(BernoulliGLM, "bernoulli_glm_raw"),
    "slcp_distractors": SlcpDistractors,
    "sir": SIR,
    "lotka_volterra": LotkaVolterra,
    "gw": _gw,
}


def register_task(name: str, factory: Callable[[], Task]) -> None:
    """Make ``get_task(name)`` return ``factory()``; a name can be registered once."""
    if name in _FACTORIES:
        raise ValueError(f"task {name!r} is already registered")
    _FACTORIES[name] = factory


def available_tasks() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_FACTORIES)


def get_task(name: str) -> Task:
    """A new instance of the task registered as ``name``."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; known tasks: {', '.join(available_tasks())}"
        ) from None
    return factory()
