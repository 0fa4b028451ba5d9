"""Fixed-step sampling against fmpe's default adaptive solver, on every sbibm task.

    uv run python benchmarks/fast_sampling.py --stop-after 1h     # resumable
    uv run python benchmarks/fast_sampling.py --budget 1000       # the same at another budget
    uv run python benchmarks/fast_sampling.py --tasks sir,slcp    # these tasks, in this order
    uv run python benchmarks/fast_sampling.py gw --stop-after 20m  # the check beyond sbibm
    uv run python benchmarks/fast_sampling.py error --budget 1000  # distance from the exact solve
    uv run python benchmarks/fast_sampling.py report              # fast_sampling.md only

`benchmarks/solvers.py` found RK4 with 6 steps on the late time grid as accurate as the
default solver on one task and one observation (two_moons, observation 1), with a quarter of
the network evaluations. This checks it where it would have to hold to become the default:
the `fmpe@defaults` posterior of each sbibm task at 1e4 simulations, or at --budget (the
benchmark's own under --runs, trained there where it is missing), observations 1-3, 10,000
samples per setting, C2ST against sbibm's reference, and the network evaluations of the call.
No times: on one posterior the evaluations are the cost, and `solvers.py` and `cpu_peers.py`
time them.

The fallback, RK4 with 10 late steps, is scored only on a task where 6 steps miss the bound
(their mean C2ST over the observations against the default's): where 6 steps hold, the
fallback would not be chosen whatever it scored. There the ODE solved to 1e-7 is scored as
well: the C2ST of the trained flow itself, which tells a sampler's error from the flow's.

Rows go to fast_sampling.csv, one per task, observation and setting; a run skips the rows
there, and with --stop-after finishes the row in progress, starts none that is not expected
to fit (by the durations of the task's rows so far, else of all rows) and prints the command
that continues.
fast_sampling.md gives per task each setting's mean C2ST and its difference from the
default's, and on how many tasks each setting is within 0.005 of it (issue #15's bound), and
on how many at most 0.005 above it (the bound read one-sided: a lower C2ST is more accurate).

The `gw` step checks the candidate beyond sbibm, on the narrow nine-dimensional posteriors of
the gravitational-wave task: `benchmarks/gw.py`'s FMPE posterior (1e5 waveforms, found under
--runs/gw, never trained here), injections 1-3. gw has no reference samples, so both the
candidate and the default with another seed are scored by C2ST against 10,000 samples of the
default; the default's own score is the test's noise floor, and the candidate holds where it
is at most 0.005 above it. Rows go to fast_sampling_gw.csv, resumable in the same way.

The `error` step measures each setting against the ODE's solution instead of a reference
posterior: from the same 2,000 base draws, the root mean square of the difference between its
samples and those of the ODE solved to 1e-7, per parameter in units of the latter's standard
deviation, and the ratio of the standard deviations. It needs no C2ST and takes seconds a
task. Rows go to fast_sampling_error.csv, resumable in the same way.
"""

import argparse
import shlex
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from fmpe.benchmark import RowLog, Run, markdown_table, provenance, resolve_device
from fmpe.benchmark.deadline import Deadline, median_gap_seconds
from fmpe.benchmark.report import machines_line
from fmpe.benchmark.sweep import sbibm_tasks
from fmpe.cli import add_stop_after
from fmpe.metrics import c2st
from fmpe.tasks import get_task

RESULTS = Path(__file__).parent / "results"
BUDGET = 10_000
OBSERVATIONS = (1, 2, 3)
NUM_SAMPLES = 10_000
BOUND = 0.005  # largest C2ST difference from the default that counts as unchanged accuracy
# fmpe's sampling default until 0.5.0 (adaptive; the rows call it "default"), the candidate,
# which 0.6.0 made the default, and the fallback where the candidate misses.
SETTINGS = {
    "default": {"method": "dopri5_per_row", "time_grid": "uniform"},
    "rk4, 6 late steps": {"method": "rk4", "steps": 6, "time_grid": "late"},
    "rk4, 10 late steps": {"method": "rk4", "steps": 10, "time_grid": "late"},
    # The trained flow's own samples, as nearly as float32 allows: the `error` step's yardstick.
    "ODE to 1e-7": {"method": "dopri5_per_row", "time_grid": "uniform", "rtol": 1e-7, "atol": 1e-7},
}
DEFAULT, CANDIDATE, FALLBACK, EXACT = SETTINGS
FIELDS = ("task", "budget", "observation", "setting", "c2st", "evaluations", "threads")
KEY = ("task", "budget", "observation", "setting")
GW_BUDGET = 100_000  # benchmarks/gw.py's budget, whose FMPE posterior the gw step checks
GW_INJECTIONS = (1, 2, 3)
REPLICA = "default, another seed"  # scored against the default: the C2ST's noise floor
GW_FIELDS = ("injection", "setting", "c2st", "evaluations", "threads")
GW_KEY = ("injection", "setting")
ERROR_SAMPLES = 2_000
ERROR_FIELDS = ("task", "budget", "observation", "setting", "rms_error", "sd_ratio", "threads")


