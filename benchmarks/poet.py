"""POET against ordinary training of fmpe's velocity networks, on this machine.

    uv run python benchmarks/poet.py ablation          # two_moons and slcp at 1e4
    uv run python benchmarks/poet.py table             # all ten sbibm tasks at 1e3 and 1e4
    uv run python benchmarks/poet.py report            # poet.md and poet.png from the rows
    uv run python benchmarks/poet.py table --stop-after 90m --threads 2

`ablation` trains POET networks (the cards' `poet` variant with one setting changed at a
time: learning rate as a multiple of the card's ordinary rate, block size, merge interval,
Neumann terms, residual blocks started near the identity or as POET draws them, a trainable
gain per layer, ordinary input and output layers)
on the benchmark's own simulations, with training seeds 0 and 1, and records,
per configuration and seed, the best validation loss (uniform t, so configurations compare)
beside that of ordinary training on the same seed (the benchmark's own posterior under --runs,
trained and saved there where it is missing), the trainable parameters, the training
time and the C2ST over observations 1-3. `report` names the configuration with the lowest
validation loss relative to ordinary training, averaged over the two tasks and both seeds,
among those with at most 40% of the ordinary trainable parameters; the `poet` variant changes
to it where it is lower than the variant's by more than two standard errors of their paired
differences (the seeds alone move the ratio by up to 3%); the report says where it has the
largest or smallest value tried of its setting, as the next one may be lower still. No C2ST
enters that choice.
`table` runs `fmpe benchmark --poet` on every task at 1e3 and 1e4, observations 1-10, into
the sbibm results, beside the ordinary rows, one task and budget (a table cell) per process,
with --threads torch threads. Every run is resumable: rows already in the CSVs are skipped
(an ablation row by its settings and the card's architecture, so a changed card runs again).
With --stop-after, a run finishes the configuration or table cell in progress, starts none
that is not expected to fit (by the durations recorded so far) and prints the command that
continues it.
"""

import argparse
import itertools
import math
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from fmpe.benchmark import RowLog, provenance, resolve_device, timed
from fmpe.benchmark.deadline import Deadline, median_gap_seconds
from fmpe.benchmark.experiment import Run, method_label
from fmpe.benchmark.report import machines_line, published_c2st
from fmpe.benchmark.results import ResultsStore
from fmpe.benchmark.runner import expected_unit_seconds
from fmpe.cli import add_stop_after
from fmpe.metrics import c2st
from fmpe.networks import network_builder
from fmpe.tasks import get_task

