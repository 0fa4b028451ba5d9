"""fmpe on one GPU, in one run of at most 10 minutes: training steps, two_moons at 1e5
simulations, a million samples, and as much of the sbibm table as fits.

    uv run python benchmarks/gpu.py [--minutes 9] [--results benchmarks/results]
    uv run python benchmarks/gpu.py --smoke      # tiny sizes on the CPU, in seconds

Sections, in order (each is skipped, with a row saying so, when too little time is left):

1. The training step of the default velocity network (batch 512, AdamW, clipping at 1.0) on
   two_moons data held on the device: eager, torch.compile, torch.compile in
   "reduce-overhead" mode, and the whole step (batch draw, loss, backward, clipping,
   optimizer) captured once as a CUDA graph and replayed, with eager and with compiled
   kernels. Target: 0.3 ms. A mode that fails (say, compile without a working Triton) gets a
   row with the error instead of a time.
2. two_moons trained on 1e5 simulations by `FMPE.train` on the GPU: fmpe's defaults, then a
   larger batch. Targets: C2ST ≤ 0.52 (mean over observations 1-3) in ≤ 30 s.
3. 1,000,000 samples of that posterior in one call (target ≤ 1 s), with the default solver
   and with RK4 of 6 steps on the late time grid; 100,000 exact log densities.
4. sbibm tasks at 1e4 simulations, observations 1-10, one task after another while time
   is left; rows go to gpu_sbibm.csv (the benchmark runner's format), a summary to gpu.md.

Every timing synchronizes the device before reading the clock, after warm-up calls. Rows are
appended to gpu.csv (each naming the machine) and gpu.md is rewritten from all rows.
"""

import argparse
import math
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

import fmpe
from fmpe.benchmark import RowLog, evaluate, machine_description, provenance, run
from fmpe.flow_matching import draw_path_noise, flow_matching_loss
from fmpe.metrics import c2st
from fmpe.networks import VelocityNetwork
from fmpe.tasks import get_task

RESULTS = Path(__file__).parent / "results"
STEP_TARGET_MS = 0.3
TRAIN_TARGET_S = 30.0
C2ST_TARGET = 0.52
SAMPLES_TARGET_S = 1.0
SBIBM_TASKS = (
    "two_moons",
    "gaussian_linear",
    "gaussian_linear_uniform",
    "gaussian_mixture",
    "slcp",
    "slcp_distractors",
    "bernoulli_glm",
    "bernoulli_glm_raw",
    "sir",
    "lotka_volterra",
)
FIELDS = (
    "section",
    "setting",
    "value",
    "unit",
    "target",
    "met",
    "c2st",
    "evaluations",
    "detail",
    "machine",
    "fmpe_version",
    "torch_version",
    "finished_at",
)


class Clock:
    """Wall seconds on `device`: every reading waits for the device's queued work first."""

    def __init__(self, device: torch.device):
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def seconds(self, function: Callable, *args, **kwargs):
        """The result of one call and its seconds."""
        start = self.now()
        result = function(*args, **kwargs)
        return result, self.now() - start


class Report:
    """Appends rows to gpu.csv and keeps the deadline of the whole run."""

    def __init__(self, folder: Path, device: torch.device, minutes: float):
        self.path = folder / "gpu.csv"
        self.folder = folder
        self.machine = machine_description(device)
        self.deadline = time.perf_counter() + 60 * minutes

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def row(self, section: str, setting: str, value=None, unit: str = "", target=None, **extra):
        met = ""
        if value is not None and target is not None:
            met = "yes" if value <= target else "no"
        row = {
            "section": section,
            "setting": setting,
            "value": "" if value is None else f"{value:.4g}",
            "unit": unit,
            "target": "" if target is None else f"≤ {target:g}",
            "met": met,
            "c2st": "" if extra.get("c2st") is None else f"{extra['c2st']:.3f}",
            "evaluations": extra.get("evaluations", ""),
            "detail": extra.get("detail", ""),
            **provenance(machine=self.machine),
            "torch_version": torch.__version__,
        }
        print({k: row[k] for k in FIELDS[:9] if row[k] != ""}, flush=True)
        RowLog(self.path, FIELDS).add(row)

    def skipped(self, section: str, setting: str, why: str) -> None:
        self.row(section, setting, detail=f"skipped: {why}")

    def failed(self, section: str, setting: str, error: BaseException) -> None:
        message = f"{type(error).__name__}: {error}".replace("\n", " ")[:300]
        traceback.print_exc()
        self.row(section, setting, detail=f"failed: {message}")