def run_checks(
    path: Path,
    runs: Path,
    threads: int,
    deadline: Deadline,
    budget: int = BUDGET,
    tasks: list[str] | None = None,
) -> None:
    """Samples and scores every (task, observation, setting) at `budget` due and not yet in
    `path`, for `tasks` in their order (default: every sbibm task)."""
    log = RowLog(path, FIELDS, KEY)
    for task_name in tasks or sbibm_tasks():
        task, posterior = get_task(task_name), None
        for observation, setting in units(log, task_name, budget):
            row = dict(task=task_name, budget=budget, observation=observation, setting=setting)
            done = log.completed()
            if log.key_of(row) in done:
                continue
            rows = list(done.values())
            mine = [r for r in rows if r["task"] == task_name and int(r["budget"]) == budget]
            # A task's first rows are expected to take as long as the other tasks' rows.
            expected = median_gap_seconds(r["finished_at"] for r in mine)
            if expected is None:
                expected = median_gap_seconds(r["finished_at"] for r in rows)
            if not deadline.allows(f"{task_name} {budget} {observation} {setting}", expected):
                continue
            if posterior is None:
                run = Run(task_name, budget, defaults=True)
                posterior, _ = run.train(runs, resolve_device("cpu"), show_progress=False)
            row |= score(posterior, task, observation, setting, threads)
            print({k: row[k] for k in FIELDS}, flush=True)
            log.add(row)


def run_gw_checks(path: Path, runs: Path, threads: int, deadline: Deadline) -> None:
    """Scores the default with another seed and the candidate against the default's samples,
    on every gw injection due and not yet in `path`."""
    run = Run("gw", GW_BUDGET)
    saved = run.posterior_path(runs / "gw")
    if not saved.exists():
        raise SystemExit(
            f"no gw posterior at {saved}: train it first with "
            f"`uv run python benchmarks/gw.py --score-only --runs {runs / 'gw'}`"
        )
    log = RowLog(path, GW_FIELDS, GW_KEY)
    task, posterior = get_task("gw"), None
    for injection in GW_INJECTIONS:
        default_samples = None
        for setting in (REPLICA, CANDIDATE):
            row = {"injection": injection, "setting": setting}
            done = log.completed()
            if log.key_of(row) in done:
                continue
            rows = list(done.values())
            expected = median_gap_seconds(r["finished_at"] for r in rows)
            if not deadline.allows(f"gw {injection} {setting}", expected):
                continue
            if posterior is None:
                posterior, _ = run.train(runs / "gw", resolve_device("cpu"), show_progress=False)
            x = task.observation(injection)
            if default_samples is None:
                torch.manual_seed(injection)
                default_samples = posterior.sample(NUM_SAMPLES, x, **SETTINGS[DEFAULT])
            torch.manual_seed(10_000 + injection)
            options = SETTINGS[DEFAULT if setting == REPLICA else setting]
            samples, cost = posterior.sample(NUM_SAMPLES, x, return_cost=True, **options)
            row |= {
                "c2st": f"{c2st(default_samples, samples):.4f}",
                "evaluations": cost.evaluations,
                "threads": threads,
                **provenance(),
            }
            print({k: row[k] for k in GW_FIELDS}, flush=True)
            log.add(row)


