"""Hyperparameters chosen without the test set: a search over card settings by validation loss.

`fmpe sweep TASK --budget B [--estimator fmpe|npe]` trains configurations of a grid, taken
from the FMPE paper's Table 2 and trimmed to fit a 2-core machine, on the training
simulations the benchmark uses, and scores each on the held-out validation split. It never
reads reference samples, observations or C2ST.

- The score is the best validation loss of the run: for FMPE the flow-matching loss at
  stratified uniform times (α = 0) with fixed base draws, so that runs with different α
  compare; for NPE the negative log density. Both live in the flow's standardized
  coordinates, so they compare only between runs with the same `map_to_unbounded`; runs that
  differ there are compared by the held-out negative log density in θ's own coordinates,
  which every run records too.
- The search is greedy, in stages: each stage varies one group of settings around the best
  configuration so far (for FMPE: network and α, then batch and learning rate, then the map
  onto R for bounded priors), so that its cost grows with the sum of the options, not their
  product.

Rows go to a resumable CSV, one per configuration (by default fmpe-benchmark/sweep.csv; the
committed search is benchmarks/results/sweep.csv), and `write_table` renders it beside the CSV
as a markdown table; ``--write-card`` writes the chosen configuration into the task's card as
a generated ``[fmpe.selected.B]`` section that names the CSV and the command.

`fmpe sweep defaults --budget B` trains nothing: once the ten sbibm tasks are searched at B,
`choose_defaults` picks one configuration for all of them (per stage, the option with the
best mean rank over the tasks), and ``--write-card`` writes it into the base card.

``--capacity`` adds one stage after the others, for tasks where the trimmed grid may be too
small (the paper's grid had larger networks): deeper and wider networks and three times the
epochs, beside the choice so far, which stays unless one of them has a lower validation loss.

``--from-budget S`` trains nothing either: it takes the finished search at S as the choice
for a larger budget that costs too much to search here (`search_choice`); the generated
section says so.
"""

import copy
import json
import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fmpe.benchmark.cards import BASE_CARD, SWEPT_SOURCE, CardStore, shipped_cards
from fmpe.benchmark.deadline import Deadline
from fmpe.benchmark.experiment import Override, Run, with_changes
from fmpe.benchmark.measure import provenance, resolve_device
from fmpe.benchmark.rowlog import RowLog
from fmpe.checks import as_count
from fmpe.estimators import get_estimator
from fmpe.simulation import simulate
from fmpe.tasks import Task, get_task
from fmpe.training.data import split_indices
from fmpe.unbounded import support_bounds

# Stages of the greedy search: each is a list of overrides tried on top of the best so far.
FMPE_STAGES: dict[int, list[list[Override]]] = {
    1000: [
        [
            {"model": {"network_options": {"hidden_widths": widths}, "time_prior_exponent": a}}
            for widths in ([64, 64, 64], [128, 128, 128, 128], [32, 64, 128, 64, 32])
            for a in (0.0, 1.0, 4.0)
        ],
        [
            {"train": {"batch_size": b, "learning_rate": lr}}
            for b, lr in ((64, 1e-3), (32, 5e-4), (128, 2e-3))
        ],
    ],
    10000: [
        [
            {"model": {"network_options": {"hidden_widths": widths}, "time_prior_exponent": a}}
            for widths in ([128, 128, 128, 128], [64, 128, 256, 128, 64])
            for a in (0.0, 1.0, 4.0)
        ],
        [
            {"train": {"batch_size": b, "learning_rate": lr}}
            for b, lr in ((256, 1e-3), (512, 2e-3), (128, 5e-4))
        ],
    ],
}
NPE_STAGES: dict[int, list[list[Override]]] = {
    budget: [
        [
            {"model": {"network_options": {"transforms": t, "hidden_features": h}}}
            for t, h in ((5, [50, 50]), (5, [128, 128]), (8, [64, 64]))
        ],
        [
            {"train": {"batch_size": b, "learning_rate": lr}}
            for b, lr in ((10_000, 5e-4), (256, 5e-4), (64, 1e-3))
        ],
    ]
    for budget in (1000, 10000)
}
UNBOUNDED_STAGE = [{"model": {"map_to_unbounded": flag}} for flag in (False, True)]
CAPACITY_STAGE: list[Override] = [
    {"model": {"network_options": network}, "train": epochs}
    for network in ({}, {"hidden_widths": [256] * 6}, {"hidden_widths": [512] * 6})
    for epochs in ({}, {"max_epochs": 600})
]
"""`--capacity`: the choice so far (first), alone or with 600 epochs (the cards train 200 at
1e4) and 6 × 256 or 6 × 512 residual widths."""

