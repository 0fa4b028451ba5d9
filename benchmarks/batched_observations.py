"""Many observations at once: one batched solve against a loop over observations.

    uv run python benchmarks/batched_observations.py [--observations 1000] [--samples 100]

Trains fmpe with its defaults on 10,000 two_moons simulations, draws `--observations`
observations from the prior predictive, and for each of them draws `--samples` samples and
evaluates their exact log densities, twice: in one call with the batch of all observations
(rows of every observation solved together, `chunk_size` rows at a time) and in a Python loop
that calls the posterior once per observation. Records the wall time, the network
evaluations and the largest difference between the two ways' log densities. Appends rows to
benchmarks/results/batched_observations.csv and rewrites batched_observations.md.
"""

import argparse
import os
from pathlib import Path

import torch

import fmpe
from fmpe.benchmark import RowLog, provenance, timed
from fmpe.tasks import get_task

RESULTS = Path(__file__).parent / "results"
FIELDS = (
    "call",
    "how",
    "observations",
    "samples",
    "seconds",
    "evaluations",
    "max_log_prob_difference",
    "threads",
    "load_average",
    "machine",
    "fmpe_version",
    "finished_at",
)


def looped(method, n_or_theta, xs, **options):
    """`method` called once per observation; results stacked as the batched call's."""
    results = []
    for j, x in enumerate(xs):
        argument = n_or_theta if isinstance(n_or_theta, int) else n_or_theta[:, j]
        results.append(method(argument, x, return_cost=True, **options))
    values = torch.stack([r[0] for r in results], dim=1)
    return values, sum(r[-1].evaluations for r in results)


def write_table(rows: list[dict], path: Path) -> None:
    lines = [
        "# Batched solves over observations",
        "",
        "Produced by `uv run python benchmarks/batched_observations.py`; each row names its "
        "machine and the load average when it ran.",
        "",
        "| call | how | observations | samples each | seconds | network evaluations | "
        "max log-density difference | threads | load | machine | finished |",
        "|---" * 11 + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['call']} | {r['how']} | {r['observations']} | {r['samples']} | {r['seconds']} "
            f"| {r['evaluations']} | {r['max_log_prob_difference'] or '—'} | {r['threads']} | "
            f"{r['load_average']} | {r['machine']} | {r['finished_at']} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--observations", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task("two_moons")
    torch.manual_seed(0)
    posterior = fmpe.FMPE(task.simulate, task.prior).train(10_000, show_progress=False)
    torch.manual_seed(1)
    xs = task.simulate(task.prior.sample((args.observations,)))
    theta = posterior.sample(args.samples, xs)  # (n, b, d)
    path = RESULTS / "batched_observations.csv"
    measured = {}
    for call in ("sample", "log_prob"):
        method = getattr(posterior, call)
        first = args.samples if call == "sample" else theta
        for how in ("batched", "loop"):
            torch.manual_seed(2)
            if how == "batched":
                (values, cost), seconds = timed(method, first, xs, return_cost=True)
                evaluations = cost.evaluations
            else:
                (values, evaluations), seconds = timed(looped, method, first, xs)
            measured[(call, how)] = values
            difference = ""
            if call == "log_prob" and how == "loop":
                gap = (values - measured[("log_prob", "batched")]).abs().max().item()
                difference = f"{gap:.1e}"
            row = {
                "call": call,
                "how": how,
                "observations": args.observations,
                "samples": args.samples,
                "seconds": f"{seconds:.2f}",
                "evaluations": evaluations,
                "max_log_prob_difference": difference,
                "threads": args.threads,
                "load_average": f"{os.getloadavg()[0]:.1f}",
                **provenance(),
            }
            print(row, flush=True)
            RowLog(path, FIELDS).add(row)
    write_table(RowLog(path).rows(), RESULTS / "batched_observations.md")


if __name__ == "__main__":
    main()
