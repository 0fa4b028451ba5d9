"""Scoring a benchmark posterior: one process against single-threaded worker processes.

    uv run python benchmarks/scoring.py [--task gaussian_linear] [--budget 1000]
        [--observations 1-4] [--workers 1,2]

C2ST dominates a benchmark row on a small CPU. This trains (once, kept in --runs) the task
card's posterior and scores it on the observations with `fmpe benchmark`'s runner, once per
number of scoring workers (1: today's one process), each into a fresh results file, so that
only the scoring is timed. It records the wall seconds and the largest C2ST difference from
the one-process rows, appends to benchmarks/results/scoring.csv and rewrites scoring.md.
Run it on a quiet machine: it times the CPU.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from fmpe.benchmark import RowLog, markdown_table, provenance, run
from fmpe.cli import positive_numbers

RESULTS = Path(__file__).parent / "results"
FIELDS = (
    "task",
    "budget",
    "observations",
    "workers",
    "seconds",
    "seconds_per_observation",
    "speedup",
    "max_c2st_difference",
    "load_average",
    "machine",
    "fmpe_version",
    "finished_at",
)


def measure(task: str, budget: int, observations: list[int], workers: list[int], runs: Path):
    """One row per number of workers: wall seconds to score `observations`."""
    rows, first, base_seconds = [], None, None
    for count in workers:
        with tempfile.TemporaryDirectory() as folder:
            options = {"results": Path(folder) / "rows.csv", "run_dir": runs}
            run([task], [budget], observations[:1], show_progress=False, **options)  # trains
            load = os.getloadavg()[0]
            start = time.perf_counter()
            scored = run(
                [task], [budget], observations[1:], show_progress=False,
                scoring_workers=count, **options,
            )  # fmt: skip
            seconds = time.perf_counter() - start
        c2st = {r["observation"]: float(r["c2st"]) for r in scored}
        first = first or c2st
        base_seconds = base_seconds or seconds
        rows.append(
            {
                "task": task,
                "budget": budget,
                "observations": len(scored),
                "workers": count,
                "seconds": round(seconds, 1),
                "seconds_per_observation": round(seconds / len(scored), 1),
                "speedup": round(base_seconds / seconds, 2),
                "max_c2st_difference": round(max(abs(c2st[o] - first[o]) for o in c2st), 4),
                "load_average": round(load, 2),
                **provenance("cpu"),
            }
        )
    return rows


def write_table(results: Path) -> Path:
    rows = RowLog(results).rows()
    lines = [
        "# Scoring benchmark rows: one process against worker processes",
        "",
        "Produced by `uv run python benchmarks/scoring.py`; each row names its machine and the",
        "load average when it started. Workers run single-threaded; one worker is today's",
        "single process. Scoring is sampling, C2ST, MMD and the true parameter's density; the",
        "first observation (and the training) is run before the clock starts.",
        "",
        *markdown_table(rows, FIELDS),
        "",
    ]
    path = results.with_suffix(".md")
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="gaussian_linear")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--observations", type=positive_numbers, default=[1, 2, 3, 4, 5])
    parser.add_argument("--workers", type=positive_numbers, default=[1, 2])
    parser.add_argument("--runs", type=Path, default=Path(__file__).parent / "runs")
    parser.add_argument("--results", type=Path, default=RESULTS / "scoring.csv")
    args = parser.parse_args()
    if len(args.observations) < 2:
        parser.error("--observations: give at least two (the first is scored untimed)")
    for row in measure(args.task, args.budget, args.observations, args.workers, args.runs):
        RowLog(args.results, FIELDS).add(row)
        print({k: row[k] for k in ("workers", "seconds", "speedup", "max_c2st_difference")})
    print(f"wrote {write_table(args.results)}")


if __name__ == "__main__":
    main()