FIELDS = (
    "task",
    "budget",
    "estimator",
    "stage",
    "configuration",
    "validation_loss",
    "heldout_nll",
    "map_to_unbounded",
    "trainable_parameters",
    "train_seconds",
    "machine",
    "fmpe_version",
    "finished_at",
)


@dataclass(frozen=True)
class SearchGrid:
    """What a search tries: per estimator and budget, its stages of overrides; the map onto R,
    a last stage for bounded priors (none where `unbounded` is empty); and the optional
    capacity stage.

        grid = SearchGrid({"fmpe": {300: [[{"train": {"batch_size": 64}}, {}]]}})
        sweep("gaussian_linear", 300, results=Path("sweep.csv"), grid=grid)
    """

    stages: Mapping[str, Mapping[int, list[list[Override]]]] = field(
        default_factory=lambda: {"fmpe": FMPE_STAGES, "npe": NPE_STAGES}
    )
    unbounded: list[Override] = field(default_factory=lambda: UNBOUNDED_STAGE)
    capacity: list[Override] = field(default_factory=lambda: CAPACITY_STAGE)

    def plan(
        self, estimator: str, budget: int, task: Task, capacity: bool = False
    ) -> list[list[Override]]:
        """The stages of a cell: those of the closest budget at or below `budget`, the map
        onto R where the prior has bounds, and with `capacity` the capacity stage last."""
        table = self.stages[estimator]
        below = [b for b in table if b <= budget] or [min(table)]
        chosen = copy.deepcopy(table[max(below)])
        low, high = support_bounds(task.prior, task.theta_dim)
        if self.unbounded and (torch.isfinite(low).any() or torch.isfinite(high).any()):
            chosen.append(copy.deepcopy(self.unbounded))
        if capacity:
            if estimator != "fmpe":
                raise ValueError(f"the capacity stage is defined for fmpe, not {estimator!r}")
            chosen.append(copy.deepcopy(self.capacity))
        return chosen

    def plan_run(
        self, mine: list[dict], estimator: str, budget: int, task: Task
    ) -> list[list[Override]]:
        """The stages of a cell as its rows `mine` ran them: with the capacity stage where
        they reach it."""
        plain = self.plan(estimator, budget, task)
        return self.plan(estimator, budget, task, any(int(r["stage"]) >= len(plain) for r in mine))


GRID = SearchGrid()
"""The committed search (benchmarks/results/sweep.csv)."""


def configuration_name(override: Override) -> str:
    """How a search's rows name a configuration: its override as sorted JSON."""
    return json.dumps(override, sort_keys=True)


def heldout_nll(posterior, theta: torch.Tensor, x: torch.Tensor) -> float:
    """Mean −log q(θ | x) over held-out pairs theta (m, d), x (m, *x_shape), in θ's
    coordinates; each pair is its own observation."""
    log_prob = posterior.log_prob(theta.unsqueeze(0).to(posterior.device), x.to(posterior.device))
    finite = log_prob[torch.isfinite(log_prob)]
    if len(finite) < log_prob.numel():
        return math.inf
    return -finite.mean().item()


