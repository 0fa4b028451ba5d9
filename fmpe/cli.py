"""The fmpe command line.

    fmpe train TASK|CARD --budget N -o post.fmpe    train a posterior on a task
    fmpe sample post.fmpe --observation K -n N -o samples.npy
    fmpe diagnose post.fmpe [--lc2st 1 2]           calibration checks and figures
    fmpe benchmark TASK... --budget N               train and score on benchmark tasks
    fmpe sweep TASK --budget N                      choose hyperparameters by validation loss
    fmpe sweep defaults --budget N                  ... and one configuration for every task
    fmpe report                                     tables and figures of the results

`fmpe COMMAND --help` explains each command and its options.

Every argument is checked before any work starts; a bad one ends the command with one line
on stderr and exit status 2.
"""

import argparse
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

RESULTS = Path("fmpe-benchmark/sbibm.csv")
RUNS = Path("fmpe-benchmark/runs")
SWEEP = Path("fmpe-benchmark/sweep.csv")


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


def duration(text: str) -> str:
    """A --stop-after value, checked here and kept as written ('90m', '2h')."""
    from fmpe.benchmark.deadline import parse_duration

    try:
        parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_stop_after(parser: argparse.ArgumentParser, unit: str) -> None:
    """Adds --stop-after DURATION to `parser` (the CLI's and the benchmark scripts'); `unit`
    names what a stopped run finishes, e.g. "the configuration"."""
    parser.add_argument(
        "--stop-after",
        type=duration,
        metavar="DURATION",
        help=f"e.g. 90m or 2h: finish {unit} in progress, start none that is not expected to "
        "fit (by the durations recorded so far), and print the command that continues",
    )


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
    bench.add_argument(
        "--variant", help="a variant the task cards declare, e.g. poet; results name it fmpe+poet"
    )
    bench.add_argument(
        "--poet", action="store_const", const="poet", dest="variant",
        help="train POET-parameterized networks (the cards' poet variant)",
    )  # fmt: skip
    bench.add_argument(
        "--defaults", action="store_true",
        help="train with the base card's one configuration (tasks/defaults.toml) instead of "
        "each task card's; results name it fmpe@defaults",
    )  # fmt: skip
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
    bench.add_argument(
        "--scoring-workers",
        type=positive_int,
        default=2,
        help="score a posterior's observations in this many single-threaded processes on "
        "the CPU (default 2: 1.76x faster than one process on 2 cores, "
        "benchmarks/results/scoring.md)",
    )
    bench.add_argument(
        "--rounds",
        type=positive_int,
        default=1,
        help="truncated sequential rounds (TSNPE) that share the budget, with a posterior per "
        "observation; results name it e.g. fmpe@rounds3",
    )
    bench.add_argument("--quiet", action="store_true", help="no training progress bars")
    _add_cards(bench)
    add_stop_after(bench, "the posterior (training and scoring)")

    train = commands.add_parser(
        "train",
        help="train a posterior on a task and save it",
        description="Simulate a task's training set and train a posterior on it with the "
        "task card's hyperparameters for the budget; save it to one .fmpe file. With "
        "--checkpoints, an interrupted run started again goes on where it stopped.",
    )
    train.add_argument("task", metavar="TASK|CARD", help="a task name, or a card file (.toml)")
    train.add_argument("--budget", type=positive_int, required=True, help="simulations, e.g. 1e4")
    train.add_argument("-o", "--output", type=Path, required=True, help="the .fmpe file to write")
    train.add_argument("--estimator", default="fmpe", help="fmpe (default) or npe")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    train.add_argument("--checkpoints", type=Path, help="a folder to resume from if interrupted")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_cards(train)

    sample = commands.add_parser(
        "sample",
        help="draw posterior samples for an observation",
        description="Draw samples from a saved posterior for one of its task's observations "
        "or for observations in a file; write them to .npy (shape (n, d), or (n, b, d) for b "
        "observations) or .csv (one row per sample, with the observation's index).",
    )
    sample.add_argument("posterior", type=Path, help="a .fmpe file")
    which = sample.add_mutually_exclusive_group(required=True)
    which.add_argument("--observation", type=positive_int, help="the task's observation K")
    which.add_argument(
        "--x", type=Path, help=".npy with x (*x_shape) or (b, *x_shape), or .csv, a row each"
    )
    sample.add_argument("--task", help="the task of --observation (default: the file's)")
    sample.add_argument("-n", "--num-samples", type=positive_int, default=10_000)
    sample.add_argument("-o", "--output", type=Path, required=True, help="samples.npy or .csv")
    sample.add_argument("--seed", type=int, default=0)

    diagnose = commands.add_parser(
        "diagnose",
        help="calibration checks (SBC, coverage, TARP) with figures",
        description="Draw parameters from the task's prior, simulate an observation from "
        "each, and check the posterior's calibration on them: SBC ranks, highest-density "
        "coverage, TARP and -log q(θ*). Writes calibration.json and the figures.",
    )
    diagnose.add_argument("posterior", type=Path, help="a .fmpe file")
    diagnose.add_argument("--task", help="the task (default: the one the file was trained on)")
    diagnose.add_argument("--observations", type=positive_int, default=200)
    diagnose.add_argument("--samples", type=positive_int, default=1000, help="per observation")
    diagnose.add_argument("--out", type=Path, help="default: <posterior>-diagnostics/")
    diagnose.add_argument("--seed", type=int, default=0)
    diagnose.add_argument(
        "--lc2st",
        type=positive_int,
        nargs="+",
        metavar="OBSERVATION",
        help="also the local C2ST at these observations of the task (a figure and a p-value each)",
    )
    diagnose.add_argument(
        "--lc2st-pairs", type=positive_int, default=2000, help="calibration simulations of L-C2ST"
    )
    diagnose.add_argument("--quiet", action="store_true", help="no progress bars")

    sweep = commands.add_parser(
        "sweep",
        help="choose a task's hyperparameters by validation loss",
        description="Search a grid of card settings (the FMPE paper's Table 2, trimmed) for "
        "one task and budget: every configuration trains on the benchmark's simulations and "
        "is scored by its validation loss; reference posteriors and observations are never "
        "read. Rows go to a resumable CSV; --write-card puts the chosen configuration into "
        "the task's card as a generated section. TASK 'defaults' trains nothing: it picks "
        "one configuration for every sbibm task from their finished searches (the best mean "
        "rank per stage), for the base card.",
    )
    sweep.add_argument("task", metavar="TASK", help="a task, or 'defaults' for the base card")
    sweep.add_argument("--budget", type=positive_int, required=True)
    sweep.add_argument("--estimator", default="fmpe", help="fmpe (default) or npe")
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--results", type=Path, default=SWEEP, help="the CSV of the search")
    sweep.add_argument("--write-card", action="store_true", help="write the choice into the card")
    sweep.add_argument(
        "--from-budget",
        type=positive_int,
        metavar="S",
        help="train nothing: take the finished search at budget S as the choice for --budget "
        "(for budgets too costly to search here)",
    )
    sweep.add_argument(
        "--capacity",
        action="store_true",
        help="fmpe only: after the grid, a stage of deeper and wider networks and three times "
        "the epochs, beside the choice so far",
    )
    sweep.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    sweep.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_cards(sweep)
    add_stop_after(sweep, "the configuration")

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


