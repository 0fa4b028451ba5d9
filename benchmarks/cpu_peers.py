# /// script
# requires-python = ">=3.11"
# dependencies = [
#     "fmpe[sbibm]", "sbi==0.27.0", "lampe==0.9.0",
#     # sbi's own requirements: inside this repository uv applies the project's empty
#     # dependency-metadata for sbi (see pyproject.toml), so they are listed here.
#     "joblib>=1.0.0", "nflows>=0.14.0", "pillow", "scikit-learn", "skorch", "tensorboard",
# ]
#
# [tool.uv]
# override-dependencies = [
#     "sbi==0.27.0",
#     "diffeqtorch; sys_platform == 'never'",
#     "elfi; sys_platform == 'never'",
#     "pyabc; sys_platform == 'never'",
#     "pyabcranger; sys_platform == 'never'",
#     "deneb; sys_platform == 'never'",
#     "autograd; sys_platform == 'never'",
# ]
#
# [tool.uv.sources]
# fmpe = { path = "..", editable = true }
# ///
"""fmpe against sbi's and lampe's FMPE on two_moons, on this machine, in one run.

    uv run benchmarks/cpu_peers.py [--simulations 10000] [--observation 1] [--threads 1]

All three libraries train on the same simulations, with the same number of torch threads, and
are scored the same way: C2ST of 10,000 samples inside the prior's support against sbibm's
reference posterior, the wall time of drawing them, and the wall time of the exact log density
of 1,000 reference points (each the median of three calls, after one small warm-up call).
fmpe's log densities are also compared with a float64 solve at tolerance 1e-9. sbi runs with
its defaults; lampe with its FMPE tutorial recipe (5×64 ELU MLP, AdamW 1e-3, cosine schedule,
batch 256, 1000 epochs); fmpe with its defaults.

Appends one row per library to benchmarks/results/cpu_peers.csv and rewrites cpu_peers.md and
cpu_peers.png from all rows there.
"""

import argparse
from importlib.metadata import version
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import fmpe  # noqa: E402
from fmpe.benchmark import (  # noqa: E402
    RowLog,
    float64_log_prob,
    machine_description,
    timed,
    timestamp,
)
from fmpe.metrics import c2st  # noqa: E402
from fmpe.tasks import get_task  # noqa: E402
from fmpe.unbounded import in_support  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NUM_SAMPLES = 10_000
NUM_LOG_PROB_POINTS = 1_000
HEADINGS = (
    "library",
    "recipe",
    "sims",
    "obs",
    "seed",
    "train s",
    "C2ST",
    "10k samples s",
    "network evals",
    "log_prob 1k s",
    "max log-density error",
    "threads",
    "machine",
    "finished",
)
REPEATS = 3  # sampling and log_prob are timed this often; the median is reported
FIELDS = (
    "library",
    "recipe",
    "simulations",
    "observation",
    "seed",
    "train_seconds",
    "c2st",
    "sample_seconds",
    "sample_evaluations",
    "log_prob_seconds",
    "log_prob_max_error",
    "threads",
    "machine",
    "finished_at",
)


def inside_prior(prior, draw, n: int) -> torch.Tensor:
    """n draws inside the prior's support; `draw(m)` returns (m, d) samples."""
    kept, total = [], 0
    while total < n:
        theta = draw(n)
        theta = theta[in_support(prior, theta)]
        kept.append(theta)
        total += len(theta)
    return torch.cat(kept)[:n]


# fmpe's sampling is timed with its default (RK4, 6 late steps, since 0.6.0) and with the
# adaptive solver that was the default until 0.5.0.
ADAPTIVE_SAMPLING = {"method": "dopri5_per_row", "time_grid": "uniform"}


