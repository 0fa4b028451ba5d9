"""Task cards: declarative TOML files with a task's description and its hyperparameters.

Every card starts from the base card ``defaults.toml`` and overrides only what differs::

    name = "two_moons"
    source = "sbibm"
    description = "..."
    [fmpe.model]                       # keyword arguments of fmpe.FMPE(...)
    [fmpe.model.network_options]       # ... of the network builder
    [fmpe.train]                       # training settings of FMPE.train(...)
    [fmpe.budget.1000.model]           # overrides for a simulation budget
    [fmpe.selected.1000.model]         # the settings `fmpe sweep` selected (generated)
    [fmpe.variants.poet.model]         # overrides of a named variant (e.g. POET layers)
    [fmpe.variants.poet.train]         # ... where learning_rate_factor scales the ordinary rate
    [npe.model]                        # the same for every registered estimator

For a budget B, the overrides of the largest budget at or below B that either card declares
(in `budget` or `selected`) apply, none below every declared budget. Tables merge key by
key, in the order: base defaults, task defaults, base budget overrides, the base card's
selected settings of that budget, task budget overrides, the task card's selected settings,
and, for a variant, the base card's and then the task card's overrides of that variant. The
`selected` tables are generated: ``fmpe sweep TASK --write-card`` writes a task's choice,
``fmpe sweep defaults --write-card`` the base card's one choice for every sbibm task (the
base card's selected tables apply to those tasks only). Within a card they override the
hand-written budget tables, which keep the settings the sweep does not search. Every key is
checked
against the signature it feeds; an unknown one is an error that names the valid ones.

Installed cards live in the package (``fmpe/task_cards``); in a source checkout they are
read from the repository's top-level ``tasks/`` folder.
"""

from __future__ import annotations

import copy
import inspect
import tomllib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmpe.estimators import ESTIMATORS, get_estimator
from fmpe.networks import network_builder
from fmpe.ode import SolverSettings
from fmpe.training import TrainingSettings

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

Table = dict[str, Any]

BASE_CARD = "defaults"
SWEPT_SOURCE = "sbibm"
"""The source of the tasks whose searches the base card's selected settings are chosen from;
they apply to those tasks alone (another task, e.g. gw, keeps its own card's settings)."""
_SECTIONS = ("model", "train")


class CardError(ValueError):
    """A task card that cannot be read; the message starts with the file."""


@dataclass(frozen=True)
class EstimatorCard:
    """One estimator's tables of a card: defaults, per-budget overrides, the per-budget
    settings a sweep selected, and per-variant overrides."""

    model: Table
    train: Table
    budgets: dict[int, dict[str, Table]]
    variants: dict[str, dict[str, Table]]
    selected: dict[int, dict[str, Table]]


@dataclass(frozen=True)
class TaskCard:
    """A parsed task card, merged with the base card.

    Attributes:
        name, source, description: as in the file.
        estimators: per estimator name, the task's own tables (`EstimatorCard`).
        base: the base card's tables, per estimator.
    """

    name: str
    source: str
    description: str
    estimators: dict[str, EstimatorCard]
    base: dict[str, EstimatorCard]

    def budgets(self, estimator: str = "fmpe") -> list[int]:
        """The budgets that either card declares for `estimator`, sorted."""
        parts = [c.get(estimator) for c in (self.base, self.estimators)]
        return sorted(
            {b for part in parts if part is not None for b in (*part.budgets, *part.selected)}
        )

    def variants(self, estimator: str = "fmpe") -> list[str]:
        """The variants that either card declares for `estimator`, sorted."""
        parts = [c.get(estimator) for c in (self.base, self.estimators)]
        return sorted({v for part in parts if part is not None for v in part.variants})

    def hyperparameters(
        self,
        budget: int,
        estimator: str = "fmpe",
        variant: str | None = None,
        *,
        base_only: bool = False,
        selected: bool = True,
    ) -> tuple[Table, Table]:
        """``(model kwargs, train settings)`` of `estimator` for a simulation budget, with the
        overrides of `variant` if one is named. With `base_only`, the task card's tables are
        left out: the one configuration of the base card, the same for every task. With
        ``selected=False``, the generated ``selected`` sections are left out: the hand-written
        settings that `fmpe sweep` starts its search from, so that a search never starts from
        its own earlier choice."""
        if budget < 1:
            raise ValueError(f"the simulation budget must be positive, got {budget}")
        cards = (self.base,) if base_only else (self.base, self.estimators)
        layers = [c[estimator] for c in cards if estimator in c]
        declared = {b for layer in layers for b in (*layer.budgets, *layer.selected)}
        below = [b for b in declared if b <= budget]
        key = max(below) if below else None
        model: Table = {}
        train: Table = {}
        for tables in (
            *({"model": layer.model, "train": layer.train} for layer in layers),
            *(
                part.get(key, {})
                for layer in layers
                for part in (layer.budgets, layer.selected)
                if part is layer.budgets or self._selections_apply(layer, estimator, selected)
            ),
        ):
            merge_tables(model, tables.get("model", {}))
            merge_tables(train, tables.get("train", {}))
        if variant is not None:
            if variant not in self.variants(estimator):
                raise ValueError(
                    f"the card of {self.name} declares no variant {variant!r} of {estimator}; "
                    f"declared: {', '.join(self.variants(estimator)) or 'none'}"
                )
            ordinary_learning_rate = train.get("learning_rate")
            for layer in layers:
                overrides = layer.variants.get(variant, {})
                merge_tables(model, overrides.get("model", {}))
                merge_tables(train, overrides.get("train", {}))
            if "learning_rate_factor" in train:
                train["learning_rate"] = _scaled_learning_rate(
                    ordinary_learning_rate, train, f"{self.name} [{estimator}.variants.{variant}]"
                )
        return copy.deepcopy(model), copy.deepcopy(train)

    def _selections_apply(self, layer: EstimatorCard, estimator: str, selected: bool) -> bool:
        """Whether `layer`'s selected sections take part: the base card's only for the tasks
        they were chosen over (`SWEPT_SOURCE`)."""
        from_base = layer is self.base.get(estimator)
        return selected and (not from_base or self.source == SWEPT_SOURCE)


