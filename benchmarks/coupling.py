"""Minibatch optimal-transport coupling against independent pairs, on two_moons at 1e4.

    uv run python benchmarks/coupling.py [--observations 1-3] [--threads 1]
    uv run python benchmarks/coupling.py --smoke      # a tiny run that writes to a temp dir

For each registered coupling ("independent", "ot", "conditional_ot") it trains fmpe with the
task card's settings and the same seed, then per observation draws 10,000 samples with the
default adaptive solver and with fixed-step RK4 (5 steps), and records C2ST against sbibm's
reference and the network evaluations of each draw. Straighter paths show as fewer adaptive
evaluations and a better few-step C2ST; a posterior that lost its dependence on x shows as a
worse C2ST at the default solver. The validation loss is the independent-pair loss for all.

Appends rows to benchmarks/results/coupling.csv (rows already there are skipped, so an
interrupted run resumes) and rewrites coupling.md from all rows.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from fmpe.benchmark import RowLog, provenance, resolve_device, timed
from fmpe.benchmark.experiment import Run
from fmpe.benchmark.report import machines_line
from fmpe.cli import positive_numbers
from fmpe.metrics import c2st
from fmpe.tasks import get_task

RESULTS = Path(__file__).parent / "results"
COUPLINGS = ("independent", "ot", "conditional_ot")
SOLVERS = {"adaptive (default)": {}, "rk4, 5 steps": {"method": "rk4", "steps": 5}}
FIELDS = (
    "task",
    "budget",
    "coupling",
    "solver",
    "observation",
    "c2st",
    "evaluations",
    "validation_loss",
    "train_seconds",
    "machine",
    "fmpe_version",
    "finished_at",
)


def run(
    path: Path,
    task_name: str,
    budget: int,
    observations: list[int],
    samples: int,
    train_overrides: dict | None = None,
) -> None:
    log = RowLog(path, FIELDS, key=("coupling", "solver", "observation"))
    done = log.completed()
    task = get_task(task_name)
    for coupling in COUPLINGS:
        wanted = [(s, o) for s in SOLVERS for o in observations]
        if all((coupling, s, str(o)) in done for s, o in wanted):
            continue
        changes = {"model": {"coupling": coupling}, "train": train_overrides or {}}
        run = Run(task_name, budget, changes=changes)
        posterior, seconds = timed(run.fit, resolve_device("auto"), show_progress=False)
        for solver, options in SOLVERS.items():
            for observation in observations:
                if (coupling, solver, str(observation)) in done:
                    continue
                torch.manual_seed(0)
                drawn, cost = posterior.sample(
                    samples, task.observation(observation), return_cost=True, **options
                )
                row = {
                    "task": task_name,
                    "budget": budget,
                    "coupling": coupling,
                    "solver": solver,
                    "observation": observation,
                    "c2st": c2st(task.reference_samples(observation)[:samples], drawn),
                    "evaluations": cost.evaluations,
                    "validation_loss": posterior.training_record.best_validation_loss,
                    "train_seconds": round(seconds, 1),
                    **provenance(),
                }
                print({k: row[k] for k in FIELDS[:7]}, flush=True)
                log.add(row)


def write_report(path: Path, out: Path) -> None:
    rows = RowLog(path).rows()
    lines = [
        "# Minibatch OT coupling against independent pairs",
        "",
        "Written by `benchmarks/coupling.py` from `coupling.csv`. C2ST and network evaluations "
        "per 10,000 samples are means over the observations; the validation loss is the "
        "flow-matching loss of independent pairs (lower is better).",
        "",
        "| task | budget | coupling | solver | observations | C2ST | evaluations "
        "| validation loss | train s |",
        "|---" * 9 + "|",
    ]
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["task"], r["budget"], r["coupling"], r["solver"]), []).append(r)
    for (task, budget, coupling, solver), group in cells.items():
        mean_c2st = statistics.fmean(float(r["c2st"]) for r in group)
        evaluations = statistics.fmean(float(r["evaluations"]) for r in group)
        lines.append(
            f"| {task} | {budget} | {coupling} | {solver} | {len(group)} | {mean_c2st:.3f} "
            f"| {evaluations:.0f} | {float(group[0]['validation_loss']):.4f} "
            f"| {group[0]['train_seconds']} |"
        )
    lines += ["", machines_line(rows), ""]
    out.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=positive_numbers, default=[1, 2, 3])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="a tiny run into a temp dir")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.smoke:
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "coupling.csv"
            run(path, "gaussian_linear", 200, [1], samples=200, train_overrides={"max_epochs": 2})
            write_report(path, Path(directory) / "coupling.md")
            print((Path(directory) / "coupling.md").read_text())
        return
    path = RESULTS / "coupling.csv"
    run(path, "two_moons", 10_000, args.observations, samples=10_000)
    write_report(path, RESULTS / "coupling.md")


if __name__ == "__main__":
    main()