# ----- 1. the training step ----------------------------------------------------------------


def training_step(network, optimizer, theta, x, batch_size: int, loss_of) -> Callable:
    """One optimizer step on a batch drawn (with replacement) from theta (n, d), x (n, k) on
    the device; everything runs on the device, so the step can be captured as a graph."""
    parameters = [p for p in network.parameters() if p.requires_grad]

    def step() -> torch.Tensor:
        index = torch.randint(0, len(theta), (batch_size,), device=theta.device)
        batch_theta, batch_x = theta[index], x[index]
        t, theta0 = draw_path_noise(batch_theta, 4.0)
        loss = loss_of(batch_theta, batch_x, t, theta0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        return loss

    return step


def step_milliseconds(clock: Clock, step: Callable, steps: int, windows: int = 5) -> float:
    """Median milliseconds per call of `step` over `windows` runs of `steps` calls."""
    per_step = []
    for _ in range(windows):
        start = clock.now()
        for _ in range(steps):
            step()
        per_step.append((clock.now() - start) / steps * 1e3)
    return statistics.median(per_step)


def as_graph(step: Callable, device: torch.device, warmup: int = 5) -> Callable:
    """`step` captured once as a CUDA graph; the returned function replays it."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):  # initializes the optimizer's state and autograd's buffers
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def bench_training_steps(report: Report, device: torch.device, smoke: bool) -> None:
    section = "training step (default network, batch 512)"
    clock = Clock(device)
    task = get_task("two_moons")
    torch.manual_seed(0)
    theta = task.prior.sample((10_000,))
    x = task.simulate(theta)
    theta = ((theta - theta.mean(0)) / theta.std(0)).to(device)
    x = ((x - x.mean(0)) / x.std(0)).to(device)
    steps = 20 if smoke else 500
    modes = ["eager", "compile", "compile reduce-overhead", "CUDA graph", "CUDA graph + compile"]
    for mode in modes:
        if report.left() < (30 if smoke else 90):
            report.skipped(section, mode, "out of time")
            continue
        if "graph" in mode and device.type != "cuda":
            report.skipped(section, mode, "needs CUDA")
            continue
        if "compile" in mode and smoke:
            report.skipped(section, mode, "--smoke (compiling takes minutes on a CPU)")
            continue
        try:
            torch.manual_seed(0)
            network = VelocityNetwork(2, (2,)).to(device)
            # capturable: the step count stays on the device, so the step can be a graph.
            optimizer = torch.optim.AdamW(
                network.parameters(), lr=2e-3, capturable=device.type == "cuda"
            )
            velocity = network
            if "compile" in mode:
                velocity = torch.compile(
                    network, mode="reduce-overhead" if "reduce-overhead" in mode else "default"
                )

            def loss_of(theta_b, x_b, t, theta0, velocity=velocity):
                return flow_matching_loss(velocity, theta_b, x_b, t, theta0, 1e-4)

            step = training_step(network, optimizer, theta, x, 512, loss_of)
            start = time.perf_counter()
            if "graph" in mode:
                step = as_graph(step, device)
            for _ in range(10):
                step()
            setup = time.perf_counter() - start
            milliseconds = step_milliseconds(clock, step, steps)
            report.row(
                section,
                mode,
                milliseconds,
                "ms",
                STEP_TARGET_MS,
                detail=f"median of 5 × {steps} steps; warm-up and capture/compile {setup:.1f} s",
            )
        except Exception as error:  # a mode that fails must not stop the others
            report.failed(section, mode, error)


# ----- 2. two_moons at 1e5, and 3. sampling -----------------------------------------------


def mean_c2st(posterior, task, observations, num_samples: int, device) -> float:
    scores = []
    for i in observations:
        torch.manual_seed(i)
        samples = posterior.sample(num_samples, task.observation(i).to(device))
        reference = task.reference_samples(i)[:num_samples]
        scores.append(c2st(reference, samples.cpu(), device=device))
    return sum(scores) / len(scores)


def bench_two_moons(report: Report, device: torch.device, smoke: bool):
    """Trains two_moons with fmpe's defaults and a larger batch; returns the default's
    posterior (None if none could be trained)."""
    section = "two_moons, FMPE.train"
    clock = Clock(device)
    task = get_task("two_moons")
    n = 1_000 if smoke else 100_000
    torch.manual_seed(0)
    theta = task.prior.sample((n,))
    x = task.simulate(theta)
    observations = [1] if smoke else [1, 2, 3]
    num_samples = 500 if smoke else 10_000
    accelerator = {"accelerator": "gpu" if device.type == "cuda" else "cpu", "devices": 1}
    configurations = [("defaults", {})]
    if not smoke:
        configurations.append(("batch 2048, lr 4e-3", {"batch_size": 2048, "learning_rate": 4e-3}))
    default_posterior = None
    for name, settings in configurations:
        setting = f"{n} simulations, {name}"
        if report.left() < (20 if smoke else 150):
            report.skipped(section, setting, "out of time")
            continue
        try:
            if smoke:
                settings = {**settings, "max_epochs": 2}
            estimator = fmpe.FMPE(prior=task.prior).append_simulations(theta, x)
            posterior, seconds = clock.seconds(
                estimator.train,
                seed=0,
                show_progress=False,
                trainer_kwargs=accelerator,
                **settings,
            )
            score = mean_c2st(posterior, task, observations, num_samples, device)
            record = posterior.training_record
            steps = record.epochs * math.ceil(0.95 * n / settings.get("batch_size", 512))
            report.row(
                section,
                setting,
                seconds,
                "s",
                TRAIN_TARGET_S,
                c2st=score,
                detail=(
                    f"C2ST target ≤ {C2ST_TARGET} (mean over observations {observations}); "
                    f"{record.epochs} epochs, {seconds / steps * 1e3:.2f} ms per optimizer step "
                    "(the whole call's time)"
                ),
            )
            if default_posterior is None:
                default_posterior = posterior
        except Exception as error:
            report.failed(section, setting, error)
    return default_posterior


def bench_sampling(report: Report, device: torch.device, posterior, smoke: bool) -> None:
    section = "two_moons posterior, one call"
    clock = Clock(device)
    if posterior is None:
        report.skipped(section, "sampling", "no posterior was trained")
        return
    task = get_task("two_moons")
    x = task.observation(1).to(device)
    n = 2_000 if smoke else 1_000_000
    posterior.chunk_size = n  # one batched solve: the GPU is fed whole
    settings = [
        ("default solver", {}),
        ("rk4, 6 steps, late time grid", {"method": "rk4", "steps": 6, "time_grid": "late"}),
    ]
    for name, options in settings:
        if report.left() < (10 if smoke else 45):
            report.skipped(section, f"{n} samples, {name}", "out of time")
            continue
        try:
            posterior.sample(1000, x, **options)  # warm-up
            (samples, cost), seconds = clock.seconds(
                posterior.sample, n, x, return_cost=True, **options
            )
            reference = task.reference_samples(1)[:10_000]
            score = c2st(reference, samples[:10_000].cpu(), device=device)
            report.row(
                section,
                f"{n} samples, {name}",
                seconds,
                "s",
                SAMPLES_TARGET_S,
                c2st=score,
                evaluations=cost.evaluations,
                detail=f"chunk_size {n}; C2ST of the first 10,000 (observation 1)",
            )
        except Exception as error:
            report.failed(section, f"{n} samples, {name}", error)
    m = 1_000 if smoke else 100_000
    if report.left() < (10 if smoke else 45):
        report.skipped(section, f"{m} exact log densities", "out of time")
        return
    try:
        points = task.reference_samples(1)[:m].to(device)
        posterior.log_prob(points[:100], x)  # warm-up
        (_, cost), seconds = clock.seconds(posterior.log_prob, points, x, return_cost=True)
        report.row(
            section,
            f"{len(points)} exact log densities, default solver",
            seconds,
            "s",
            evaluations=cost.evaluations,
            detail=f"chunk_size {n}",
        )
    except Exception as error:
        report.failed(section, f"{m} exact log densities", error)


# ----- 4. the sbibm table --------------------------------------------------------------------


def bench_sbibm(report: Report, device: torch.device, posterior, smoke: bool) -> None:
    section = "sbibm at 1e4, observations 1-10"
    results = report.folder / "gpu_sbibm.csv"
    if smoke:
        # The runner trains for the task card's 200 epochs; the smoke run scores the posterior
        # it already has instead, through the same evaluation.
        if posterior is None:
            report.skipped(section, "two_moons", "no posterior was trained")
            return
        scores = evaluate(posterior, get_task("two_moons"), 1, seed=0, num_samples=500)
        report.row(section, "two_moons (smoke: scoring only)", c2st=scores["c2st"])
        return
    with tempfile.TemporaryDirectory() as runs:
        for name in SBIBM_TASKS:
            if report.left() < 120:  # training and scoring a task takes about that
                report.skipped(section, name, "out of time")
                continue
            try:
                start = time.perf_counter()
                rows = run(
                    [name],
                    [10_000],
                    range(1, 11),
                    device=str(device),
                    results=results,
                    run_dir=Path(runs),
                    show_progress=False,
                )
                scores = [float(r["c2st"]) for r in rows if r.get("c2st") not in (None, "")]
                report.row(
                    section,
                    name,
                    time.perf_counter() - start,
                    "s",
                    c2st=sum(scores) / len(scores) if scores else None,
                    detail=f"training and scoring; mean C2ST of {len(scores)} observations",
                )
            except Exception as error:
                report.failed(section, name, error)


def write_table(path: Path, markdown: Path) -> None:
    rows = RowLog(path).rows()
    lines = [
        "# fmpe on one GPU",
        "",
        "Produced by `uv run python benchmarks/gpu.py` in one run of at most 10 minutes; each",
        "row names its machine. Times synchronize the device and follow warm-up calls.",
        "C2ST: 10,000 samples against sbibm's reference (0.5 is perfect). Rows from",
        "`--smoke` runs are CPU smoke tests, not measurements.",
        "",
        "| " + " | ".join(f.replace("_", " ") for f in FIELDS) + " |",
        "|" + "---|" * len(FIELDS),
    ]
    lines += ["| " + " | ".join(r[f] or "—" for f in FIELDS) + " |" for r in rows]
    markdown.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, in seconds")
    parser.add_argument("--minutes", type=float, default=9.0, help="time for the sections")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the table")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device is available; run with --smoke to test the script")
    if device.type == "cpu":
        # The smoke sizes are tiny: more intra-op threads only wait for each other.
        torch.set_num_threads(1)
    args.results.mkdir(parents=True, exist_ok=True)
    # The smoke run goes through every section whatever the time, so that none can rot.
    report = Report(args.results, device, math.inf if args.smoke else args.minutes)
    if args.smoke:
        report.machine += " (--smoke)"

    bench_training_steps(report, device, args.smoke)
    posterior = bench_two_moons(report, device, args.smoke)
    bench_sampling(report, device, posterior, args.smoke)
    bench_sbibm(report, device, posterior, args.smoke)
    write_table(report.path, args.results / "gpu.md")


if __name__ == "__main__":
    main()
