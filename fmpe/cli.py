"""The fmpe command line.

    fmpe benchmark TASK... --budget N     train and score on benchmark tasks
    fmpe report                           tables and figures of the benchmark results

Every argument is checked before any work starts; a bad one ends the command with one line
on stderr and exit status 2.
"""

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

RESULTS = Path("fmpe-benchmark/sbibm.csv")
RUNS = Path("fmpe-benchmark/runs")


class UsageError(SystemExit):
    """A bad command line: exit status 2; the message is printed on one line before."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        fail(self.prog, message)


def fail(command: str, message: str):
    """Prints `message` as one line and exits with status 2."""
    print(f"{command}: error: {message}", file=sys.stderr)
    raise UsageError(message)


def numbers(text: str) -> list[int]:
    """'1e3,1e4' -> [1000, 10000]; '1-10' -> [1, ..., 10]; '1,3' -> [1, 3]; repeats once."""
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part.lstrip("-"):
                low, high = (int(v) for v in part.split("-"))
                if low > high:
                    raise argparse.ArgumentTypeError(
                        f"range {part} is reversed; write {high}-{low}"
                    )
                values += range(low, high + 1)
            else:
                value = float(part)
                if not value.is_integer():
                    raise ValueError
                values.append(int(value))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a whole number or a range like 1-10"
            ) from None
    return list(dict.fromkeys(values))


def positive_numbers(text: str) -> list[int]:
    values = numbers(text)
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every number must be positive")
    return values


def positive_int(text: str) -> int:
    values = positive_numbers(text)
    if len(values) != 1 or "-" in text or "," in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not one positive whole number")
    return values[0]


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fmpe", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    bench = commands.add_parser(
        "benchmark",
        help="train and score an estimator on benchmark tasks",
        description="Train an estimator on benchmark tasks and score it on their observations. "
        "Results are added to a CSV one observation at a time, so a stopped run goes on "
        "where it left off.",
    )
    bench.add_argument("tasks", nargs="*", metavar="TASK", help="task names, e.g. two_moons slcp")
    bench.add_argument("--all", action="store_true", help="every registered task")
    bench.add_argument("--budget", type=positive_numbers, help="simulation budget, e.g. 10000")
    bench.add_argument("--budgets", type=positive_numbers, help="several budgets, e.g. 1e3,1e4,1e5")
    bench.add_argument(
        "--observations",
        type=positive_numbers,
        default=list(range(1, 11)),
        help="observation numbers, e.g. 1-10 or 1,4 (default 1-10)",
    )
    bench.add_argument("--estimator", default="fmpe", help="fmpe (default) or npe")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    bench.add_argument("--results", type=Path, default=RESULTS, help="CSV to add rows to")
    bench.add_argument("--runs", type=Path, default=RUNS, help="where posteriors are kept")
    bench.add_argument(
        "--samples",
        type=positive_int,
        default=10_000,
        help="posterior samples scored per observation (sbibm: 10000)",
    )
    bench.add_argument("--quiet", action="store_true", help="no training progress bars")

    report = commands.add_parser("report", help="markdown tables and a figure of the results")
    report.add_argument("--results", type=Path, default=RESULTS)
    report.add_argument("--out", type=Path, default=None, help="default: the CSV's folder")
    return parser


def _writable_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; name a file")
    folder = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ValueError(f"{what} {path} cannot be written: {folder} is not a writable folder")


def _writable_folder(path: Path, what: str) -> None:
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file; name a folder")
    _writable_file(path / "x", what)


def _benchmark(args: argparse.Namespace) -> None:
    from fmpe.estimators import get_estimator
    from fmpe.tasks import available_tasks, get_task

    if args.all == bool(args.tasks):
        raise ValueError("name one or more TASKs or pass --all")
    budgets = args.budgets or args.budget
    if not budgets:
        raise ValueError("pass --budget N or --budgets N1,N2,...")
    get_estimator(args.estimator)
    tasks = available_tasks() if args.all else list(dict.fromkeys(args.tasks))
    unknown = [t for t in tasks if t not in available_tasks()]
    if unknown:
        raise ValueError(
            f"unknown task {', '.join(map(repr, unknown))}; known: {', '.join(available_tasks())}"
        )
    for name in tasks:
        count = get_task(name).num_observations
        outside = [o for o in args.observations if o > count]
        if outside:
            raise ValueError(f"task {name} has observations 1-{count}, not {outside}")
    _writable_file(args.results, "--results")
    _writable_folder(args.runs, "--runs")
    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")

    from fmpe.benchmark import run
    from fmpe.benchmark.results import KEY, TRAILING

    RESULT_COLUMNS = {*KEY, *TRAILING}

    rows = run(
        tasks,
        budgets,
        args.observations,
        estimator=args.estimator,
        seed=args.seed,
        device=args.device,
        results=args.results,
        run_dir=args.runs,
        num_samples=args.samples,
        show_progress=not args.quiet,
    )
    labels = {"c2st": "C2ST {:.3f}", "mmd": "MMD {:.4f}", "nltp": "-log q(θ*) {:.2f}"}
    for row in rows:
        metrics = [k for k, v in row.items() if v != "" and k not in RESULT_COLUMNS]
        scores = "  ".join(labels.get(k, k + " {:.3f}").format(float(row[k])) for k in metrics)
        print(
            f"{row['task']:>24} budget {int(row['budget']):>7} observation "
            f"{int(row['observation']):>2}: {scores}  ({row['estimator']})"
        )
    print(f"results in {args.results}")


def _report(args: argparse.Namespace) -> None:
    from fmpe.benchmark.report import write_report

    if not args.results.is_file():
        raise ValueError(f"no results file at {args.results}")
    for path in write_report(args.results, args.out or args.results.parent):
        print(f"wrote {path}")


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "benchmark": _benchmark,
    "report": _report,
}


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    from fmpe.tasks import CardError

    try:
        COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, CardError) as error:
        fail(f"fmpe {args.command}", " ".join(str(error).split()) or repr(error))


if __name__ == "__main__":
    main()
