"""The benchmark report: every metric of every estimator, beside the published NPE, NLE and
NRE numbers where sbibm has them."""

import csv
import statistics
from collections import defaultdict
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path

from fmpe.benchmark.results import KEY, TRAILING, ResultsStore

PUBLISHED_ALGORITHMS = ("NPE", "NLE", "NRE")
PAPER_COLUMN = "FMPE paper (≈, read from a figure)"
TOLERANCE = 0.02  # an estimator "matches" NPE when its mean C2ST is at most this much higher

Cell = tuple[str, int, str]
"""(task, budget, estimator)"""


def _c2st_file(name: str) -> dict[tuple[str, str, int], float]:
    text = (files("fmpe.benchmark") / name).read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {(r["task"], r["algorithm"], int(r["budget"])): float(r["c2st"]) for r in rows}


def published_c2st() -> dict[tuple[str, str, int], float]:
    """(task, algorithm, budget) -> mean C2ST from the sbibm paper's results table."""
    return _c2st_file("sbibm_published_c2st.csv")


def fmpe_paper_c2st() -> dict[tuple[str, int], float]:
    """(task, budget) -> the FMPE paper's mean C2ST, read from a figure (about ±0.02)."""
    return {(t, b): c for (t, _, b), c in _c2st_file("fmpe_paper_c2st.csv").items()}


def metric_names(rows: list[dict]) -> list[str]:
    """The metric columns the rows have values for, in the file's order."""
    names = dict.fromkeys(k for row in rows for k, v in row.items() if v != "")
    return [n for n in names if n not in KEY and n not in TRAILING]


def summarize(rows: list[dict]) -> dict[Cell, dict]:
    """Per (task, budget, estimator): mean, std and count of every metric over all rows, the
    std of the per-seed mean C2ST and the number of seeds, and the training time of each
    posterior."""
    groups: dict[Cell, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["task"], int(row["budget"]), row["estimator"])].append(row)
    metrics = metric_names(rows)
    summary = {}
    for cell, members in sorted(groups.items()):
        values = {}
        for name in metrics:
            scores = [float(r[name]) for r in members if r.get(name, "") != ""]
            if scores:
                std = statistics.stdev(scores) if len(scores) > 1 else 0.0
                values[name] = (statistics.fmean(scores), std, len(scores))
        per_seed: dict[str, list[float]] = defaultdict(list)
        for r in members:
            if r.get("c2st", "") != "":
                per_seed[r["seed"]].append(float(r["c2st"]))
        seed_means = [statistics.fmean(v) for v in per_seed.values()]
        summary[cell] = {
            "metrics": values,
            "seeds": (
                statistics.stdev(seed_means) if len(seed_means) > 1 else 0.0,
                len(seed_means),
            ),
            "train_seconds": max(float(r["train_seconds"]) for r in members),
        }
    return summary


def machines_line(rows: Iterable[dict]) -> str:
    """'Machines: a; b': every machine recorded in `rows` ('–' where none is)."""
    machines = sorted({r["machine"] for r in rows if r.get("machine")})
    return "Machines: " + ("; ".join(machines) or "–")


def run_span(rows: list[dict]) -> str:
    """When the first and the last row were written, and the training and sampling time."""
    stamps = sorted(row["finished_at"] for row in rows)
    # Every row of a (task, budget, estimator, seed) repeats its posterior's training time.
    training = {
        (r["task"], r["budget"], r["estimator"], r["seed"]): float(r["train_seconds"]) for r in rows
    }
    sampling = sum(float(r["sample_seconds"]) for r in rows)
    return (
        f"Rows written from {stamps[0]} to {stamps[-1]}. Training took "
        f"{sum(training.values()) / 3600:.1f} h over {len(training)} posteriors and sampling "
        f"{sampling / 60:.0f} min over {len(rows)} rows; scoring (C2ST, MMD) is not timed."
    )


def _verdict(mean: float, npe: float | None) -> str:
    if npe is None:
        return "n/a"
    if mean < npe - TOLERANCE:
        return "better"
    if mean <= npe + TOLERANCE:
        return "on par"
    return f"**misses by {mean - npe:.2f}**"