def run_fmpe(task, theta, x, x_obs, points, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    estimator = fmpe.FMPE(prior=task.prior).append_simulations(theta, x)
    posterior, train_seconds = timed(estimator.train, seed=seed, show_progress=False)
    posterior.log_prob(posterior.sample(100, x_obs)[:10], x_obs)  # warm-up, as for the peers
    log_prob, log_prob_seconds = timed(posterior.log_prob, points, x_obs, repeats=REPEATS)
    exact = float64_log_prob(posterior, points, x_obs)
    results = []
    for recipe, options in (
        ("defaults", {}),
        ("defaults; sample with the adaptive solver of 0.5.0", ADAPTIVE_SAMPLING),
    ):
        (samples, cost), sample_seconds = timed(
            posterior.sample, NUM_SAMPLES, x_obs, repeats=REPEATS, return_cost=True, **options
        )
        results.append(
            {
                "recipe": recipe,
                "train_seconds": train_seconds,
                "samples": samples,
                "sample_seconds": sample_seconds,
                "sample_evaluations": cost.evaluations,
                "log_prob_seconds": log_prob_seconds,
                "log_prob_max_error": (log_prob.double() - exact).abs().max().item(),
            }
        )
    return results


def run_sbi(task, theta, x, x_obs, points, seed: int) -> list[dict]:
    from sbi.inference import FMPE

    torch.manual_seed(seed)
    inference = FMPE(prior=task.prior, show_progress_bars=False)
    inference.append_simulations(theta, x)
    _, train_seconds = timed(inference.train)
    posterior = inference.build_posterior()
    posterior.log_prob(posterior.sample((100,), x=x_obs, show_progress_bars=False)[:10], x=x_obs)
    samples, sample_seconds = timed(
        inside_prior,
        task.prior,
        lambda m: posterior.sample((m,), x=x_obs, show_progress_bars=False),
        NUM_SAMPLES,
        repeats=REPEATS,
    )
    _, log_prob_seconds = timed(posterior.log_prob, points, x=x_obs, repeats=REPEATS)
    result = {
        "recipe": "defaults",
        "train_seconds": train_seconds,
        "samples": samples,
        "sample_seconds": sample_seconds,
        "log_prob_seconds": log_prob_seconds,
    }
    return [result]


def run_lampe(task, theta, x, x_obs, points, seed: int, epochs: int) -> list[dict]:
    from lampe.inference import FMPE, FMPELoss

    torch.manual_seed(seed)
    estimator = FMPE(theta.shape[1], x.shape[1], hidden_features=[64] * 5, activation=torch.nn.ELU)
    loss = FMPELoss(estimator)
    optimizer = torch.optim.AdamW(estimator.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)

    def train() -> None:
        estimator.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(theta)).split(256):
                optimizer.zero_grad()
                loss(theta[batch], x[batch]).backward()
                optimizer.step()
            schedule.step()
        estimator.eval()

    _, train_seconds = timed(train)
    with torch.no_grad():
        estimator.flow(x_obs).log_prob(estimator.flow(x_obs).sample((100,))[:10])  # warm-up
        samples, sample_seconds = timed(
            inside_prior,
            task.prior,
            lambda m: estimator.flow(x_obs).sample((m,)),
            NUM_SAMPLES,
            repeats=REPEATS,
        )
        _, log_prob_seconds = timed(estimator.flow(x_obs).log_prob, points, repeats=REPEATS)
    result = {
        "recipe": f"tutorial, {epochs} epochs",
        "train_seconds": train_seconds,
        "samples": samples,
        "sample_seconds": sample_seconds,
        "log_prob_seconds": log_prob_seconds,
    }
    return [result]


