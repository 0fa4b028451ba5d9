"""The benchmark report: fmpe's mean C2ST beside the published NPE, NLE and NRE numbers."""

import csv
import statistics
from collections import defaultdict
from importlib.resources import files
from pathlib import Path

PUBLISHED_ALGORITHMS = ("NPE", "NLE", "NRE")
TOLERANCE = 0.02  # fmpe "matches" NPE when its mean C2ST is at most this much higher


def published_c2st() -> dict[tuple[str, str, int], float]:
    """(task, algorithm, budget) -> mean C2ST from the sbibm paper's results table."""
    text = (files("fmpe") / "data" / "sbibm_published_c2st.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {(r["task"], r["algorithm"], int(r["budget"])): float(r["c2st"]) for r in rows}


def summarize(results: Path) -> dict[tuple[str, int], dict]:
    """Per (task, budget): mean and std of C2ST, observation count, train time, machines."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    with results.open(newline="") as f:
        for row in csv.DictReader(f):
            groups[(row["task"], int(row["budget"]))].append(row)
    summary = {}
    for key, rows in sorted(groups.items()):
        scores = [float(r["c2st"]) for r in rows]
        summary[key] = {
            "mean": statistics.fmean(scores),
            "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "observations": len(scores),
            "train_seconds": max(float(r["train_seconds"]) for r in rows),
            "machines": sorted({r["machine"] for r in rows}),
        }
    return summary


def run_span(results: Path) -> str:
    """When the first and the last row were written, and the training and sampling time."""
    with results.open(newline="") as f:
        rows = list(csv.DictReader(f))
    stamps = sorted(row["finished_at"] for row in rows)
    # Every row of a (task, budget, seed) repeats its posterior's training time.
    training = {(r["task"], r["budget"], r["seed"]): float(r["train_seconds"]) for r in rows}
    sampling = sum(float(r["sample_seconds"]) for r in rows)
    return (
        f"Rows written from {stamps[0]} to {stamps[-1]}. Training took "
        f"{sum(training.values()) / 3600:.1f} h over {len(training)} posteriors and sampling "
        f"{sampling / 60:.0f} min over {len(rows)} rows; scoring (C2ST, MMD) is not timed."
    )


def markdown_table(summary: dict[tuple[str, int], dict]) -> str:
    published = published_c2st()
    lines = [
        "| task | budget | fmpe C2ST (mean ± std, n obs) | NPE | NLE | NRE | vs NPE | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (task, budget), s in summary.items():
        peers = [published.get((task, a, budget)) for a in PUBLISHED_ALGORITHMS]
        npe = peers[0]
        if npe is None:
            verdict = "n/a"
        elif s["mean"] < npe - TOLERANCE:
            verdict = "better"
        elif s["mean"] <= npe + TOLERANCE:
            verdict = "on par"
        else:
            verdict = f"**misses by {s['mean'] - npe:.2f}**"
        peer_text = [f"{p:.2f}" if p is not None else "–" for p in peers]
        lines.append(
            f"| {task} | {budget:.0e} | {s['mean']:.3f} ± {s['std']:.3f} ({s['observations']}) | "
            + " | ".join(peer_text)
            + f" | {verdict} | {s['train_seconds']:.0f} |"
        )
    machines = sorted({m for s in summary.values() for m in s["machines"]})
    lines += ["", "Machines: " + "; ".join(machines)]
    return "\n".join(lines) + "\n"


def figure(summary: dict[tuple[str, int], dict], path: Path) -> None:
    """One panel per task: C2ST against budget for fmpe and the published algorithms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    published = published_c2st()
    tasks = sorted({task for task, _ in summary})
    columns = min(5, len(tasks))
    rows = -(-len(tasks) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 2.6 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        budgets = sorted(b for t, b in summary if t == task)
        for algorithm in PUBLISHED_ALGORITHMS:
            points = [
                (b, published[(task, algorithm, b)])
                for b in (10**3, 10**4, 10**5)
                if (task, algorithm, b) in published
            ]
            ax.plot(*zip(*points), marker="o", alpha=0.6, label=algorithm)
        means = [summary[(task, b)]["mean"] for b in budgets]
        stds = [summary[(task, b)]["std"] for b in budgets]
        ax.errorbar(budgets, means, yerr=stds, marker="s", color="black", label="fmpe")
        ax.set_xscale("log")
        ax.set_ylim(0.45, 1.02)
        ax.set_title(task, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("simulation budget")
    fig.supylabel("C2ST (0.5 is best)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: Path, out_dir: Path) -> tuple[Path, Path]:
    """Writes `sbibm_table.md` and `sbibm_c2st.png` next to each other in out_dir."""
    summary = summarize(results)
    if not summary:
        raise ValueError(f"{results} holds no benchmark rows")
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "sbibm_table.md"
    table.write_text(
        f"# fmpe on sbibm\n\nFrom `{results.name}`; published numbers: sbibm's main_paper.csv "
        "(Lueckmann et al., 2021).\n\n" + markdown_table(summary) + "\n" + run_span(results) + "\n"
    )
    plot = out_dir / "sbibm_c2st.png"
    figure(summary, plot)
    return table, plot