RESULTS = Path(__file__).parent / "results"
ABLATION_TASKS = ("two_moons", "slcp")
ABLATION_BUDGET = 10_000
ABLATION_OBSERVATIONS = (1, 2, 3)
ABLATION_SEEDS = (0, 1)
MAX_PARAMETER_SHARE = 0.4  # of the ordinary network's trainable parameters (the bound)
# One setting changed at a time from the card's poet variant ("variant": the variant itself);
# learning rates are multiples of the card's ordinary rate for the task and budget. A change
# that gives the variant's own settings is not trained twice. The learning rates come first:
# they are the axis the variant's rate was chosen on, so a run stopped early has them; then
# layer gains, the closest to the variant on two_moons.
ABLATION = {
    "variant": {},
    "learning rate x 1": {"learning_rate_factor": 1.0},
    "learning rate x 2": {"learning_rate_factor": 2.0},
    "learning rate x 4": {"learning_rate_factor": 4.0},
    # x4 and then x8 were the lowest of the rates before them, so the grid went on past its edge.
    "learning rate x 8": {"learning_rate_factor": 8.0},
    "learning rate x 16": {"learning_rate_factor": 16.0},
    "layer gains": {"linear": {"gains": True}},
    # Larger blocks next: the variant trains 2-19% of the ordinary parameters against the 40%
    # bound, and the table's misses (benchmarks/results/poet.md) leave that room unused.
    "block 16": {"linear": {"block_size": 16}},
    "block 32": {"linear": {"block_size": 32}},
    "blocks near identity": {"network": {"near_identity_blocks": True}},
    "POET end layers": {"network": {"end_linear": None}},  # None: built like the others
    "block 4": {"linear": {"block_size": 4}},
    "merge every 50": {"linear": {"merge_every": 50}},
    "merge every 800": {"linear": {"merge_every": 800}},
    "neumann 3 (odd)": {"linear": {"neumann_terms": 3}},
    "exact cayley": {"linear": {"neumann_terms": None}},
}
SETTING_FIELDS = (
    "task",
    "block_size",
    "merge_every",
    "neumann_terms",
    "learning_rate",
    "near_identity_blocks",
    "ordinary_end_layers",
    "gains",
)
TABLE_BUDGETS = (1000, 10_000)
TABLE_OBSERVATIONS = range(1, 11)
POET = method_label("fmpe", "poet")
ABLATION_FIELDS = (
    "task",
    "budget",
    "configuration",
    "seed",
    "block_size",
    "merge_every",
    "neumann_terms",
    "learning_rate",
    "near_identity_blocks",
    "ordinary_end_layers",
    "gains",
    "validation_loss",
    "ordinary_validation_loss",
    "c2st_mean",
    "c2st_observations",
    "trainable_parameters",
    "ordinary_parameters",
    "train_seconds",
    "machine",
    "fmpe_version",
    "finished_at",
)


def ablation_run(task: str, budget: int, change: dict, seed: int) -> Run:
    """The card's poet variant for (task, budget) with `change` applied, trained with `seed`."""
    network_options = {"linear": change.get("linear", {}), **change.get("network", {})}
    changes: dict = {"model": {"network_options": network_options}}
    if "learning_rate_factor" in change:
        rate = ordinary_rate(task, budget) * change["learning_rate_factor"]
        changes["train"] = {"learning_rate": rate}
    return Run(task, budget, variant="poet", seed=seed, changes=changes)


def configuration_settings(run: Run) -> dict:
    """The task, budget, seed and SETTING_FIELDS of an ablation `run`, as its row records them."""
    model, train_options = run.hyperparameters()
    network_options = model["network_options"]
    linear = network_options["linear"]
    return {
        "task": run.task,
        "budget": run.budget,
        "seed": run.seed,
        "block_size": linear.get("block_size"),
        "merge_every": linear.get("merge_every"),
        "neumann_terms": linear.get("neumann_terms"),
        "learning_rate": train_options.get("learning_rate"),
        "near_identity_blocks": network_options.get("near_identity_blocks", True),
        "ordinary_end_layers": network_options.get("end_linear") == "linear",
        "gains": linear.get("gains", False),
    }


def ordinary_rate(task: str, budget: int) -> float:
    """The learning rate of ordinary training on the card of (task, budget)."""
    return Run(task, budget).hyperparameters()[1]["learning_rate"]


def train(run: Run):
    """The posterior of `run`, trained on this machine's GPU if it has one, else its CPU, with
    the training's progress bar."""
    return run.fit(resolve_device("auto"))


def train_saved(run: Run, runs: Path):
    """The posterior of `run` as the benchmark saved it under `runs` (the same simulations,
    split and seed as `train`), trained and saved there first where it is missing."""
    posterior, _ = run.train(runs, resolve_device("auto"))
    return posterior


def trainable_parameters(run: Run) -> int:
    """Trainable parameters of the network `run` trains, built without training."""
    task = get_task(run.task)
    model, _ = run.hyperparameters()
    builder = network_builder(model.get("network", "residual"))
    network = builder(task.theta_dim, task.x_shape, **model.get("network_options", {}))
    return sum(p.numel() for p in network.parameters() if p.requires_grad)