def sweep(
    task_name: str,
    budget: int,
    *,
    estimator: str = "fmpe",
    seed: int = 0,
    results: Path,
    show_progress: bool = True,
    device: torch.device | None = None,
    deadline: Deadline | None = None,
    capacity: bool = False,
    cards: CardStore | None = None,
    grid: SearchGrid = GRID,
) -> Override | None:
    """Runs the search for one (task, budget, estimator) cell, with the capacity stage last
    if `capacity`; returns the chosen override of the card's hyperparameters. Configurations
    already in `results` are not trained again. Each configuration is a `Run` without the
    card's selections, trained on the same simulations (drawn once, with `seed`).

    With a `deadline`, a configuration is trained only if the median training seconds of the
    cell's recorded configurations fit in the time left; once one is refused, the search
    stops, returns None, and `deadline.left` says which configurations are not yet trained.
    """
    deadline = deadline or Deadline(None)
    budget = as_count(budget, "budget", minimum=1)
    device = device or resolve_device("auto")
    task = get_task(task_name)
    get_estimator(estimator)
    done = {
        (r["stage"], r["configuration"]): r
        for r in _cell_rows(sweep_log(results).rows(), task_name, budget, estimator)
    }
    torch.manual_seed(seed)
    theta, x = simulate(task.training_simulate, task.prior, budget, show_progress=show_progress)
    best: Override = {}
    planned = grid.plan(estimator, budget, task, capacity)
    for index, stage in enumerate(planned):
        scored = []
        for position, change in enumerate(stage):
            candidate = with_changes(best, change)
            key = (str(index), configuration_name(candidate))
            if key not in done:
                recorded = [
                    float(r["train_seconds"]) for r in done.values() if "train_seconds" in r
                ]
                expected = statistics.median(recorded) if recorded else None
                untried = len(stage) - position + sum(map(len, planned[index + 1 :]))
                unit = f"{untried} configurations from stage {index}, configuration {position + 1}"
                if not deadline.allows(unit, expected):
                    return None
                run = Run(
                    task_name, budget, estimator, seed=seed, selected=False, changes=candidate
                )
                done[key] = train_and_score(
                    run, (theta, x), index, device, show_progress=show_progress, cards=cards
                )
                sweep_log(results).add(done[key])
            scored.append((done[key], candidate))
        best = _choose(scored)
    return best


def sweep_log(results: Path) -> RowLog:
    """The search's rows in `results`, one per (task, budget, estimator, stage, configuration)."""
    return RowLog(results, FIELDS, key=FIELDS[:5])


def _includes(configuration: dict, change: dict) -> bool:
    """Whether every value of `change` (nested tables key by key) is in `configuration`."""
    for key, value in change.items():
        if isinstance(value, dict):
            if not _includes(configuration.get(key, {}), value):
                return False
        elif key not in configuration or configuration[key] != value:
            return False
    return True


def sbibm_tasks(cards: CardStore | None = None) -> list[str]:
    """The tasks whose cards come from sbibm: those the base card's settings serve."""
    cards = cards or shipped_cards()
    return [name for name in cards.names() if cards.load(name).source == SWEPT_SOURCE]


def _cell_rows(rows: list[dict], task: str, budget: int, estimator: str) -> list[dict]:
    return [
        r
        for r in rows
        if (r["task"], int(r["budget"]), r["estimator"]) == (task, budget, estimator)
    ]


def _complete(mine: list[dict], planned: list[list[Override]]) -> bool:
    last = [r for r in mine if r["stage"] == str(len(planned) - 1)]
    return len(last) == len(planned[-1])


def _finished_choice(mine: list[dict], planned: list[list[Override]]) -> Override | None:
    """The choice of a search's rows `mine`, or None while stages of `planned` are missing."""
    if not _complete(mine, planned):
        return None
    last = [r for r in mine if r["stage"] == str(len(planned) - 1)]
    return _choose([(r, json.loads(r["configuration"])) for r in last])


