"""Simulation-based inference tasks behind one interface, and their hyperparameter cards.

>>> task = get_task("two_moons")
>>> theta = task.prior.sample((100,))   # (100, 2)
>>> x = task.simulate(theta)            # (100, 2)
"""

from fmpe.tasks.base import NoReferenceSamplesError, Task
from fmpe.tasks.cards import CardError, CardStore, TaskCard, available_cards, load_card
from fmpe.tasks.registry import TASKS, available_tasks, get_task, register_task

__all__ = [
    "TASKS",
    "CardError",
    "CardStore",
    "NoReferenceSamplesError",
    "Task",
    "TaskCard",
    "available_cards",
    "available_tasks",
    "get_task",
    "load_card",
    "register_task",
]