def settings(row: dict) -> tuple[str, ...]:
    """A configuration's SETTING_FIELDS as the CSV holds them (None as ""); Neumann terms None
    and "exact" are both "exact", the exact Cayley transform. A row from before the
    near_identity_blocks column counts as the default, True: those on today's cards (the only
    rows a resume or the choice reads) did start their blocks near the identity; one from
    before the ordinary_end_layers or gains column had POET end layers and no gains (False)."""
    cells = {k: "" if row.get(k) is None else str(row[k]) for k in SETTING_FIELDS}
    cells["neumann_terms"] = cells["neumann_terms"] or "exact"
    cells["near_identity_blocks"] = cells["near_identity_blocks"] or "True"
    cells["ordinary_end_layers"] = cells["ordinary_end_layers"] or "False"
    cells["gains"] = cells["gains"] or "False"
    return tuple(cells.values())


def resume_key(row: dict) -> tuple[str, ...]:
    """What makes a configuration done: its settings, its training seed and the architecture
    of the card it ran with (its ordinary network's parameter count), as the CSV holds them."""
    return (*settings(row), str(row["seed"]), str(row["ordinary_parameters"]))


def expected_seconds(rows: list[dict], task: str, ordinary_count: int) -> float | None:
    """Seconds one configuration of `task` on this card is expected to take, from its like
    rows (None without any): the lower median over them of the time since the previous like
    row finished (its training and C2ST), capped at twice its training seconds. The cap
    stands in for the unit where the gap spans a pause between runs: the ablation runs a few
    units a session, so most gaps can be pauses, and a median of gaps alone would be one
    (`median_gap_seconds`)."""
    like = [r for r in rows if (r["task"], r["ordinary_parameters"]) == (task, str(ordinary_count))]
    return median_gap_seconds(
        (r["finished_at"] for r in like), caps=[2 * float(r["train_seconds"]) for r in like]
    )


def run_ablation(path: Path, runs: Path, deadline: Deadline) -> None:
    """Trains and scores the configurations not yet in `path`, one per unit of `deadline`,
    against the ordinary posteriors of the benchmark under `runs` (trained there if missing)."""
    # A row is identified by its settings, not its name: the names are relative to the card's
    # variant, which the ablation's result changes.
    done = {resume_key(r) for r in RowLog(path).rows()}
    tasks = {name: get_task(name) for name in ABLATION_TASKS}
    counts = {name: trainable_parameters(Run(name, ABLATION_BUDGET)) for name in tasks}
    ordinary = {}  # (task, seed): the ordinary posterior, loaded or trained when first needed
    # Configurations outermost, so that a run stopped early has compared its first ones on
    # both tasks and seeds.
    for name, change in ABLATION.items():
        for (task_name, task), seed in itertools.product(tasks.items(), ABLATION_SEEDS):
            run = ablation_run(task_name, ABLATION_BUDGET, change, seed)
            setting = {
                **configuration_settings(run),
                "configuration": name,
                "ordinary_parameters": counts[task_name],
            }
            key = resume_key(setting)
            if key in done:
                continue
            done.add(key)  # run now or left for later, once either way
            expected = expected_seconds(RowLog(path).rows(), task_name, counts[task_name])
            if not deadline.allows(f"{task_name} {name} seed {seed}", expected):
                continue
            if (task_name, seed) not in ordinary:
                ordinary[task_name, seed] = train_saved(
                    Run(task_name, ABLATION_BUDGET, seed=seed), runs
                )
            reference = ordinary[task_name, seed].training_record
            posterior, seconds = timed(train, run)
            try:
                scores = []
                for observation in ABLATION_OBSERVATIONS:
                    torch.manual_seed(0)
                    samples = posterior.sample(10_000, task.observation(observation))
                    scores.append(c2st(task.reference_samples(observation), samples))
            except RuntimeError as error:  # a diverged run draws nothing inside the prior
                print(f"{task_name}, {name}: no C2ST: {error}", flush=True)
                scores = [math.nan] * len(ABLATION_OBSERVATIONS)
            row = {
                **setting,
                "validation_loss": posterior.training_record.best_validation_loss,
                "ordinary_validation_loss": reference.best_validation_loss,
                "c2st_mean": statistics.fmean(scores),
                "c2st_observations": " ".join(f"{s:.3f}" for s in scores),
                "trainable_parameters": posterior.training_record.trainable_parameters,
                "train_seconds": round(seconds, 1),
                **provenance(),
            }
            shown = ABLATION_FIELDS[: ABLATION_FIELDS.index("c2st_mean") + 1]
            print({k: row[k] for k in shown}, flush=True)
            RowLog(path, ABLATION_FIELDS).add(row)