def search_choice(
    results: Path,
    task_name: str,
    budget: int,
    estimator: str = "fmpe",
    capacity: bool = False,
    grid: SearchGrid = GRID,
) -> Override:
    """The configuration that the finished search of (task, budget, estimator) in `results`
    chose (with its capacity stage if `capacity`), read without training; for carrying it to
    a budget too costly to search."""
    mine = _cell_rows(sweep_log(results).rows(), task_name, budget, estimator)
    chosen = _finished_choice(mine, grid.plan(estimator, budget, get_task(task_name), capacity))
    if chosen is None:
        flag = " --capacity" if capacity else ""
        raise ValueError(
            f"the search of {task_name} at {budget} ({estimator}){flag} is not finished in "
            f"{results}; run fmpe sweep {task_name} --budget {budget} --estimator {estimator}"
            f"{flag} first"
        )
    return chosen


def choose_defaults(
    results: Path,
    budget: int,
    estimator: str = "fmpe",
    cards: CardStore | None = None,
    grid: SearchGrid = GRID,
) -> tuple[Override, dict]:
    """One configuration for every sbibm task at `budget`, from their finished searches.

    Each stage's options are ranked within every task that searched them (by validation loss;
    by held-out negative log density for the map onto R, which changes the loss's
    coordinates), and the option with the lowest mean rank is taken (ties: the earlier one).

    Returns:
        the override of the base card, and per stage the mean rank of each option.
    """
    rows = sweep_log(results).rows()
    plans = {name: grid.plan(estimator, budget, get_task(name)) for name in sbibm_tasks(cards)}
    missing = [
        name
        for name, planned in plans.items()
        if not _complete(_cell_rows(rows, name, budget, estimator), planned)
    ]
    if missing:
        raise ValueError(
            f"the base card's settings need every sbibm task searched at {budget} "
            f"({estimator}); not finished in {results}: {', '.join(missing)}"
        )
    chosen: Override = {}
    ranks: dict = {}
    for index in range(max(len(planned) for planned in plans.values())):
        per_option: dict[str, list[int]] = {}
        options: dict[str, Override] = {}
        for name, planned in plans.items():
            if index >= len(planned):
                continue
            scored = [
                r for r in _cell_rows(rows, name, budget, estimator) if r["stage"] == str(index)
            ]
            column = "heldout_nll" if planned[index] == grid.unbounded else "validation_loss"
            scored.sort(key=lambda r: float(r[column]))
            for option in planned[index]:
                label = configuration_name(option)
                options[label] = option
                place = next(
                    k
                    for k, r in enumerate(scored)
                    if _includes(json.loads(r["configuration"]), option)
                )
                per_option.setdefault(label, []).append(place + 1)
        mean_ranks = {label: sum(v) / len(v) for label, v in per_option.items()}
        best = min(mean_ranks, key=mean_ranks.get)  # dicts keep the grid's order for ties
        chosen = with_changes(chosen, options[best])
        ranks[str(index)] = mean_ranks
    return chosen, ranks


def _choose(scored: list[tuple[dict, Override]]) -> Override:
    """The configuration with the lowest validation loss; between configurations that differ
    in map_to_unbounded, the lower held-out negative log density decides."""
    groups: dict[str, list[tuple[dict, Override]]] = {}
    for row, candidate in scored:
        groups.setdefault(row["map_to_unbounded"], []).append((row, candidate))
    winners = [
        min(group, key=lambda rc: float(rc[0]["validation_loss"])) for group in groups.values()
    ]
    if len(winners) == 1:
        return winners[0][1]
    return min(winners, key=lambda rc: float(rc[0]["heldout_nll"]))[1]