def run_error_checks(
    path: Path, runs: Path, threads: int, deadline: Deadline, budget: int, tasks: list[str] | None
) -> None:
    """Measures every setting against the ODE's solution on each (task, observation) at
    `budget` not yet in `path`, for `tasks` in their order (default: every sbibm task)."""
    log = RowLog(path, ERROR_FIELDS, KEY)
    compared = [s for s in SETTINGS if s != EXACT]
    for task_name in tasks or sbibm_tasks():
        task, posterior = get_task(task_name), None
        for observation in OBSERVATIONS:
            done = log.completed()
            due = [
                s
                for s in compared
                if log.key_of(
                    dict(task=task_name, budget=budget, observation=observation, setting=s)
                )
                not in done
            ]
            # A unit writes its rows together: time units by the last row of each.
            last_rows = {(r["task"], r["budget"], r["observation"]): r for r in done.values()}
            expected = median_gap_seconds(r["finished_at"] for r in last_rows.values())
            if not due or not deadline.allows(f"{task_name} {budget} {observation}", expected):
                continue
            if posterior is None:
                run = Run(task_name, budget, defaults=True)
                posterior, _ = run.train(runs, resolve_device("cpu"), show_progress=False)
            x = task.observation(observation)
            for setting, (rms_error, sd_ratio) in solver_errors(posterior, x, due, observation):
                row = dict(task=task_name, budget=budget, observation=observation, setting=setting)
                row |= {
                    "rms_error": f"{rms_error:.2e}",
                    "sd_ratio": f"{sd_ratio:.4f}",
                    "threads": threads,
                    **provenance(),
                }
                print({k: row[k] for k in ERROR_FIELDS}, flush=True)
                log.add(row)


def solver_errors(
    posterior, x: torch.Tensor, settings: list[str], seed: int
) -> Iterator[tuple[str, tuple[float, float]]]:
    """Per setting, from the same base draws as the ODE solved to 1e-7: the root mean square
    of the samples' difference from its samples, per parameter in units of their standard
    deviation, and the mean ratio of the standard deviations. Samples are kept inside and
    outside the prior alike, so that the i-th of every setting starts from the same draw."""

    def draw(setting: str) -> torch.Tensor:
        torch.manual_seed(seed)
        options = SETTINGS[setting]
        return posterior.sample(ERROR_SAMPLES, x, reject_outside_prior=False, **options)

    exact = draw(EXACT)
    sd = exact.std(0)
    for setting in settings:
        samples = draw(setting)
        rms_error = ((samples - exact) / sd).pow(2).mean().sqrt().item()
        yield setting, (rms_error, (samples.std(0) / sd).mean().item())


def units(log: RowLog, task: str, budget: int) -> Iterator[tuple[int, str]]:
    """A task's (observation, setting) pairs in order: the default and the candidate on every
    observation, then the fallback's and the ODE's solution's if the candidate misses (decided
    from the rows then)."""
    yield from ((o, s) for o in OBSERVATIONS for s in (DEFAULT, CANDIDATE))
    if candidate_misses([r for r in log.rows() if int(r["budget"]) == budget], task):
        yield from ((o, s) for s in (FALLBACK, EXACT) for o in OBSERVATIONS)


def score(posterior, task, observation: int, setting: str, threads: int) -> dict:
    """One row's measurements: C2ST of 10,000 samples and the call's network evaluations."""
    torch.manual_seed(observation)
    samples, cost = posterior.sample(
        NUM_SAMPLES, task.observation(observation), return_cost=True, **SETTINGS[setting]
    )
    return {
        "c2st": f"{c2st(task.reference_samples(observation), samples):.4f}",
        "evaluations": cost.evaluations,
        "threads": threads,
        **provenance(),
    }


def mean_c2st(rows: list[dict], task: str, setting: str) -> float | None:
    """The setting's mean C2ST over the task's observations in `rows` (one budget's); None
    until it has them all."""
    scores = {
        int(r["observation"]): float(r["c2st"])
        for r in rows
        if r["task"] == task and r["setting"] == setting
    }
    if set(scores) != set(OBSERVATIONS):
        return None
    return statistics.fmean(scores.values())


def candidate_misses(rows: list[dict], task: str) -> bool:
    """Whether the candidate's mean C2ST is further than the bound from the default's (False
    until both have every observation)."""
    default, candidate = mean_c2st(rows, task, DEFAULT), mean_c2st(rows, task, CANDIDATE)
    return default is not None and candidate is not None and not within_bound(candidate, default)


def within_bound(c2st_mean: float, default_mean: float) -> bool:
    """Whether a setting's mean C2ST counts as the default's accuracy (issue #15's bound)."""
    return abs(c2st_mean - default_mean) <= BOUND


def no_worse(c2st_mean: float, default_mean: float) -> bool:
    """Whether a setting's mean C2ST is at most the bound above the default's: the bound's
    one-sided reading, which lets a setting be more accurate than the default."""
    return c2st_mean - default_mean <= BOUND