def run_table(results: Path, runs: Path, threads: int, deadline: Deadline) -> None:
    """Runs `fmpe benchmark --poet` on each table cell (task, budget) not yet complete in
    `results`, one process with `threads` torch threads per cell and unit of `deadline`."""
    sbibm_tasks = sorted({task for task, _, _ in published_c2st()})  # the ten, not gw
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    observations = ",".join(map(str, TABLE_OBSERVATIONS))
    for task in sbibm_tasks:
        for budget in TABLE_BUDGETS:
            store = ResultsStore(results)
            done = store.completed()
            missing = [o for o in TABLE_OBSERVATIONS if (task, budget, POET, o, 0) not in done]
            if not missing:
                continue
            trained = Run(task, budget, variant="poet").posterior_path(runs).exists()
            expected = expected_unit_seconds(
                store.rows(), task, budget, POET, len(missing), trained
            )
            if not deadline.allows(f"{task} at {budget}", expected):
                continue
            command = [
                sys.executable, "-m", "fmpe.cli", "benchmark", task, "--budget", str(budget),
                "--observations", observations, "--poet", "--quiet", "--results", str(results),
                "--runs", str(runs),
            ]  # fmt: skip
            subprocess.run(command, check=True, env=env)


def _ablation_table(rows: list[dict]) -> list[str]:
    lines = [
        "| task | configuration | seed | block | merge every | Neumann k | lr | blocks start "
        "near identity | ordinary end layers | layer gains | val loss / ordinary | C2ST (obs 1-3) "
        "| trainable / ordinary parameters | train s |",
        "|---" * 14 + "|",
    ]
    # Configurations are compared by their settings (names are relative to the card's variant
    # when the row was run), each task on the card of its latest row, among those within the
    # parameter budget; a task counts for a configuration once it has trained on every seed.
    latest_card = {r["task"]: r["ordinary_parameters"] for r in rows}
    by_pair: dict[tuple, dict[tuple[str, str], float]] = {}  # settings: (task, seed): ratio
    for r in rows:
        *_, ordinary_ends, gains = settings(r)  # with the defaults of rows before the columns
        ratio = float(r["validation_loss"]) / float(r["ordinary_validation_loss"])
        share = int(r["trainable_parameters"]) / int(r["ordinary_parameters"])
        lines.append(
            f"| {r['task']} | {r['configuration']} | {r['seed']} | {r['block_size']} | "
            f"{r['merge_every']} | {r['neumann_terms'] or 'exact'} | "
            f"{float(r['learning_rate']):.0e} | {_yes_no(r.get('near_identity_blocks', ''))} | "
            f"{_yes_no(ordinary_ends)} | {_yes_no(gains)} | {ratio:.3f} | "
            f"{float(r['c2st_mean']):.3f} ({r['c2st_observations']}) | {share:.1%} | "
            f"{r['train_seconds']} |"
        )
        current = r["ordinary_parameters"] == latest_card[r["task"]]
        if current and math.isfinite(ratio) and share <= MAX_PARAMETER_SHARE:
            by_pair.setdefault(relative_settings(r), {})[r["task"], r["seed"]] = ratio
    pairs = set(itertools.product(ABLATION_TASKS, map(str, ABLATION_SEEDS)))
    complete = {k: v for k, v in by_pair.items() if pairs <= set(v)}
    if complete:
        variant = relative_settings(
            configuration_settings(ablation_run(ABLATION_TASKS[0], ABLATION_BUDGET, {}, 0))
        )
        lines += ["", *_choice(complete, variant)]
    for task in sorted({task for v in by_pair.values() for task, _ in v}):
        measured = {
            k: statistics.fmean(v[task, str(seed)] for seed in ABLATION_SEEDS)
            for k, v in by_pair.items()
            if all((task, str(seed)) in v for seed in ABLATION_SEEDS)
        }
        if not measured:  # no configuration has trained on every seed yet
            continue
        best = min(measured, key=measured.get)
        lines += [
            "",
            f"Lowest on {task} alone ({len(measured)} configurations within the parameter "
            f"bound): {_settings(best)} ({measured[best]:.3f}).",
        ]
    return [*lines, "", machines_line(rows)]


