"""The GW task scaled up: what a wider band and a finer resolution cost in simulation,
storage, training and inference, measured side by side with the task's own size.

    uv run python benchmarks/gw_scale_up.py [--budget 20000] [--epochs 2] [--threads 2]
    uv run python benchmarks/gw_scale_up.py --smoke      # tiny, to check the script (seconds)

Two bands, each in a fresh process so that its peak memory is its own:

- task: the `gw` task's data, H1 + L1, 20-128 Hz at Δf = 0.25 Hz (433 bins per detector),
  chirp mass 15-30 M_sun;
- scale-up: 20-512 Hz at Δf = 0.125 Hz (3937 bins per detector, an 8 s segment), chirp mass
  8-30 M_sun, whose inspirals fit the longer segment.

For each: simulate `budget` noise-free waveforms into a simulation store (shards on disk),
train FMPE from the store with the `gw` card's hyperparameters for `epochs` epochs (fresh
noise at every use, the SVD embedding fitted first), then draw 1,000 posterior samples with
their log densities for one noisy observation. Rows go to
benchmarks/results/gw_scale_up.csv, each naming its machine and the 1-minute load average;
gw_scale_up.md is rendered from all rows.
"""

import argparse
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

import fmpe
from fmpe.benchmark import RowLog, markdown_table, provenance
from fmpe.benchmark.cards import load_card
from fmpe.gw import GWSimulator

RESULTS = Path(__file__).parent / "results" / "gw_scale_up.csv"
BANDS = {
    "task": {"f_max": 128.0, "delta_f": 0.25, "bounds": None},
    "scale-up": {"f_max": 512.0, "delta_f": 0.125, "bounds": {"chirp_mass": (8.0, 30.0)}},
}
POSTERIOR_SAMPLES = 1_000
FIELDS = (
    "band",
    "bins_per_detector",
    "budget",
    "epochs",
    "threads",
    "simulate_s",
    "store_mb",
    "train_s",
    "train_s_per_epoch",
    "best_validation_loss",
    "parameters",
    "sample_and_log_prob_s",
    "peak_rss_mb",
    "load_average",
    "machine",
    "fmpe_version",
    "finished_at",
)


def measure(band: str, budget: int, epochs: int, threads: int, smoke: bool) -> dict:
    """One band, start to end, in this process; returns its row."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    simulator = GWSimulator(**BANDS[band])
    model, train = load_card("gw").hyperparameters(1_000 if smoke else budget, "fmpe")
    train.update(max_epochs=epochs, early_stopping_patience=epochs + 1)
    folder = Path(tempfile.mkdtemp(prefix=f"fmpe-gw-{band}-"))
    try:
        estimator = fmpe.FMPE(simulator.waveforms, simulator.prior(), **model)
        start = time.perf_counter()
        estimator.simulate(budget, store=folder, show_progress=not smoke)
        simulate_s = time.perf_counter() - start
        store_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
        posterior = estimator.train(
            store=folder,
            augment_x=simulator.add_noise,
            trainer_kwargs={"accelerator": "cpu"},
            show_progress=not smoke,
            **train,
        )
    finally:
        shutil.rmtree(folder)
    theta_star = simulator.prior().sample((1,))
    x_obs = simulator.simulate(theta_star)[0]
    start = time.perf_counter()
    with torch.no_grad():
        posterior.sample_and_log_prob(POSTERIOR_SAMPLES, x_obs)
    sample_s = time.perf_counter() - start
    record = posterior.training_record
    return {
        "band": band,
        "bins_per_detector": simulator.x_shape[-1],
        "budget": budget,
        "epochs": record.epochs,
        "threads": threads,
        "simulate_s": round(simulate_s, 1),
        "store_mb": round(store_mb),
        # Three significant figures: a smoke run trains in hundredths of a second.
        "train_s": float(f"{record.seconds:.3g}"),
        "train_s_per_epoch": float(f"{record.seconds / max(record.epochs, 1):.3g}"),
        "best_validation_loss": f"{record.best_validation_loss:.4f}",
        "parameters": record.trainable_parameters,
        "sample_and_log_prob_s": round(sample_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load_average": f"{os.getloadavg()[0]:.2f}",
        **provenance("cpu"),
    }


def write_table(rows: list[dict], path: Path) -> None:
    lines = [
        "# The GW task scaled up",
        "",
        "Produced by `uv run python benchmarks/gw_scale_up.py`. Per band, in a fresh process:",
        "simulate noise-free H1 + L1 waveforms into a store, train FMPE from it with the `gw`",
        "card's hyperparameters (fresh noise at every use), then draw "
        f"{POSTERIOR_SAMPLES:,} samples with",
        "log densities. task: 20-128 Hz at Δf = 0.25 Hz; scale-up: 20-512 Hz at Δf = 0.125 Hz,",
        "chirp mass 8-30 M_sun. `peak rss` is the process's peak resident memory.",
        "",
        *markdown_table(rows, FIELDS),
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=int, default=20_000, help="waveforms per band")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--bands", nargs="+", default=list(BANDS), choices=list(BANDS))
    parser.add_argument("--smoke", action="store_true", help="a tiny run to check the script")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.budget < 100 or args.epochs < 1 or args.threads < 1:
        parser.error("--budget must be at least 100, --epochs and --threads at least 1")
    if args.smoke:
        args.budget, args.epochs = 400, 1
    for band in args.bands:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            row = pool.submit(
                measure, band, args.budget, args.epochs, args.threads, args.smoke
            ).result()
        print(row)
        RowLog(args.results, FIELDS).add(row)
    write_table(RowLog(args.results).rows(), args.results.with_suffix(".md"))


if __name__ == "__main__":
    main()