def train_and_score(
    run: Run,
    simulations: tuple[torch.Tensor, torch.Tensor],
    stage: int | str,
    device: torch.device,
    show_progress: bool = True,
    cards: CardStore | None = None,
) -> dict:
    """Trains `run` on `simulations` θ (n, d), x (n, *x_shape); returns its row of `FIELDS`
    (best validation loss, held-out −log q in θ's coordinates, parameters, seconds, machine)."""
    start = time.perf_counter()
    posterior = run.fit(device, show_progress=show_progress, cards=cards, simulations=simulations)
    seconds = time.perf_counter() - start
    model, train = run.hyperparameters(cards)
    fraction = train.get(
        "validation_fraction", get_estimator(run.estimator).training_defaults.validation_fraction
    )
    theta, x = simulations
    _, held_out = split_indices(len(theta), fraction, run.seed)
    x_held_out, augment = x[held_out], get_task(run.task).augment_x
    if augment is not None:  # as the training saw x: e.g. gw's noise, drawn once, fixed
        x_held_out = augment(x_held_out, generator=torch.Generator().manual_seed(run.seed))
    return {
        "task": run.task,
        "budget": run.budget,
        "estimator": run.estimator,
        "stage": str(stage),
        "configuration": configuration_name(run.changes),
        "validation_loss": posterior.training_record.best_validation_loss,
        "heldout_nll": heldout_nll(posterior, theta[held_out], x_held_out),
        "map_to_unbounded": str(bool(model.get("map_to_unbounded", False))),
        "trainable_parameters": posterior.training_record.trainable_parameters,
        "train_seconds": round(seconds, 1),
        **provenance(posterior.device),
    }


GENERATED = "# >>> generated by fmpe sweep"
END = "# <<< end of generated section"


def write_card_section(
    card: str,
    budget: int,
    estimator: str,
    chosen: Override,
    results: Path,
    searched_at: int | None = None,
    capacity: bool = False,
    cards: CardStore | None = None,
) -> Path:
    """Writes `chosen` into a card (a task's, or the base card "defaults") as its generated
    ``[estimator.selected.budget]`` section, replacing an earlier one. `searched_at` names the
    budget whose search chose it when that is not `budget` (a choice carried upwards);
    `capacity` says that the search had its capacity stage."""
    cards = cards or shipped_cards()
    path = Path(str(cards.path(card)))
    previous = path.read_text()
    marker = f"{GENERATED} {card} --budget {budget} --estimator {estimator}"
    lines = previous.splitlines()
    start = next(
        (k for k, line in enumerate(lines) if line == marker or line.startswith(marker + " --")),
        None,
    )
    if start is not None:
        end = lines.index(END, start)
        lines = lines[:start] + lines[end + 1 :]
    how = (
        "the best mean rank over the sbibm tasks' searches"
        if card == BASE_CARD
        else "the lowest validation loss of the search"
    )
    if capacity:
        marker += " --capacity"
        how += " with its capacity stage"
    if searched_at is not None and searched_at != budget:
        marker += f" --from-budget {searched_at}"
        how += f" at {searched_at}, carried to {budget}, which is not searched"
    section = [
        marker,
        f"# from {results.name}: {how}; do not edit by hand.",
        *_toml_tables(f"{estimator}.selected.{budget}", chosen),
        END,
    ]
    while lines and not lines[-1].strip():
        lines.pop()
    path.write_text("\n".join([*lines, "", *section]) + "\n")
    try:
        for name in cards.names() if card == BASE_CARD else [card]:
            cards.load(name)
    except ValueError as error:
        path.write_text(previous)
        raise ValueError(f"{path} would not parse with the generated section ({error})") from None
    return path