def _choice(ratios: dict[tuple, dict[tuple[str, str], float]], variant: tuple) -> list[str]:
    """Which configuration the cards' poet variant should be, from each complete
    configuration's validation-loss ratios per (task, seed): the lowest on their mean, where
    it is lower than `variant`'s by more than two standard errors of their paired differences;
    otherwise `variant` stands, as the seeds alone move the ratio by up to 3%."""
    means = {k: statistics.fmean(v.values()) for k, v in ratios.items()}
    best = min(means, key=means.get)
    lines = [
        f"Lowest mean validation loss relative to ordinary training (over tasks and seeds "
        f"{', '.join(map(str, ABLATION_SEEDS))}), with at most {MAX_PARAMETER_SHARE:.0%} of "
        f"its parameters: **{_settings(best)}** ({means[best]:.3f})."
    ]
    if variant not in ratios:
        return [*lines, f"The cards' poet variant ({_settings(variant)}) lacks rows to compare."]
    if best == variant:
        return [*lines, "It is the cards' poet variant."]
    differences = [ratios[best][pair] - ratios[variant][pair] for pair in ratios[variant]]
    mean = statistics.fmean(differences)
    error = statistics.stdev(differences) / math.sqrt(len(differences))
    verdict = (
        "lower by more than two standard errors, so the cards' poet variant should change to it"
        if mean < -2 * error
        else "within two standard errors, so the cards' poet variant stands"
    )
    lines.append(
        f"Against the cards' poet variant ({means[variant]:.3f}), paired by task and seed: "
        f"{mean:+.4f} ± {error:.4f} (standard error); {verdict}."
    )
    edge = _grid_edge(best, variant, list(ratios))
    if edge:
        lines.append(_edge_sentence(best, *edge))
    return lines


# The numeric settings of relative_settings' keys, by position.
_AXES = ("block size", "merge interval", "number of Neumann terms", "learning rate factor")


def _grid_edge(best: tuple, variant: tuple, configurations: list[tuple]) -> tuple[int, str] | None:
    """Where `best` changes one numeric setting of `variant` to the largest or smallest value
    tried on that axis (among `configurations` that change only it): the axis (its position
    in the key) and "largest" or "smallest"; None otherwise."""
    changed = [i for i, (a, b) in enumerate(zip(best, variant, strict=True)) if a != b]
    if len(changed) != 1 or changed[0] >= len(_AXES):
        return None
    (axis,) = changed
    rest = variant[:axis] + variant[axis + 1 :]
    values = [_axis_value(k[axis]) for k in configurations if k[:axis] + k[axis + 1 :] == rest]
    value = _axis_value(best[axis])
    if value == max(values):
        return axis, "largest"
    if value == min(values):
        return axis, "smallest"
    return None