def write_report(path: Path, out: Path) -> None:
    """fast_sampling.md from the rows at `path`: per task and budget, each setting's mean C2ST
    over the observations that the default and the candidate both have, its difference from
    the default, and its evaluations (the fallback's where it has those observations)."""
    rows = RowLog(path).rows() if path.exists() else []
    scores: dict[tuple[str, int, str], dict[str, tuple[float, int]]] = {}
    for r in rows:
        cell = (float(r["c2st"]), int(r["evaluations"]))
        key = (r["task"], int(r["budget"]), r["observation"])
        scores.setdefault(key, {})[r["setting"]] = cell
    paired = {k: v for k, v in scores.items() if {DEFAULT, CANDIDATE} <= set(v)}
    lines = [
        "# Fixed-step sampling against the default solver, on every sbibm task",
        "",
        "Produced by `uv run python benchmarks/fast_sampling.py`; see its docstring. Each task's",
        f"`fmpe@defaults` posterior at the budget listed, {NUM_SAMPLES:,} samples per",
        "setting, C2ST against sbibm's reference (mean over the observations listed) and network",
        "evaluations per call (mean); in brackets, the difference from the default's C2ST. The",
        "fallback and the ODE solved to 1e-7 (the trained flow's own C2ST) are scored only where",
        f"the candidate misses by more than {BOUND} (—: not scored).",
        "`default` is the adaptive solver at 1e-3 (Dormand–Prince per row), fmpe's sampling",
        "default until 0.5.0; 0.6.0 made the candidate the default on the strength of this table.",
        "",
    ]
    table = []
    within: dict[tuple[str, int], list[bool]] = {}
    below: dict[tuple[str, int], list[bool]] = {}
    for task, budget in sorted({(t, b) for t, b, _ in paired}, key=lambda k: (k[1], k[0])):
        mine = [v for (t, b, _), v in paired.items() if (t, b) == (task, budget)]
        observed = sorted(o for t, b, o in paired if (t, b) == (task, budget))
        default = statistics.fmean(v[DEFAULT][0] for v in mine)
        row = {"task": task, "budget": f"{budget:.0e}", "observations": " ".join(observed)}
        for n in SETTINGS:
            row[f"{n}: C2ST"] = row[f"{n}: evaluations"] = ""  # not scored
            if not all(n in v for v in mine):
                continue
            mean = statistics.fmean(v[n][0] for v in mine)
            evaluations = statistics.fmean(v[n][1] for v in mine)
            difference = "" if n == DEFAULT else f" ({mean - default:+.3f})"
            row[f"{n}: C2ST"] = f"{mean:.3f}{difference}"
            row[f"{n}: evaluations"] = f"{evaluations:.0f}"
            if n != DEFAULT:
                within.setdefault((n, budget), []).append(within_bound(mean, default))
                below.setdefault((n, budget), []).append(no_worse(mean, default))
        table.append(row)
    fields = ["task", "budget", "observations"]
    fields += [f"{n}: {column}" for n in SETTINGS for column in ("C2ST", "evaluations")]
    lines += [*markdown_table(table, fields), ""]
    order = list(SETTINGS)
    for (name, budget), hits in sorted(
        within.items(), key=lambda k: (k[0][1], order.index(k[0][0]))
    ):
        lines.append(
            f"- {name} at {budget:.0e}: within {BOUND} C2ST of the default on {sum(hits)} of "
            f"the {len(hits)} tasks scored; at most {BOUND} above it (more accurate allowed) "
            f"on {sum(below[name, budget])}."
        )
    lines += ["", machines_line(rows)]
    error_path = path.with_name("fast_sampling_error.csv")
    if error_path.exists():
        lines += ["", *error_report(RowLog(error_path).rows())]
    gw_path = path.with_name("fast_sampling_gw.csv")
    if gw_path.exists():
        lines += ["", *gw_report(RowLog(gw_path).rows())]
    (out / "fast_sampling.md").write_text("\n".join(lines) + "\n")


