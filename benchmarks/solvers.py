"""How the ODE solver trades network evaluations for accuracy, on one trained posterior.

    uv run python benchmarks/solvers.py [--simulations 10000] [--observation 1] [--threads 1]
    uv run python benchmarks/solvers.py --compile     # eager against torch.compile (inductor)

Trains fmpe with its defaults on two_moons, then, for each solver setting, draws 10,000
samples (C2ST against sbibm's reference) and evaluates the exact log density of 1,000
reference points (largest error against a float64 solve at tolerance 1e-9). Each time is the
median of three calls, in wall seconds and in CPU seconds of this process (which a busy
machine disturbs less); network evaluations are per call. Every row records the load average,
and its speed-up over the default of the same run and kind: on a shared machine compare rows
within one run.

Appends rows to benchmarks/results/solvers.csv and rewrites solvers.md from all rows there.
"""

import argparse
import csv
import os
import time
from pathlib import Path

import torch

import fmpe
from fmpe.benchmark import (
    RowLog,
    float64_log_prob,
    markdown_table,
    provenance,
    timestamp,
)
from fmpe.metrics import c2st
from fmpe.tasks import get_task

RESULTS = Path(__file__).parent / "results"
REPEATS = 3
NUM_SAMPLES = 10_000
NUM_POINTS = 1_000
# (what is solved, solver options); the first of each kind is fmpe's default. Sampling
# options set the sampling solve (`sampling_overrides`), whose default grid is the late one
# since 0.6.0: the settings measured before on the uniform grid name it.
ADAPTIVE = {"method": "dopri5_per_row", "time_grid": "uniform"}  # sampling until fmpe 0.5.0
SETTINGS = [
    ("sample", {}),
    ("sample", ADAPTIVE),
    ("sample", ADAPTIVE | {"rtol": 1e-2, "atol": 1e-2}),
    ("sample", ADAPTIVE | {"rtol": 1e-5, "atol": 1e-5}),
    ("sample", {"method": "midpoint", "steps": 8, "time_grid": "uniform"}),
    ("sample", {"method": "midpoint", "steps": 16, "time_grid": "uniform"}),
    ("sample", {"method": "rk4", "steps": 5, "time_grid": "uniform"}),
    ("sample", {"method": "rk4", "steps": 10, "time_grid": "uniform"}),
    ("sample", {"method": "tsit5_per_row", "time_grid": "uniform"}),
    ("sample", {"method": "rk4", "steps": 5, "time_grid": "late"}),
    ("sample", {"method": "rk4", "steps": 8, "time_grid": "late"}),
    ("sample", {"method": "midpoint", "steps": 12, "time_grid": "late"}),
    ("log_prob", {}),
    ("log_prob", {"rtol": 3e-5, "atol": 3e-5}),  # between 1e-5 and 1e-4: 0.01 nats is crossed
    ("log_prob", {"rtol": 5e-5, "atol": 5e-5}),
    ("log_prob", {"rtol": 1e-4, "atol": 1e-4}),
    ("log_prob", {"rtol": 1e-3, "atol": 1e-3}),
    ("log_prob", {"method": "rk4", "steps": 10}),
    ("log_prob", {"method": "rk4", "steps": 20}),
    ("log_prob", {"method": "midpoint", "steps": 32}),
    ("log_prob", {"method": "tsit5_per_row"}),
    ("log_prob", {"method": "tsit5_per_row", "rtol": 2e-5, "atol": 2e-5}),
    ("log_prob", {"method": "tsit5_per_row", "rtol": 3e-5, "atol": 3e-5}),
    ("log_prob", {"method": "dopri8", "rtol": 1e-3, "atol": 1e-3}),
    # Dormand-Prince 8 at looser tolerances: where its larger steps would cross 0.01 nats.
    ("log_prob", {"method": "dopri8", "rtol": 1e-2, "atol": 1e-2}),
    ("log_prob", {"method": "dopri8", "rtol": 3e-2, "atol": 3e-2}),
    ("log_prob", {"method": "rk4", "steps": 20, "time_grid": "late"}),
    ("log_prob", {"time_grid": "late"}),
]
# With --compile: each of these eagerly, then with the velocity network under torch.compile.
COMPILE_SETTINGS = [
    ("sample", {}),
    ("sample", ADAPTIVE),
    ("log_prob", {}),
]
FIELDS = (
    "solve",
    "settings",
    "seconds",
    "cpu_seconds",
    "speedup",
    "load_average",
    "evaluations",
    "c2st",
    "max_error",
    "median_error",
    "simulations",
    "observation",
    "threads",
    "machine",
    "fmpe_version",
    "run",
    "finished_at",
)