def _edge_sentence(best: tuple, axis: int, side: str) -> str:
    """What a lowest configuration at the edge of its axis asks for: the next value, unless
    that is a block size whose network trains more parameters than the bound allows."""
    text = f"It has the {side} {_AXES[axis]} tried"
    if _AXES[axis] == "block size" and side == "largest":
        block = 2 * int(best[axis])  # block sizes double along the grid
        share = max(
            trainable_parameters(
                ablation_run(task, ABLATION_BUDGET, {"linear": {"block_size": block}}, 0)
            )
            / trainable_parameters(Run(task, ABLATION_BUDGET))
            for task in ABLATION_TASKS
        )
        if share > MAX_PARAMETER_SHARE:
            return (
                f"{text}; blocks of {block} would train up to {share:.1%} of the ordinary "
                f"parameters, beyond the {MAX_PARAMETER_SHARE:.0%} bound, so the bound ends the "
                "grid there."
            )
    return f"{text}; the next value beyond it is untried and may be lower still: try it first."


def _axis_value(text: str) -> float:
    """A numeric setting as a number; "exact" (the exact Cayley transform) is infinitely many
    Neumann terms."""
    return math.inf if text == "exact" else float(text)


def relative_settings(row: dict) -> tuple[str, ...]:
    """A row's settings without its task, its learning rate as a multiple of the rate of
    ordinary training on the task's card (today's), so that one configuration is the same
    across tasks whose cards train at different rates."""
    _, block, merge, terms, learning_rate, *flags = settings(row)
    factor = float(learning_rate) / ordinary_rate(row["task"], ABLATION_BUDGET)
    return block, merge, terms, f"{factor:.3g}", *flags


def _settings(key: tuple) -> str:
    block, merge, terms, factor, near_identity, ordinary_ends, gains = key
    blocks = "started near the identity" if near_identity == "True" else "as POET draws them"
    ends = "ordinary" if ordinary_ends == "True" else "POET"
    return (
        f"block {block}, merge every {merge}, Neumann k {terms}, lr {factor} × the card's, "
        f"blocks {blocks}, {ends} end layers, {'with' if gains == 'True' else 'no'} layer gains"
    )


def _yes_no(flag: str) -> str:
    """A recorded flag as yes or no, and "–" where the row predates its column."""
    return {"True": "yes", "False": "no"}.get(flag, "–")


def _comparison(results: Path) -> tuple[list[str], dict]:
    rows = ResultsStore(results).rows()
    cells: dict[tuple[str, int, str], list[dict]] = {}
    for r in rows:
        if r["estimator"] in ("fmpe", "fmpe+poet") and int(r["budget"]) in (1000, 10000):
            cells.setdefault((r["task"], int(r["budget"]), r["estimator"]), []).append(r)
    published = published_c2st()
    lines = [
        "| task | budget | ordinary C2ST | POET C2ST | difference | NPE (published) "
        "| POET trainable / ordinary parameters | ordinary train s | POET train s |",
        "|---" * 9 + "|",
    ]
    # POET better (1e3), or within 0.02 with at most 40% of the parameters (1e4); cells
    tally = {1000: [0, 0], 10000: [0, 0]}
    for task, budget in sorted({(t, b) for t, b, _ in cells}):
        poet = cells.get((task, budget, "fmpe+poet"), [])
        # Against ordinary training on the same seeds: the table has more seeds of it.
        seeds = {r["seed"] for r in poet}
        ordinary = [r for r in cells.get((task, budget, "fmpe"), []) if r["seed"] in seeds]
        if not ordinary or not poet:
            continue
        mean = {k: statistics.fmean(float(r["c2st"]) for r in v) for k, v in
                (("o", ordinary), ("p", poet))}  # fmt: skip
        # Each cell's own rows: the card may have changed since either was trained.
        share = int(poet[0]["trainable_parameters"]) / int(ordinary[0]["trainable_parameters"])
        difference = mean["p"] - mean["o"]
        good = difference < 0 if budget == 1000 else difference <= 0.02 and share <= 0.4
        tally[budget][0] += good
        tally[budget][1] += 1
        lines.append(
            f"| {task} | {budget:.0e} | {mean['o']:.3f} ({len(ordinary)}) | {mean['p']:.3f} "
            f"({len(poet)}) | {difference:+.3f} | {published.get((task, 'NPE', budget), '–')} | "
            f"{share:.1%} | {float(ordinary[0]['train_seconds']):.0f} | "
            f"{float(poet[0]['train_seconds']):.0f} |"
        )
    summary = [
        "",
        "Ordinary training on the same training seeds as POET (rows in parentheses).",
        f"At 1e4, POET is within 0.02 C2ST of ordinary training, with at most 40% of its "
        f"trainable parameters, on {tally[10000][0]} of {tally[10000][1]} tasks (target: at "
        f"least 8 of 10). At 1e3 it is better on {tally[1000][0]} of {tally[1000][1]} "
        "(target: at least half).",
    ]
    return lines + summary + ["", machines_line(r for v in cells.values() for r in v)], cells