def write_report(rows: list[dict], folder: Path) -> None:
    """Renders every row of the CSV as a markdown table and a bar chart of the wall times."""
    lines = [
        "# fmpe, sbi and lampe on two_moons (CPU)",
        "",
        "Produced by `uv run benchmarks/cpu_peers.py`; each row names its machine. C2ST of",
        f"{NUM_SAMPLES} samples against sbibm's reference (0.5 is perfect); times are wall",
        f"seconds (sampling and log_prob: median of {REPEATS} calls); log_prob is the exact",
        f"density of {NUM_LOG_PROB_POINTS} reference points. Network evaluations: per call.",
        "",
        "| " + " | ".join(HEADINGS) + " |",
        "|" + "---|" * len(HEADINGS),
    ]
    for r in rows:
        lines.append("| " + " | ".join(str(r[k] or "—") for k in FIELDS) + " |")
    # The latest row of each library and recipe; fmpe's recipes of its newest version only.
    latest = {(r["library"].split()[0], r["recipe"]): r for r in rows}
    newest = next((r["library"] for r in reversed(rows) if r["library"].startswith("fmpe")), "")
    ours = [r for r in latest.values() if r["library"] == newest]
    peers = [r for (name, _), r in latest.items() if name != "fmpe"]
    if ours and peers:
        lines += ["", "Speed-ups of fmpe over each peer, from the latest rows:", ""]
    for fmpe_row in ours:
        for peer in peers:
            ratios = [
                float(peer[key]) / float(fmpe_row[key])
                for key in ("train_seconds", "sample_seconds", "log_prob_seconds")
            ]
            lines.append(
                f"- fmpe ({fmpe_row['recipe']}) over {peer['library']}: training "
                f"{ratios[0]:.1f}×, 10k samples {ratios[1]:.1f}×, log_prob {ratios[2]:.1f}× "
                f"(C2ST {fmpe_row['c2st']} vs {peer['c2st']}; {fmpe_row['threads']} thread(s))"
            )
    (folder / "cpu_peers.md").write_text("\n".join(lines) + "\n")

    metrics = (("train_seconds", "training"), ("sample_seconds", "10k samples"))
    metrics += (("log_prob_seconds", "log_prob of 1k points"),)
    figure, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    shown = ours + peers
    names = [r["library"] + "\n" + r["recipe"].replace("; ", "\n") for r in shown]
    for axis, (key, title) in zip(axes, metrics):
        axis.bar(names, [float(r[key]) for r in shown], color="tab:blue")
        axis.set_title(f"{title} (s)")
        axis.tick_params(axis="x", labelsize=6)
    axes[3].bar(names, [float(r["c2st"]) for r in shown], color="tab:orange")
    axes[3].set_ylim(0.5, 1.0)
    axes[3].set_title("C2ST (0.5 is perfect)")
    axes[3].tick_params(axis="x", labelsize=6)
    threads = shown[0]["threads"]
    figure.suptitle(
        f"two_moons, latest run of each library; {shown[0]['machine']}, {threads} thread(s)",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(folder / "cpu_peers.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--simulations", type=int, default=10_000)
    parser.add_argument("--observation", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lampe-epochs", type=int, default=1000)
    parser.add_argument("--libraries", default="fmpe,lampe,sbi")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the table")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    task = get_task("two_moons")
    torch.manual_seed(args.seed)
    theta = task.prior.sample((args.simulations,))
    x = task.simulate(theta)
    x_obs = task.observation(args.observation)
    reference = task.reference_samples(args.observation)
    points = reference[:NUM_LOG_PROB_POINTS]

    runners = {
        "fmpe": lambda: run_fmpe(task, theta, x, x_obs, points, args.seed),
        "sbi": lambda: run_sbi(task, theta, x, x_obs, points, args.seed),
        "lampe": lambda: run_lampe(task, theta, x, x_obs, points, args.seed, args.lampe_epochs),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / "cpu_peers.csv"
    for library in args.libraries.split(","):
        print(f"{library}: training on {args.simulations} simulations ...", flush=True)
        for result in runners[library]():
            report_row(path, library, result, args, reference)
    write_report(RowLog(path).rows(), args.results)


def report_row(path: Path, library: str, result: dict, args, reference: torch.Tensor) -> None:
    """Scores one result, prints it and appends it to the CSV at `path`."""
    row = {
        "library": f"{library} {version(library)}",
        "recipe": result["recipe"],
        "simulations": args.simulations,
        "observation": args.observation,
        "seed": args.seed,
        "train_seconds": f"{result['train_seconds']:.1f}",
        "c2st": f"{c2st(reference[:NUM_SAMPLES], result['samples']):.3f}",
        "sample_seconds": f"{result['sample_seconds']:.2f}",
        "sample_evaluations": result.get("sample_evaluations", ""),
        "log_prob_seconds": f"{result['log_prob_seconds']:.2f}",
        "log_prob_max_error": (
            f"{result['log_prob_max_error']:.1e}" if "log_prob_max_error" in result else ""
        ),
        "threads": args.threads,
        "machine": machine_description(torch.device("cpu")),
        "finished_at": timestamp(),
    }
    print({k: v for k, v in row.items() if k != "machine"}, flush=True)
    RowLog(path, FIELDS).add(row)


if __name__ == "__main__":
    main()