def timed_cpu(function, *args, repeats: int, **kwargs):
    """The result of the last of `repeats` calls, and the median wall and CPU seconds (of
    this process) of a call."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = function(*args, **kwargs)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return result, sorted(wall)[len(wall) // 2], sorted(cpu)[len(cpu) // 2]


def read_rows(path: Path) -> list[dict]:
    """The rows of the CSV at `path`, with the fields of older versions of this script
    filled in as empty."""
    return [{field: row.get(field) or "" for field in FIELDS} for row in RowLog(path).rows()]


def upgrade_header(path: Path) -> None:
    """Rewrites a CSV written with fewer FIELDS under the current header (new fields empty),
    so that rows appended now line up; the old rows' values are kept as they were."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        header = next(csv.reader(f), None)
    if header is None or tuple(header) == FIELDS:
        return
    rows = read_rows(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def write_table(rows: list[dict], path: Path) -> None:
    lines = [
        "# ODE solver settings on two_moons",
        "",
        "Produced by `uv run python benchmarks/solvers.py`; each row names its machine. The",
        "first `sample` and `log_prob` rows of a run are fmpe's defaults. C2ST of 10,000 samples",
        "against sbibm's reference (0.5 is perfect); errors in nats against a float64 solve at",
        "tolerance 1e-9, over 1,000 reference points; seconds: median of 3 calls. CPU seconds",
        "are those of the benchmark's process; speed-up is over the default row of the same run",
        "and kind (wall seconds), the fairer comparison on a shared machine.",
        "",
        *markdown_table(rows, FIELDS),
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--simulations", type=int, default=10_000)
    parser.add_argument("--observation", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="time a few settings eagerly and with the network under torch.compile instead",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    task = get_task("two_moons")
    torch.manual_seed(0)
    theta = task.prior.sample((args.simulations,))
    x = task.simulate(theta)
    x_obs = task.observation(args.observation)
    reference = task.reference_samples(args.observation)
    points = reference[:NUM_POINTS]

    estimator = fmpe.FMPE(prior=task.prior).append_simulations(theta, x)
    posterior = estimator.train(seed=0, show_progress=False)
    exact = float64_log_prob(posterior, points, x_obs)
    posterior.log_prob(posterior.sample(100, x_obs)[:10], x_obs)  # warm-up

    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / "solvers.csv"
    upgrade_header(path)
    run = timestamp()
    default_seconds: dict[str, float] = {}
    eager = compiled_velocity = posterior.network.forward_embedded
    compile_label = ""
    if args.compile:
        plan = [(s, o, compiled) for s, o in COMPILE_SETTINGS for compiled in (False, True)]
        # The exact divergence takes one backward pass per dimension through one graph
        # (retain_graph), which compiled backwards with donated buffers refuse.
        torch._functorch.config.donated_buffer = False
        compiled_velocity = torch.compile(eager, dynamic=True)
        posterior.network.forward_embedded = compiled_velocity
        # The first calls compile (the backward pass too, for the divergence); not timed.
        start = time.perf_counter()
        posterior.sample(NUM_SAMPLES, x_obs)
        posterior.log_prob(points, x_obs)
        compile_label = f"torch.compile ({time.perf_counter() - start:.0f} s to compile): "
    else:
        plan = [(s, o, False) for s, o in SETTINGS]
    for solve, options, compiled in plan:
        posterior.network.forward_embedded = compiled_velocity if compiled else eager
        torch.manual_seed(1)
        row = {"c2st": "", "max_error": "", "median_error": ""}
        if solve == "sample":
            (samples, cost), seconds, cpu_seconds = timed_cpu(
                posterior.sample, NUM_SAMPLES, x_obs, repeats=REPEATS, return_cost=True, **options
            )
            row["c2st"] = f"{c2st(reference[:NUM_SAMPLES], samples):.3f}"
        else:
            (log_prob, cost), seconds, cpu_seconds = timed_cpu(
                posterior.log_prob, points, x_obs, repeats=REPEATS, return_cost=True, **options
            )
            error = (log_prob.double() - exact).abs()
            row["max_error"] = f"{error.max().item():.1e}"
            row["median_error"] = f"{error.median().item():.1e}"
        default_seconds.setdefault(solve, seconds)  # the first row of each kind is the default
        row |= {
            "solve": solve,
            "settings": (compile_label if compiled else "")
            + (", ".join(f"{k}={v}" for k, v in options.items()) or "default"),
            "seconds": f"{seconds:.2f}",
            "cpu_seconds": f"{cpu_seconds:.2f}",
            "speedup": f"{default_seconds[solve] / seconds:.2f}",
            "load_average": f"{os.getloadavg()[0]:.1f}",
            "evaluations": str(cost.evaluations),
            "simulations": str(args.simulations),
            "observation": str(args.observation),
            "threads": str(args.threads),
            **provenance(),
            "run": run,
        }
        print({k: row[k] for k in FIELDS[:10]}, flush=True)
        RowLog(path, FIELDS).add(row)
    write_table(read_rows(path), args.results / "solvers.md")


if __name__ == "__main__":
    main()