def write_report(ablation: Path, results: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text = [
        "# POET against ordinary training",
        "",
        "Produced by `uv run python benchmarks/poet.py`; see its docstring for what is run.",
    ]
    if ablation.exists():
        text += ["", "## Ablation (1e4 simulations)", "", *_ablation_table(RowLog(ablation).rows())]
    cells = {}
    if results.exists():
        lines, cells = _comparison(results)
        text += ["", "## Ten sbibm tasks, observations 1-10", "", *lines]
    (out / "poet.md").write_text("\n".join(text) + "\n")
    if any(estimator == "fmpe+poet" for _, _, estimator in cells):
        tasks = sorted({t for t, _, _ in cells})
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
        for ax, budget in zip(axes, (1000, 10000)):
            methods = (("fmpe", "ordinary"), ("fmpe+poet", "POET"))
            for k, (estimator, label) in enumerate(methods):
                rows = [cells.get((t, budget, estimator), []) for t in tasks]
                means = [statistics.fmean(float(r["c2st"]) for r in v) if v else None for v in rows]
                means = [m if m is not None else float("nan") for m in means]
                ax.bar([i + 0.4 * k for i in range(len(tasks))], means, 0.4, label=label)
            ax.set_xticks([i + 0.2 for i in range(len(tasks))], tasks, rotation=70, fontsize=7)
            ax.set_title(f"{budget:.0e} simulations")
            ax.set_ylim(0.45, 1.0)
        axes[0].set_ylabel("C2ST (0.5 is best)")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(out / "poet.png", dpi=120)
        plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("step", choices=("ablation", "table", "report"))
    parser.add_argument(
        "--results", type=Path, default=RESULTS / "sbibm.csv",
        help="the sbibm results CSV that the table extends beside the ordinary rows",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=RESULTS,
        help="folder of poet_ablation.csv, poet.md and poet.png",
    )  # fmt: skip
    parser.add_argument(
        "--runs", type=Path, default=Path(__file__).parent / "runs",
        help="folder of the trained posteriors, ordinary and POET",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads, also of the table's processes"
    )
    add_stop_after(parser, "the configuration or table cell")
    args = parser.parse_args(argv)
    if args.results.is_dir():
        parser.error(f"--results {args.results} is a folder; expected the sbibm results CSV")
    torch.set_num_threads(args.threads)
    deadline = Deadline.after(args.stop_after)
    ablation = args.out / "poet_ablation.csv"
    if args.step == "ablation":
        run_ablation(ablation, args.runs, deadline)
    elif args.step == "table":
        run_table(args.results, args.runs, args.threads, deadline)
    write_report(ablation, args.results, args.out)
    if deadline.left:
        command = sys.argv[1:] if argv is None else argv
        print(deadline.summary("uv run python benchmarks/poet.py " + shlex.join(command)))


if __name__ == "__main__":
    main()