def _value(stats: tuple[float, float, int] | None, digits: int = 3) -> str:
    if stats is None:
        return "–"
    mean, std, n = stats
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({n})"


def _c2st_value(cell: dict | None) -> str:
    """Mean ± std over every row (observations × seeds) and their count; with several
    training seeds also the std of the per-seed means and the number of seeds."""
    if cell is None or "c2st" not in cell["metrics"]:
        return "–"
    spread, seeds = cell["seeds"]
    return _value(cell["metrics"]["c2st"]) + (
        f"; seeds ± {spread:.3f} ({seeds})" if seeds > 1 else ""
    )


def c2st_table(summary: dict[Cell, dict]) -> str:
    """Mean C2ST per task and budget, a column per estimator of `summary`, beside the
    published numbers."""
    published = published_c2st()
    paper = fmpe_paper_c2st()
    estimators = sorted({e for _, _, e in summary})
    heading = [f"{e} C2ST (mean ± std, n rows)" for e in estimators]
    heading += [*PUBLISHED_ALGORITHMS, PAPER_COLUMN, *(f"{e} vs NPE" for e in estimators)]
    heading += [f"{e} train s" for e in estimators]
    lines = ["| task | budget | " + " | ".join(heading) + " |", "|---" * (2 + len(heading)) + "|"]
    tally = {e: [0, 0, 0] for e in estimators}  # cells, no worse than NPE, better than all
    for task, budget in dict.fromkeys((t, b) for t, b, _ in summary):
        cells = [summary.get((task, budget, e)) for e in estimators]
        stats = [c["metrics"].get("c2st") if c else None for c in cells]
        if all(s is None for s in stats):
            continue
        peers = [published.get((task, a, budget)) for a in PUBLISHED_ALGORITHMS]
        verdicts = [_verdict(s[0], peers[0]) if s else "–" for s in stats]
        seconds = [f"{c['train_seconds']:.0f}" if c else "–" for c in cells]
        values = [_c2st_value(c) for c in cells]
        values += [f"{p:.2f}" if p is not None else "–" for p in peers]
        values.append(f"≈{paper[(task, budget)]:.2f}" if (task, budget) in paper else "–")
        lines.append(
            f"| {task} | {budget:.0e} | " + " | ".join([*values, *verdicts, *seconds]) + " |"
        )
        known = [p for p in peers if p is not None]
        for estimator, s in zip(estimators, stats, strict=True):
            if s is not None and peers[0] is not None:
                tally[estimator][0] += 1
                tally[estimator][1] += s[0] <= peers[0] + TOLERANCE
                tally[estimator][2] += s[0] < min(known) - TOLERANCE
    lines.append("")
    lines += [
        f"{e}: {cells} cells; {no_worse} no worse than published NPE (at most "
        f"{TOLERANCE} above), {better} better than the best of NPE, NLE and NRE (more "
        f"than {TOLERANCE} below)."
        for e, (cells, no_worse, better) in tally.items()
    ]
    return "\n".join(lines) + "\n"