def _scaled_learning_rate(ordinary: float | None, train: Table, where: str) -> float:
    """A variant's learning rate given as ``learning_rate_factor`` times the ordinary rate of
    the same task and budget (popped from `train`), so that it follows each card's rate."""
    factor = train.pop("learning_rate_factor")
    if train.get("learning_rate") != ordinary:
        raise CardError(f"{where}: give learning_rate or learning_rate_factor, not both")
    if ordinary is None:
        raise CardError(f"{where}: learning_rate_factor needs an ordinary learning_rate to scale")
    return ordinary * factor


def merge_tables(into: Table, table: Table) -> None:
    """Merges `table` into `into`, nested tables key by key."""
    for key, value in table.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge_tables(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def card_folder() -> Traversable:
    """Where the cards are: inside the installed package, else the checkout's ``tasks/``."""
    packaged = files("fmpe") / "task_cards"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "tasks"


class CardStore:
    """The task cards of one folder: the base card ``defaults.toml`` and a card per task.
    Whatever reads cards takes one (`cards=`); without it, the shipped cards are read.

        cards = CardStore("my_cards/")         # e.g. a copy of tasks/ with edits
        cards.load("two_moons").hyperparameters(10_000)
    """

    def __init__(self, folder: str | Path | Traversable):
        self.folder = Path(folder) if isinstance(folder, str) else folder

    def path(self, name: str) -> Traversable:
        """Where the card `name` is (or would be)."""
        return self.folder / f"{name}.toml"

    def names(self) -> list[str]:
        """Names of the task cards (not the base card), sorted."""
        if not self.folder.is_dir():
            return []
        entries = (f.name for f in self.folder.iterdir())
        names = (name.removesuffix(".toml") for name in entries if name.endswith(".toml"))
        return sorted(name for name in names if name != BASE_CARD)

    def _read(self, path, name: str) -> Table:
        if not path.is_file():
            raise ValueError(f"no task card {name!r}; available: {', '.join(self.names())}")
        try:
            return tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise CardError(f"{path}: not valid TOML: {error}") from error

    def load(self, name: str | Path) -> TaskCard:
        """Read and check the card of task ``name`` (or a card file at a path ending in
        .toml), on top of this folder's base card."""
        base_path = self.path(BASE_CARD)
        base_data = self._read(base_path, BASE_CARD)
        if str(name).endswith(".toml"):
            path = Path(name)
            data = self._read(path, str(name))
            name = data.get("name", "")
        else:
            path = self.path(name)
            data = self._read(path, name)
        card = _parse(data, name, str(path), _parse_estimators(base_data, str(base_path)))
        for estimator in {*card.base, *card.estimators}:
            for budget in [0, *card.budgets(estimator)]:
                for variant in [None, *card.variants(estimator)]:
                    model, train = card.hyperparameters(max(budget, 1), estimator, variant)
                    check_hyperparameters(estimator, model, train, f"{path} [{estimator}]")
            if estimator in card.base:
                for budget in [1, *card.budgets(estimator)]:
                    model, train = card.hyperparameters(budget, estimator, base_only=True)
                    check_hyperparameters(estimator, model, train, f"{base_path} [{estimator}]")
        return card


def shipped_cards() -> CardStore:
    """The cards fmpe ships (`card_folder`)."""
    return CardStore(card_folder())


def available_cards(cards: CardStore | None = None) -> list[str]:
    """Names of the task cards of `cards` (default: the shipped ones), sorted."""
    return (cards or shipped_cards()).names()


def load_card(name: str | Path, cards: CardStore | None = None) -> TaskCard:
    """The card of task ``name`` from `cards` (default: the shipped ones); see
    `CardStore.load`."""
    return (cards or shipped_cards()).load(name)


def _parse(data: Table, name: str, where: str, base: dict[str, EstimatorCard]) -> TaskCard:
    unknown = set(data) - {"name", "source", "description", *ESTIMATORS}
    if unknown:
        raise CardError(
            f"{where}: unknown keys {sorted(unknown)}; a card holds name, source, description "
            f"and a table per estimator ({', '.join(sorted(ESTIMATORS))})"
        )
    for key in ("name", "source", "description"):
        if not isinstance(data.get(key), str):
            raise CardError(f"{where}: {key!r} must be a string")
    if data["name"] != name:
        raise CardError(f"{where}: the card is named {data['name']!r}, not {name!r}")
    return TaskCard(
        name=data["name"],
        source=data["source"],
        description=data["description"],
        estimators=_parse_estimators(data, where),
        base=base,
    )


def _parse_estimators(data: Table, where: str) -> dict[str, EstimatorCard]:
    parsed = {}
    for estimator in ESTIMATORS:
        if estimator not in data:
            continue
        tables = _table(data, estimator, where)
        here = f"{where} [{estimator}]"
        unknown = set(tables) - {"budget", "selected", "variants", *_SECTIONS}
        if unknown:
            raise CardError(
                f"{here}: unknown keys {sorted(unknown)}; expected model, train, budget, "
                "selected, variants"
            )
        per_budget = {part: _budget_tables(tables, part, here) for part in ("budget", "selected")}
        variants: dict[str, dict[str, Table]] = {}
        for name, overrides in _table(tables, "variants", here).items():
            if not isinstance(overrides, dict) or set(overrides) - set(_SECTIONS):
                raise CardError(
                    f"{here}: [variants.{name}] may only hold [model] and [train] tables"
                )
            variants[name] = {
                s: _table(overrides, s, f"{here} [variants.{name}]") for s in overrides
            }
        parsed[estimator] = EstimatorCard(
            _table(tables, "model", here),
            _table(tables, "train", here),
            per_budget["budget"],
            variants,
            per_budget["selected"],
        )
    return parsed


def _budget_tables(tables: Table, part: str, here: str) -> dict[int, dict[str, Table]]:
    """The [part.B] tables of an estimator ("budget" or "selected"), by budget B."""
    parsed: dict[int, dict[str, Table]] = {}
    for key, overrides in _table(tables, part, here).items():
        if not key.isdigit() or int(key) < 1:
            raise CardError(f"{here}: {part} {key!r} is not a positive integer budget")
        if not isinstance(overrides, dict) or set(overrides) - set(_SECTIONS):
            raise CardError(f"{here}: [{part}.{key}] may only hold [model] and [train] tables")
        parsed[int(key)] = {s: _table(overrides, s, f"{here} [{part}.{key}]") for s in overrides}
    return parsed


def _table(data: Table, key: str, where: str) -> Table:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise CardError(f"{where}: {key!r} must be a table")
    return value


def _keywords(function) -> set[str]:
    parameters = inspect.signature(function).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in parameters if p.kind in kinds}


def _check_keys(given: Table, valid: set[str], what: str, where: str) -> None:
    unknown = sorted(set(given) - valid)
    if unknown:
        raise CardError(
            f"{where}: unknown {what} {', '.join(map(repr, unknown))}; valid: "
            f"{', '.join(sorted(valid))}"
        )


def check_hyperparameters(estimator: str, model: Table, train: Table, where: str) -> None:
    """Raises `CardError` for a key that the estimator, its network, its solver or its
    training settings do not take."""
    cls = get_estimator(estimator)
    _check_keys(model, _keywords(cls.__init__) - {"self", "simulator", "prior"}, "model key", where)
    builder = network_builder(model.get("network") or cls.default_network)
    network_keys = _keywords(builder) - {"theta_dim", "x_shape", "embedding_net"}
    _check_keys(model.get("network_options", {}), network_keys, "network option", where)
    _check_keys(
        model.get("solver", {}), set(SolverSettings.__dataclass_fields__), "solver key", where
    )
    _check_keys(train, set(TrainingSettings.names()), "training setting", where)