def error_report(rows: list[dict]) -> list[str]:
    """The solver-error section of fast_sampling.md: per task and budget, each setting's mean
    over the observations of its RMS difference from the ODE's solution and of its ratio of
    standard deviations."""
    compared = [s for s in SETTINGS if s != EXACT]
    cells: dict[tuple[str, int], dict[str, list[dict]]] = {}
    for r in rows:
        cells.setdefault((r["task"], int(r["budget"])), {}).setdefault(r["setting"], []).append(r)
    lines = [
        "## Distance from the ODE's solution",
        "",
        f"`fast_sampling.py error`: from the same {ERROR_SAMPLES:,} base draws as the ODE solved",
        "to 1e-7, the root mean square of each setting's difference from its samples, per",
        "parameter in units of their standard deviation (sd), and the ratio of the standard",
        "deviations; means over the observations.",
        "",
    ]
    table = []
    for task, budget in sorted(cells, key=lambda k: (k[1], k[0])):
        row = {"task": task, "budget": f"{budget:.0e}"}
        for s in compared:
            measured = cells[task, budget].get(s, [])
            row[f"{s}: RMS (sd)"] = row[f"{s}: sd ratio"] = ""  # not measured
            if measured:
                rms = statistics.fmean(float(r["rms_error"]) for r in measured)
                ratio = statistics.fmean(float(r["sd_ratio"]) for r in measured)
                row[f"{s}: RMS (sd)"], row[f"{s}: sd ratio"] = f"{rms:.1e}", f"{ratio:.3f}"
        table.append(row)
    fields = ["task", "budget", *(f"{s}: {c}" for s in compared for c in ("RMS (sd)", "sd ratio"))]
    return [*lines, *markdown_table(table, fields), "", machines_line(rows)]


def gw_report(rows: list[dict]) -> list[str]:
    """The gw section of fast_sampling.md: per injection, each setting's C2ST against the
    default's samples and its evaluations; the candidate's mean against the floor's, over the
    injections that have both."""
    cells = {(int(r["injection"]), r["setting"]): r for r in rows}
    paired = sorted(i for i, s in cells if s == REPLICA and (i, CANDIDATE) in cells)
    lines = [
        "## Beyond sbibm: gw",
        "",
        f"`benchmarks/gw.py`'s FMPE posterior ({GW_BUDGET:.0e} waveforms, nine parameters),",
        "injections 1-3. gw has no reference samples, so each setting's",
        f"{NUM_SAMPLES:,} samples are scored by C2ST against {NUM_SAMPLES:,} of the default;",
        "the default with another seed is the noise floor.",
        "",
    ]
    settings = (REPLICA, CANDIDATE)
    table = [
        {"injection": i}
        | {f"{s}: {c}": cells[i, s][c.lower()] for s in settings for c in ("C2ST", "evaluations")}
        for i in paired
    ]
    fields = ["injection", *(f"{s}: {c}" for s in settings for c in ("C2ST", "evaluations"))]
    lines += markdown_table(table, fields)
    if paired:
        floor = statistics.fmean(float(cells[i, REPLICA]["c2st"]) for i in paired)
        candidate = statistics.fmean(float(cells[i, CANDIDATE]["c2st"]) for i in paired)
        verdict = "holds" if no_worse(candidate, floor) else "misses"
        lines += [
            "",
            f"- {CANDIDATE}: mean C2ST {candidate:.4f} against the floor's {floor:.4f} over "
            f"{len(paired)} injection(s), {candidate - floor:+.4f}: it {verdict} the one-sided "
            f"bound ({BOUND}).",
        ]
    return [*lines, "", machines_line(rows)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "step", nargs="?", choices=("check", "gw", "error", "report"), default="check"
    )
    parser.add_argument("--runs", type=Path, default=Path(__file__).parent / "runs")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--budget", type=int, default=BUDGET, help="simulations (sbibm tasks)")
    parser.add_argument(
        "--tasks", type=lambda s: s.split(","), help="sbibm tasks in the order to check them"
    )
    add_stop_after(parser, "the row")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    deadline = Deadline.after(args.stop_after)
    path = args.results / "fast_sampling.csv"
    if args.step == "check":
        run_checks(path, args.runs, args.threads, deadline, args.budget, args.tasks)
    elif args.step == "gw":
        run_gw_checks(path.with_name("fast_sampling_gw.csv"), args.runs, args.threads, deadline)
    elif args.step == "error":
        error_path = path.with_name("fast_sampling_error.csv")
        run_error_checks(error_path, args.runs, args.threads, deadline, args.budget, args.tasks)
    write_report(path, args.results)
    if deadline.left:
        command = sys.argv[1:] if argv is None else argv
        print(deadline.summary("uv run python benchmarks/fast_sampling.py " + shlex.join(command)))


if __name__ == "__main__":
    main()
