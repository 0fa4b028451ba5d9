"""Task cards: declarative TOML files with a task's description and its hyperparameters.

A card ``<name>.toml``::

    name = "two_moons"
    source = "sbibm"
    description = "..."
    [model]                 # keyword arguments for fmpe.FMPE(...)
    [train]                 # keyword arguments for FMPE.train(...)
    [budget.1000.model]     # overrides for a simulation budget (optional)
    [budget.1000.train]

Installed cards live in the package (``fmpe/task_cards``); in a source checkout they are
read from the repository's top-level ``tasks/`` folder.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

import tomllib

Table = dict[str, Any]

_SECTIONS = ("model", "train")


class CardError(ValueError):
    """A task card that cannot be read; the message starts with the file."""


@dataclass(frozen=True)
class TaskCard:
    """A parsed task card.

    Attributes:
        name, source, description: as in the file.
        model, train: default keyword arguments for ``FMPE(...)`` and ``FMPE.train(...)``.
        budgets: per simulation budget, overrides ``{"model": {...}, "train": {...}}``.
    """

    name: str
    source: str
    description: str
    model: Table
    train: Table
    budgets: dict[int, dict[str, Table]]

    def hyperparameters(self, budget: int) -> tuple[Table, Table]:
        """``(model kwargs, train kwargs)`` for a simulation budget.

        The defaults are overridden by the card's budget equal to ``budget`` or, failing
        that, by the largest budget below it; below every listed budget the defaults apply.
        """
        if budget < 1:
            raise ValueError(f"the simulation budget must be positive, got {budget}")
        below = [b for b in self.budgets if b <= budget]
        overrides = self.budgets[max(below)] if below else {}
        model = {**self.model, **overrides.get("model", {})}
        train = {**self.train, **overrides.get("train", {})}
        return copy.deepcopy(model), copy.deepcopy(train)


def card_folder() -> Traversable:
    """Where the cards are: inside the installed package, else the checkout's ``tasks/``."""
    packaged = files("fmpe") / "task_cards"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "tasks"


def available_cards() -> list[str]:
    """Names of the task cards, sorted."""
    folder = card_folder()
    if not folder.is_dir():
        return []
    return sorted(
        f.name.removesuffix(".toml") for f in folder.iterdir() if f.name.endswith(".toml")
    )


def load_card(name: str) -> TaskCard:
    """Read and check the card of task ``name``."""
    path = card_folder() / f"{name}.toml"
    if not path.is_file():
        raise ValueError(f"no task card {name!r}; available: {', '.join(available_cards())}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise CardError(f"{path}: not valid TOML: {error}") from error
    return _parse(data, name, str(path))


def _parse(data: Table, name: str, where: str) -> TaskCard:
    unknown = set(data) - {"name", "source", "description", "budget", *_SECTIONS}
    if unknown:
        raise CardError(f"{where}: unknown keys {sorted(unknown)}")
    for key in ("name", "source", "description"):
        if not isinstance(data.get(key), str):
            raise CardError(f"{where}: {key!r} must be a string")
    if data["name"] != name:
        raise CardError(f"{where}: the card is named {data['name']!r}, not {name!r}")
    sections = {key: _table(data, key, where) for key in _SECTIONS}

    budgets: dict[int, dict[str, Table]] = {}
    for key, overrides in _table(data, "budget", where).items():
        if not key.isdigit() or int(key) < 1:
            raise CardError(f"{where}: budget {key!r} is not a positive integer")
        if not isinstance(overrides, dict) or set(overrides) - set(_SECTIONS):
            raise CardError(f"{where}: [budget.{key}] may only hold [model] and [train] tables")
        budgets[int(key)] = {s: _table(overrides, s, f"{where} [budget.{key}]") for s in overrides}
    return TaskCard(
        name=data["name"],
        source=data["source"],
        description=data["description"],
        model=sections["model"],
        train=sections["train"],
        budgets=budgets,
    )


def _table(data: Table, key: str, where: str) -> Table:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise CardError(f"{where}: {key!r} must be a table")
    return value
