"""Simulation-based inference tasks behind one interface: prior, simulator, observations and
reference posteriors (their hyperparameter cards are `fmpe.benchmark.cards`).

>>> task = get_task("two_moons")
>>> theta = task.prior.sample((100,))   # (100, 2)
>>> x = task.simulate(theta)            # (100, 2)
"""

from fmpe.tasks.base import NoReferenceSamplesError, Task
from fmpe.tasks.registry import TASKS, available_tasks, get_task, register_task

__all__ = [
    "TASKS",
    "NoReferenceSamplesError",
    "Task",
    "available_tasks",
    "get_task",
    "register_task",
]
