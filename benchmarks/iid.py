"""Posteriors given n iid trials: a set embedding against score composition, on conjugate
Gaussian models whose posterior is known.

    uv run python benchmarks/iid.py [--stop-after 30m] [--threads 1]

Two models, θ ~ N(0, a I) and x_1..x_n ~ N(θ, b I) iid, so that p(θ | x_1..x_n) is
N(Σx / b / (1/a + n/b), I / (1/a + n/b)):
- "gaussian": 2-d, a = 4, b = 1 (the model of tests/test_composition.py);
- "gaussian_linear": 10-d, a = b = 0.1 (sbibm's gaussian_linear, with trials).

Routes, each trained once on 10,000 draws of θ:
- "set": the "set" embedding (mean pooling), each θ with n uniform in 1..20 trials (missing
  ones NaN), so it simulates about 10.5 trials a θ;
- "auto_gauss" and "gauss": one posterior trained on one trial a θ, composed at sampling
  time (`posterior.sample_iid`), with each trial's precision from its samples or guessed.

For n = 1, 5 and 20 and five θ drawn from the prior, each route draws 5000 samples; a row
records how far their mean is from the exact one (the largest over dimensions, in exact
posterior standard deviations), their standard deviations against the exact one (geometric
mean and largest factor over dimensions) and the seconds per 1000 samples. Rows go to
benchmarks/results/iid.csv (resumable: a route is retrained only while one of its rows is
missing, and kept in benchmarks/runs/iid); iid.md is written from them. With --stop-after, a
run finishes the route in progress and starts none that is not expected to fit.
"""

import argparse
import math
import os
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributions import MultivariateNormal

import fmpe
from fmpe import FMPE
from fmpe.benchmark import RowLog, markdown_table, provenance, timed
from fmpe.benchmark.deadline import Deadline, median_gap_seconds
from fmpe.cli import add_stop_after

RESULTS = Path(__file__).parent / "results"
RUNS = Path(__file__).parent / "runs" / "iid"
MAX_TRIALS = 20
TRIAL_COUNTS = (1, 5, 20)
OBSERVATIONS = range(1, 6)
SAMPLES = 5000
BUDGET = 10_000
ROUTES = ("set", "auto_gauss", "gauss")
FIELDS = (
    "model",
    "route",
    "trials",
    "observation",
    "mean_error_sd",
    "sd_ratio",
    "sd_worst_factor",
    "seconds_per_1000",
    "train_seconds",
    "simulated_trials",
    "load_average",
)
KEY = ("model", "route", "trials", "observation")