def metrics_table(summary: dict[Cell, dict], exclude: tuple[str, ...] = ("c2st",)) -> str:
    """Every other metric, mean ± std over observations, a row per task, budget, estimator."""
    names = list(dict.fromkeys(n for s in summary.values() for n in s["metrics"]))
    names = [n for n in names if n not in exclude]
    if not names:
        return ""
    lines = [
        "| task | budget | estimator | " + " | ".join(names) + " |",
        "|---" * (3 + len(names)) + "|",
    ]
    for (task, budget, estimator), s in summary.items():
        values = [_value(s["metrics"].get(n), 4 if n == "mmd" else 3) for n in names]
        lines.append(f"| {task} | {budget:.0e} | {estimator} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def figure(summary: dict[Cell, dict], path: Path) -> None:
    """One panel per task: C2ST against budget for each estimator and the published ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    published = published_c2st()
    cells = {c: s for c, s in summary.items() if "c2st" in s["metrics"]}
    tasks = sorted({task for task, _, _ in cells})
    estimators = sorted({e for _, _, e in cells})
    columns = min(5, len(tasks))
    rows = -(-len(tasks) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 2.6 * rows), squeeze=False)
    markers = ("s", "D", "^", "v")
    for ax, task in zip(axes.flat, tasks):
        for algorithm in PUBLISHED_ALGORITHMS:
            points = [
                (b, published[(task, algorithm, b)])
                for b in (10**3, 10**4, 10**5)
                if (task, algorithm, b) in published
            ]
            if points:
                ax.plot(*zip(*points), marker="o", alpha=0.5, label=f"{algorithm} (published)")
        for k, estimator in enumerate(estimators):
            budgets = sorted(b for t, b, e in cells if t == task and e == estimator)
            stats = [cells[(task, b, estimator)]["metrics"]["c2st"] for b in budgets]
            ax.errorbar(
                budgets,
                [s[0] for s in stats],
                yerr=[s[1] for s in stats],
                marker=markers[k % len(markers)],
                color="black" if estimator == "fmpe" else None,
                label=estimator,
            )
        ax.set_xscale("log")
        ax.set_ylim(0.45, 1.02)
        ax.set_title(task, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.supxlabel("simulation budget")
    fig.supylabel("C2ST (0.5 is best)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


COLUMNS = """What the columns saw when their settings were chosen:

- `fmpe`, `npe`: each task's card (`tasks/`). Where a card has a generated `selected` section,
  `fmpe sweep` chose it by validation loss on the training simulations; the hand-written
  settings that remain were chosen earlier by C2ST on these observations (docs/method.md).
- `fmpe@defaults`, `npe@defaults`: the base card's one configuration per budget for every
  task (`fmpe benchmark --defaults`), chosen by `fmpe sweep defaults` from the tasks'
  validation losses, never from a reference posterior.
- `+poet`: the cards' POET variant on top.
- `@roundsR`: a posterior per observation, trained in R truncated sequential rounds that share
  the budget (`fmpe benchmark --rounds R`, docs/sequential.md); the others are amortized.

A C2ST cell is the mean ± std over its rows (observations × training seeds) with their count;
with several seeds, also the std of the per-seed means and the number of seeds. The FMPE
paper (Dax et al., 2023) gives its sbibm numbers only as a figure: its column is read off a
plot that reproduces them (Sharrock et al., 2024, App. F), about ±0.02, and has no 1e3 values.
"""

TABLES = {
    "Selected: each task's card": lambda label: "@defaults" not in label,
    "Defaults: one configuration for every task": lambda label: "@defaults" in label,
}
"""The report's C2ST tables: a title and which estimator labels go into it."""


def c2st_tables(summary: dict[Cell, dict]) -> str:
    """One C2ST table (`c2st_table`) per entry of TABLES that has rows, each under its title."""
    parts = []
    for title, belongs in TABLES.items():
        mine = {cell: s for cell, s in summary.items() if belongs(cell[2])}
        if mine:
            parts.append(f"## {title}\n\n" + c2st_table(mine))
    return "\n".join(parts)


def write_report(results: Path, out_dir: Path, name: str | None = None) -> tuple[Path, Path]:
    """Writes `<name>_table.md` and `<name>_c2st.png` next to each other in out_dir; the
    name is the results file's (sbibm.csv: sbibm_table.md) unless given."""
    name = name or results.stem
    rows = ResultsStore(results).rows()
    if not rows:
        raise ValueError(f"{results} holds no benchmark rows")
    summary = summarize(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    others = metrics_table(summary)
    table = out_dir / f"{name}_table.md"
    table.write_text(
        f"# fmpe on sbibm\n\nFrom `{results.name}`; published numbers: sbibm's main_paper.csv "
        "(Lueckmann et al., 2021).\n\n"
        + COLUMNS
        + "\n"
        + c2st_tables(summary)
        + ("\n## Other metrics\n\n" + others if others else "")
        + "\n"
        + machines_line(rows)
        + "\n\n"
        + run_span(rows)
        + "\n"
    )
    plot = out_dir / f"{name}_c2st.png"
    figure(summary, plot)
    return table, plot
