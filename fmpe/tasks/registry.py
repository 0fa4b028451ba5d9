"""Task names to task objects."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from fmpe.registry import Registry
from fmpe.tasks.base import Task
from fmpe.tasks.bernoulli_glm import BernoulliGLM
from fmpe.tasks.gw import GWTask
from fmpe.tasks.lotka_volterra import LotkaVolterra
from fmpe.tasks.sbibm import WRAPPED_TASKS, SbibmTask
from fmpe.tasks.sir import SIR
from fmpe.tasks.slcp_distractors import SlcpDistractors

TASKS: Registry[Callable[[], Task]] = Registry("task", "fmpe.tasks.TASKS")
"""name -> a function that returns a new instance of the task."""
for _name in WRAPPED_TASKS:
    TASKS.register(_name, partial(SbibmTask, _name))
TASKS.register("bernoulli_glm", partial(BernoulliGLM, "bernoulli_glm"))
TASKS.register("bernoulli_glm_raw", partial(BernoulliGLM, "bernoulli_glm_raw"))
TASKS.register("slcp_distractors", SlcpDistractors)
TASKS.register("sir", SIR)
TASKS.register("lotka_volterra", LotkaVolterra)
TASKS.register("gw", GWTask)


def register_task(name: str, factory: Callable[[], Task]) -> None:
    """Make ``get_task(name)`` return ``factory()``; the same as ``TASKS.register``."""
    TASKS.register(name, factory)


def available_tasks() -> list[str]:
    """Registered task names, sorted."""
    return TASKS.names()


def get_task(name: str) -> Task:
    """A new instance of the task registered as ``name``."""
    return TASKS.get(name)()