@dataclass(frozen=True)
class ConjugateGaussian:
    """θ ~ N(0, prior_variance I), each trial x ~ N(θ, noise_variance I)."""

    dim: int
    prior_variance: float
    noise_variance: float
    hidden_widths: tuple[int, ...]
    max_epochs: int

    @property
    def prior(self) -> MultivariateNormal:
        return MultivariateNormal(torch.zeros(self.dim), self.prior_variance * torch.eye(self.dim))

    def simulate(self, theta: torch.Tensor) -> torch.Tensor:
        """theta (m, d) -> one trial each (m, d)"""
        return theta + self.noise_variance**0.5 * torch.randn_like(theta)

    def simulate_trials(self, theta: torch.Tensor) -> torch.Tensor:
        """theta (m, d) -> (m, 20, d): n uniform in 1..20 trials each, NaN after the n-th."""
        x = self.simulate(theta.repeat_interleave(MAX_TRIALS, 0)).view(len(theta), MAX_TRIALS, -1)
        counts = torch.randint(1, MAX_TRIALS + 1, (len(theta), 1))
        x[torch.arange(MAX_TRIALS) >= counts] = float("nan")
        return x

    def posterior(self, trials: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The exact posterior's mean (d,) and standard deviation given trials (n, d)."""
        precision = 1 / self.prior_variance + len(trials) / self.noise_variance
        return trials.sum(0) / self.noise_variance / precision, precision**-0.5


MODELS = {
    "gaussian": ConjugateGaussian(2, 4.0, 1.0, (64, 64), 40),
    "gaussian_linear": ConjugateGaussian(10, 0.1, 0.1, (128, 128, 128), 100),
}


def train(model: ConjugateGaussian, route: str) -> fmpe.Posterior:
    torch.manual_seed(0)
    simulator = model.simulate_trials if route == "set" else model.simulate
    options = {"embedding_net": "set"} if route == "set" else {}
    estimator = FMPE(
        simulator, model.prior, network_options={"hidden_widths": model.hidden_widths}, **options
    )
    return estimator.train(
        BUDGET, max_epochs=model.max_epochs, batch_size=128, learning_rate=2e-3,
        show_progress=False,
    )  # fmt: skip


def draw(posterior: fmpe.Posterior, route: str, trials: torch.Tensor) -> torch.Tensor:
    if route == "set":
        x = torch.full((MAX_TRIALS, trials.shape[1]), float("nan"))
        x[: len(trials)] = trials
        return posterior.sample(SAMPLES, x)
    return posterior.sample_iid(SAMPLES, trials, iid_method=route)


def run_route(name: str, route: str, log: RowLog) -> None:
    """Trains (or loads) one route on one model and adds its missing rows."""
    model = MODELS[name]
    path = RUNS / f"{name}_{route}.fmpe"
    if path.exists():
        posterior = fmpe.load(path)
        posterior.prior = model.prior
        train_seconds = posterior.training_record.seconds
    else:
        posterior, _ = timed(train, model, route)
        train_seconds = posterior.training_record.seconds
        RUNS.mkdir(parents=True, exist_ok=True)
        posterior.save(path)
    done = log.completed()
    simulated = BUDGET * ((MAX_TRIALS + 1) / 2 if route == "set" else 1)
    for observation in OBSERVATIONS:
        generator = torch.Generator().manual_seed(1000 + observation)
        theta = model.prior_variance**0.5 * torch.randn(model.dim, generator=generator)
        noise = torch.randn(MAX_TRIALS, model.dim, generator=generator)
        all_trials = theta + model.noise_variance**0.5 * noise
        for n in TRIAL_COUNTS:
            row = {"model": name, "route": route, "trials": n, "observation": observation}
            if log.key_of(row) in done:
                continue
            torch.manual_seed(observation)
            samples, seconds = timed(draw, posterior, route, all_trials[:n])
            mean, sd = model.posterior(all_trials[:n])
            log_ratio = (samples.std(0) / sd).log()
            row |= {
                "mean_error_sd": f"{((samples.mean(0) - mean).abs() / sd).max():.3f}",
                "sd_ratio": f"{log_ratio.mean().exp():.3f}",
                "sd_worst_factor": f"{log_ratio.abs().max().exp():.3f}",
                "seconds_per_1000": f"{seconds / SAMPLES * 1000:.3f}",
                "train_seconds": f"{train_seconds:.0f}",
                "simulated_trials": int(simulated),
                "load_average": f"{os.getloadavg()[0]:.1f}",
                **provenance(),
            }
            print({k: row[k] for k in FIELDS}, flush=True)
            log.add(row)


def write_table(rows: list[dict], path: Path) -> None:
    """iid.md: per model, route and n, the means over observations."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["route"], int(r["trials"])), []).append(r)
    summary = []
    for (name, route, n), members in sorted(groups.items()):

        def mean(field: str, members: list[dict] = members) -> float:
            return statistics.fmean(float(r[field]) for r in members)

        log_sd_ratios = [math.log(float(r["sd_ratio"])) for r in members]
        summary.append({
            "model": name, "route": route, "trials": n, "observations": len(members),
            "mean_error_sd": f"{mean('mean_error_sd'):.2f}",
            "sd_ratio": f"{math.exp(statistics.fmean(log_sd_ratios)):.2f}",
            "sd_worst_factor": f"{max(float(r['sd_worst_factor']) for r in members):.2f}",
            "seconds_per_1000": f"{mean('seconds_per_1000'):.2f}",
            "train_seconds": members[0]["train_seconds"],
            "simulated_trials": members[0]["simulated_trials"],
            "machine": members[0]["machine"],
        })  # fmt: skip
    fields = list(summary[0]) if summary else []
    lines = [
        "# Posteriors given n iid trials: a set embedding against score composition",
        "",
        "Produced by `uv run python benchmarks/iid.py` (see its docstring). Per model, route and",
        "number of trials n, means over the observations: the error of the sample mean in exact",
        "posterior standard deviations (largest over dimensions), the ratio of sample to exact",
        "standard deviation (geometric mean over dimensions and observations; 1 is exact), the",
        "largest factor by which one dimension's standard deviation is off, and seconds per 1000",
        "samples. Training: 10,000 draws of θ per route.",
        "",
        *markdown_table(summary, fields),
    ]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    add_stop_after(parser, "the route")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    deadline = Deadline.after(args.stop_after)
    log = RowLog(RESULTS / "iid.csv", FIELDS, key=KEY)
    for name in MODELS:
        for route in ROUTES:
            like = [r for r in log.rows() if r["model"] == name]
            units = len(TRIAL_COUNTS) * len(OBSERVATIONS)
            done = sum(r["route"] == route for r in like)
            if done == units:
                continue
            # Training (as recorded) and the rows of one route of this model, as far as known.
            gap = median_gap_seconds(r["finished_at"] for r in like)
            expected = None if gap is None else gap * units + float(like[0]["train_seconds"])
            if deadline.allows(f"{name} {route}", expected):
                run_route(name, route, log)
    write_table(log.rows(), RESULTS / "iid.md")
    if deadline.left:
        continuation = sys.argv[1:] if argv is None else argv
        print(deadline.summary("uv run python benchmarks/iid.py " + shlex.join(continuation)))


if __name__ == "__main__":
    main()