def _toml_tables(prefix: str, chosen: Override) -> list[str]:
    lines: list[str] = []
    for part in ("model", "train"):
        values = chosen.get(part, {})
        flat = {k: v for k, v in values.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in values.items() if isinstance(v, dict)}
        if flat:
            lines.append(f"[{prefix}.{part}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in flat.items()]
        for key, table in nested.items():
            lines.append(f"[{prefix}.{part}.{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return lines


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def write_table(results: Path, grid: SearchGrid = GRID) -> Path:
    """Renders the search in `results` as a markdown table beside it (same name, .md): per
    cell, the configurations trained, their training hours, the lowest validation loss, the
    configuration the search chose (or "incomplete" while stages are missing), and the
    held-out −log q of the choice beside the lowest of the search, which the choice does not
    use; then, per budget and estimator, the base card's one configuration (`choose_defaults`)."""
    rows = sweep_log(results).rows()
    cells: dict[tuple[str, int, str], list[dict]] = {}
    for row in rows:
        cells.setdefault((row["task"], int(row["budget"]), row["estimator"]), []).append(row)
    lines = [
        "# Hyperparameters chosen by validation loss",
        "",
        f"Rendered from `{results.name}` (`fmpe sweep TASK --budget B --estimator E`). The",
        "search never reads observations, reference posteriors or C2ST; `chosen` is the",
        "override of the card's settings with the lowest validation loss of the last stage.",
        "",
        "| task | budget | estimator | configurations | training hours | best validation loss "
        "| chosen | held-out −log q: chosen / lowest | machine |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    # Per estimator: finished searches, and those whose lowest held-out −log q is not the choice's.
    finished: dict[str, list[bool]] = {}
    tasks = {name: get_task(name) for name in {*sbibm_tasks(), *(t for t, _, _ in cells)}}
    for (task, budget, estimator), mine in sorted(cells.items()):
        choice = _finished_choice(mine, grid.plan_run(mine, estimator, budget, tasks[task]))
        chosen = "incomplete" if choice is None else configuration_name(choice)
        hours = sum(float(r["train_seconds"]) for r in mine) / 3600
        best = min(float(r["validation_loss"]) for r in mine)
        lowest = min(float(r["heldout_nll"]) for r in mine)
        nll = "–"
        if choice is not None:
            own = min(float(r["heldout_nll"]) for r in mine if r["configuration"] == chosen)
            nll = f"{own:.3f} / {lowest:.3f}"
            finished.setdefault(estimator, []).append(own > lowest)
        machines = "; ".join(sorted({r["machine"] for r in mine}))
        lines.append(
            f"| {task} | {budget} | {estimator} | {len(mine)} | {hours:.2f} | {best:.4f} | "
            f"`{chosen}` | {nll} | {machines} |"
        )
    total = sum(float(r["train_seconds"]) for r in rows) / 3600
    lines += [
        "",
        f"In all: {len(rows)} configurations, {total:.2f} training hours (simulating the",
        "training sets and the held-out densities are not timed). Held-out −log q(θ | x) is in",
        "θ's own coordinates, on the same held-out split as the validation loss. Finished",
        "searches in which another configuration had a lower one than the choice: "
        + ", ".join(f"{estimator} {sum(v)} of {len(v)}" for estimator, v in finished.items())
        + ".",
        "",
        "## The base card's settings, one per budget for every task",
        "",
        "`fmpe sweep defaults --budget B --estimator E`: per stage, the option with the lowest",
        "mean rank over the sbibm tasks' searches (ranked by validation loss; the map onto R",
        "by held-out negative log density). Only once all of them are searched at B.",
        "",
        "| budget | estimator | tasks searched | chosen | its mean rank per stage |",
        "|---|---|---|---|---|",
    ]
    names = sbibm_tasks()
    for budget, estimator in sorted({(b, e) for _, b, e in cells}):
        searched = sum(
            _complete(cells.get((t, budget, estimator), []), grid.plan(estimator, budget, tasks[t]))
            for t in names
        )
        if searched < len(names):
            lines.append(
                f"| {budget} | {estimator} | {searched} of {len(names)} | `incomplete` | – |"
            )
            continue
        chosen, ranks = choose_defaults(results, budget, estimator, grid=grid)
        best = "; ".join(f"stage {k}: {min(v.values()):.1f}" for k, v in ranks.items())
        lines.append(
            f"| {budget} | {estimator} | {searched} of {len(names)} | "
            f"`{configuration_name(chosen)}` | {best} |"
        )
    path = results.with_suffix(".md")
    path.write_text("\n".join(lines) + "\n")
    return path
