"""Command line: `fmpe benchmark` runs sbibm tasks, `fmpe report` renders the results."""

import argparse
from pathlib import Path

RESULTS = Path("fmpe-benchmark/sbibm.csv")
RUNS = Path("fmpe-benchmark/runs")


def _numbers(text: str) -> list[int]:
    """'1e3,1e4' -> [1000, 10000]; '1-10' -> [1, ..., 10]; '1,3' -> [1, 3]."""
    values = []
    for part in text.split(","):
        if "-" in part:
            low, high = part.split("-")
            values += range(int(low), int(high) + 1)
        else:
            values.append(int(float(part)))
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmpe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    bench = commands.add_parser("benchmark", help="train and score fmpe on sbibm tasks")
    bench.add_argument("tasks", nargs="*", metavar="TASK", help="task names, e.g. two_moons slcp")
    bench.add_argument("--all", action="store_true", help="every sbibm task")
    bench.add_argument("--budget", type=_numbers, help="simulation budget, e.g. 10000")
    bench.add_argument("--budgets", type=_numbers, help="several budgets, e.g. 1e3,1e4,1e5")
    bench.add_argument(
        "--observations",
        type=_numbers,
        default=list(range(1, 11)),
        help="observation numbers, e.g. 1-10 or 1,4 (default 1-10)",
    )
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    bench.add_argument("--results", type=Path, default=RESULTS, help="CSV to append to")
    bench.add_argument("--runs", type=Path, default=RUNS, help="where posteriors are kept")
    bench.add_argument(
        "--samples",
        type=int,
        default=10_000,
        help="posterior samples scored per observation (sbibm: 10000)",
    )
    bench.add_argument("--quiet", action="store_true", help="no training progress bars")

    report = commands.add_parser("report", help="markdown table and figure of the results")
    report.add_argument("--results", type=Path, default=RESULTS)
    report.add_argument("--out", type=Path, default=None, help="default: the CSV's folder")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "report":
        from fmpe.report import write_report

        for path in write_report(args.results, args.out or args.results.parent):
            print(f"wrote {path}")
        return

    from fmpe.benchmark import run
    from fmpe.tasks import available_tasks

    if args.all == bool(args.tasks):
        raise SystemExit("fmpe benchmark: name one or more TASKs or pass --all")
    budgets = args.budgets or args.budget
    if not budgets:
        raise SystemExit("fmpe benchmark: pass --budget N or --budgets N1,N2,...")
    tasks = available_tasks() if args.all else args.tasks
    rows = run(
        tasks,
        budgets,
        args.observations,
        seed=args.seed,
        device=args.device,
        results=args.results,
        run_dir=args.runs,
        num_samples=args.samples,
        show_progress=not args.quiet,
    )
    for row in rows:
        print(
            f"{row['task']:>24} budget {row['budget']:>7} observation {row['observation']:>2}: "
            f"C2ST {float(row['c2st']):.3f}  MMD {float(row['mmd']):.4f}  "
            f"-log q(θ*) {float(row['nltp']):.2f}"
        )
    print(f"results in {args.results}")


if __name__ == "__main__":
    main()
