"""The training settings that `fmpe sweep` does not search, measured by validation loss.

    uv run python benchmarks/training_defaults.py run       # the ten sbibm tasks at 1e4
    uv run python benchmarks/training_defaults.py report    # training_defaults.md from the rows

`run` trains the base card's one configuration at 1e4 (`fmpe benchmark --defaults`, and
fmpe's library defaults) on each sbibm task's benchmark training simulations, once per option
of each setting below with the others at fmpe's defaults, and records the best validation loss
(flow matching at uniform t) and the held-out −log q, as `fmpe sweep` does. Like the sweep it
never reads an observation, a reference posterior or C2ST. Rows already in the CSV are not
trained again, so an interrupted run resumes.

A setting keeps its default unless the measurement favours another option (docs/method.md
says what it showed). Early stopping is not measured: it can only end the same run sooner, and
the best validation loss of a run's first epochs is never below that of the whole run.
"""

import argparse
import json
from pathlib import Path

import torch

from fmpe.benchmark import RowLog, markdown_table
from fmpe.benchmark.experiment import Run
from fmpe.benchmark.measure import resolve_device
from fmpe.benchmark.sweep import FIELDS, sbibm_tasks, train_and_score
from fmpe.simulation import simulate
from fmpe.tasks import get_task

RESULTS = Path(__file__).parent / "results"
BUDGET = 10_000
SEED = 0
# Per setting of `TrainingSettings`, the options compared; the first is fmpe's default.
OPTIONS = {"ema_decay": (0.999, None)}


def run(results: Path, show_progress: bool) -> None:
    rows = RowLog(results).rows()
    done = {(r["task"], r["configuration"]) for r in rows}
    for name in sbibm_tasks():
        task = get_task(name)
        candidates = [
            {"train": {key: value}} for key, values in OPTIONS.items() for value in values
        ]
        todo = [c for c in candidates if (name, json.dumps(c, sort_keys=True)) not in done]
        if not todo:
            continue
        torch.manual_seed(SEED)  # the simulations of `fmpe sweep` and `fmpe benchmark`
        theta, x = simulate(task.training_simulate, task.prior, BUDGET, show_progress=show_progress)
        for candidate in todo:
            setting = next(iter(candidate["train"]))
            run = Run(name, BUDGET, defaults=True, seed=SEED, changes=candidate)
            row = train_and_score(
                run, (theta, x), setting, resolve_device("auto"), show_progress=show_progress
            )
            RowLog(results, FIELDS).add(row)
            print(f"{name} {candidate}: validation loss {row['validation_loss']:.4f}")


def report(results: Path) -> Path:
    """Writes training_defaults.md beside `results`: per setting and task, each option's
    validation loss, and how many tasks each option wins."""
    rows = RowLog(results).rows()
    lines = [
        "# Training settings the sweep does not search",
        "",
        "Produced by `uv run python benchmarks/training_defaults.py`; each row names its machine.",
        f"The base card's configuration at {BUDGET} simulations (fmpe's defaults), trained once",
        "per option on each sbibm task's benchmark simulations (seed 0); the best validation",
        "loss (flow matching at uniform t) and the held-out −log q(θ | x). No observation,",
        "reference posterior or C2ST is read. Lower is better in both.",
        "",
    ]
    for setting, options in OPTIONS.items():
        by_task: dict[str, dict] = {}
        for r in rows:
            if r["stage"] == setting:
                value = json.loads(r["configuration"])["train"][setting]
                by_task.setdefault(r["task"], {})[json.dumps(value)] = r
        labels = [json.dumps(value) for value in options]
        table, wins, nll_wins = [], dict.fromkeys(labels, 0), dict.fromkeys(labels, 0)
        for name, found in sorted(by_task.items()):
            if set(found) != set(labels):
                continue
            best = min(labels, key=lambda label: float(found[label]["validation_loss"]))
            wins[best] += 1
            nll_wins[min(labels, key=lambda label: float(found[label]["heldout_nll"]))] += 1
            table.append(
                {
                    "task": name,
                    **{
                        f"{setting} = {label}": f"{float(found[label]['validation_loss']):.4f} "
                        f"({float(found[label]['heldout_nll']):.3f})"
                        for label in labels
                    },
                    "lower": best,
                    "train seconds": " / ".join(found[label]["train_seconds"] for label in labels),
                    "machine": found[labels[0]]["machine"],
                }
            )
        lines += [f"## {setting} (default {labels[0]})", ""]
        if table:
            lines += markdown_table(table, list(table[0]))
        for name, counts in (("validation loss", wins), ("held-out −log q", nll_wins)):
            summary = ", ".join(f"{label}: {count}" for label, count in counts.items())
            lines += ["", f"Lower {name}, tasks of {len(table)}: {summary}."]
        lines += [""]
    path = results.with_suffix(".md")
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "report"))
    parser.add_argument("--results", type=Path, default=RESULTS / "training_defaults.csv")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    if args.command == "run":
        run(args.results, not args.quiet)
    print(f"wrote {report(args.results)}")


if __name__ == "__main__":
    main()