def _add_cards(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cards",
        type=Path,
        metavar="FOLDER",
        help="read the task cards from FOLDER (defaults.toml and one TASK.toml each) instead "
        "of the shipped ones",
    )


def _cards(args: argparse.Namespace):
    """The CardStore of --cards, or None for the shipped cards."""
    from fmpe.benchmark.cards import CardStore

    if args.cards is None:
        return None
    if not (args.cards / "defaults.toml").is_file():
        raise ValueError(f"--cards {args.cards}: expected a folder with defaults.toml in it")
    return CardStore(args.cards)


def _benchmark(args: argparse.Namespace) -> None:
    from fmpe.benchmark.cards import load_card
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
    cards = _cards(args)
    for name in tasks:
        if args.variant is not None and args.variant not in load_card(name, cards).variants(
            args.estimator
        ):
            raise ValueError(f"the card of {name} declares no variant {args.variant!r}")
        count = get_task(name).num_observations
        outside = [o for o in args.observations if o > count]
        if outside:
            raise ValueError(f"task {name} has observations 1-{count}, not {outside}")
    _writable_file(args.results, "--results")
    _writable_folder(args.runs, "--runs")
    _check_device(args.device)

    from fmpe.benchmark import run
    from fmpe.benchmark.deadline import Deadline
    from fmpe.benchmark.results import KEY, TRAILING

    RESULT_COLUMNS = {*KEY, *TRAILING}

    deadline = Deadline.after(args.stop_after)
    rows = run(
        tasks,
        budgets,
        args.observations,
        estimator=args.estimator,
        variant=args.variant,
        base_only=args.defaults,
        seed=args.seed,
        device=args.device,
        results=args.results,
        run_dir=args.runs,
        num_samples=args.samples,
        show_progress=not args.quiet,
        deadline=deadline,
        scoring_workers=args.scoring_workers,
        rounds=args.rounds,
        cards=cards,
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
    if deadline.left:
        print(deadline.summary(args.command_line))


def _check_device(device: str) -> None:
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")


def _train(args: argparse.Namespace) -> None:
    from fmpe.benchmark.cards import load_card
    from fmpe.benchmark.experiment import Run
    from fmpe.benchmark.measure import resolve_device
    from fmpe.estimators import get_estimator

    get_estimator(args.estimator)
    cards = _cards(args)
    task_name = load_card(args.task, cards).name
    if args.output.suffix != ".fmpe":
        raise ValueError(f"-o {args.output}: name a .fmpe file")
    _writable_file(args.output, "-o")
    _check_device(args.device)
    run = Run(task_name, args.budget, args.estimator, seed=args.seed)
    posterior = run.fit(
        resolve_device(args.device),
        checkpoint_dir=args.checkpoints,
        show_progress=not args.quiet,
        cards=cards,
    )
    posterior.save(args.output)
    print(f"trained {args.estimator} on {task_name} with {args.budget} simulations in "
          f"{posterior.training_record.seconds:.0f} s; wrote {args.output}")  # fmt: skip


def _posterior_and_task(path: Path, task_name: str | None):
    """The posterior at `path`, with the prior of its task (`task_name`, or the one the file
    names), and the task."""
    import fmpe
    from fmpe.tasks import get_task

    name = task_name or fmpe.load(path).metadata.get("task")
    if name is None:
        raise ValueError(f"{path} does not say which task it was trained for; pass --task")
    task = get_task(name)
    return fmpe.load(path, prior=task.prior), task


def _read_observations(path: Path):
    import numpy as np
    import torch

    if path.suffix == ".npy":
        values = np.load(path, allow_pickle=False)
    elif path.suffix == ".csv":
        values = np.loadtxt(path, delimiter=",", ndmin=2)
        values = values[0] if len(values) == 1 else values
    else:
        raise ValueError(f"--x {path}: expected a .npy or .csv file")
    return torch.as_tensor(values, dtype=torch.float32)


def _sample(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    import fmpe

    if args.output.suffix not in (".npy", ".csv"):
        raise ValueError(f"-o {args.output}: expected a .npy or .csv file")
    _writable_file(args.output, "-o")
    if args.x is not None:
        if args.task is not None:
            raise ValueError("--task goes with --observation, not with --x")
        posterior = fmpe.load(args.posterior)
        x = _read_observations(args.x)
    else:
        posterior, task = _posterior_and_task(args.posterior, args.task)
        x = task.observation(args.observation)
    torch.manual_seed(args.seed)
    samples = posterior.sample(args.num_samples, x).numpy()
    if args.output.suffix == ".npy":
        np.save(args.output, samples)
    else:
        d = samples.shape[-1]
        rows = samples.reshape(len(samples), -1, d)
        index = np.broadcast_to(np.arange(rows.shape[1])[None, :, None], (*rows.shape[:2], 1))
        table = np.concatenate([index, rows], axis=-1).reshape(-1, d + 1)
        header = "observation," + ",".join(f"theta_{i + 1}" for i in range(d))
        np.savetxt(args.output, table, delimiter=",", header=header, comments="", fmt="%.7g")
    print(f"wrote {args.num_samples} samples of shape {samples.shape[1:]} to {args.output}")


def _diagnose(args: argparse.Namespace) -> None:
    import json

    import torch

    from fmpe.benchmark.measure import provenance
    from fmpe.diagnostics.calibration import calibrate
    from fmpe.diagnostics.lc2st import lc2st
    from fmpe.plot import calibration_figures, lc2st_plot

    posterior, task = _posterior_and_task(args.posterior, args.task)
    out = args.out or args.posterior.with_name(args.posterior.stem + "-diagnostics")
    _writable_folder(out, "--out")
    torch.manual_seed(args.seed)
    thetas = task.prior.sample((args.observations,))
    xs = task.simulate(thetas)
    kept = torch.isfinite(xs.flatten(1)).all(1)
    calibration = calibrate(
        posterior, thetas[kept], xs[kept], args.samples, seed=args.seed,
        show_progress=not args.quiet,
    )  # fmt: skip
    figures = calibration_figures(calibration)
    numbers = {**calibration.numbers, **provenance(posterior.device)}
    if args.lc2st:
        thetas = task.prior.sample((args.lc2st_pairs,))
        xs = task.simulate(thetas)
        kept = torch.isfinite(xs.flatten(1)).all(1)
        numbers["lc2st_pvalues"] = {}
        for observation in args.lc2st:
            result = lc2st(
                posterior, task.observation(observation), thetas[kept], xs[kept], seed=args.seed
            )
            numbers["lc2st_pvalues"][observation] = result.p_value
            figures[f"lc2st_{observation}.png"] = lc2st_plot(result, f"observation {observation}")
            print(f"L-C2ST at observation {observation}: p-value {result.p_value:.3f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(numbers, indent=2))
    print(f"wrote {out / 'calibration.json'}")
    for name, figure in figures.items():
        figure.savefig(out / name, dpi=120, bbox_inches="tight")
        print(f"wrote {out / name}")
    print(
        f"SBC KS p-values {', '.join(f'{p:.2f}' for p in numbers['sbc_ks_pvalues'])}; "
        f"coverage KS p-value {numbers['coverage']['ks_pvalue']:.2f}; "
        f"TARP ATC {numbers['tarp_atc']:+.3f} (p {numbers['tarp_ks_pvalue']:.2f})"
    )


def _sweep(args: argparse.Namespace) -> None:
    from fmpe.benchmark.cards import BASE_CARD
    from fmpe.benchmark.deadline import Deadline
    from fmpe.benchmark.measure import resolve_device
    from fmpe.benchmark.sweep import (
        choose_defaults,
        search_choice,
        sweep,
        write_card_section,
        write_table,
    )
    from fmpe.estimators import get_estimator
    from fmpe.tasks import available_tasks

    if args.task not in [BASE_CARD, *available_tasks()]:
        raise ValueError(
            f"unknown task {args.task!r}; known: {', '.join(available_tasks())}, or "
            f"{BASE_CARD!r} for the base card"
        )
    get_estimator(args.estimator)
    _writable_file(args.results, "--results")
    _check_device(args.device)
    if args.from_budget is not None and args.from_budget > args.budget:
        raise ValueError(
            f"--from-budget carries a choice upwards: expected at most --budget "
            f"{args.budget}, got {args.from_budget}"
        )
    searched_at = args.from_budget or args.budget
    deadline = Deadline.after(args.stop_after)
    cards = _cards(args)
    if args.task == BASE_CARD:
        chosen, _ = choose_defaults(args.results, searched_at, args.estimator, cards)
    elif args.from_budget is not None:
        chosen = search_choice(args.results, args.task, searched_at, args.estimator, args.capacity)
    else:
        chosen = sweep(
            args.task,
            args.budget,
            estimator=args.estimator,
            seed=args.seed,
            results=args.results,
            show_progress=not args.quiet,
            device=resolve_device(args.device),
            deadline=deadline,
            capacity=args.capacity,
            cards=cards,
        )
    print(f"wrote {write_table(args.results)}")
    if chosen is None:
        print(deadline.summary(args.command_line))
        return
    print(f"chosen for {args.task} at {args.budget} ({args.estimator}): {chosen}")
    if args.write_card:
        path = write_card_section(
            args.task, args.budget, args.estimator, chosen, args.results, searched_at,
            args.capacity, cards,
        )  # fmt: skip
        print(f"wrote the generated section into {path}")


def _report(args: argparse.Namespace) -> None:
    from fmpe.benchmark.report import write_report

    if not args.results.is_file():
        raise ValueError(f"no results file at {args.results}")
    for path in write_report(args.results, args.out or args.results.parent):
        print(f"wrote {path}")


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "train": _train,
    "sample": _sample,
    "diagnose": _diagnose,
    "benchmark": _benchmark,
    "sweep": _sweep,
    "report": _report,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    args.command_line = shlex.join(["fmpe", *argv])
    from fmpe.benchmark.cards import CardError

    try:
        COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, CardError) as error:
        fail(f"fmpe {args.command}", " ".join(str(error).split()) or repr(error))


if __name__ == "__main__":
    main()
