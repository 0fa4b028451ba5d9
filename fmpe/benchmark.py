"""The sbibm benchmark: train fmpe per task and budget, score it on the shipped observations.

Every finished (task, budget, observation) is appended to a CSV at once, and every trained
posterior is saved, so a run that is stopped and started again skips what is done.
"""

import csv
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch
from tqdm.auto import tqdm

import fmpe
from fmpe.estimator import FMPE
from fmpe.metrics import c2st, mmd
from fmpe.posterior import Posterior
from fmpe.tasks import Task, get_task, load_card

FIELDS = (
    "task",
    "budget",
    "observation",
    "seed",
    "c2st",
    "mmd",
    "nltp",
    "acceptance_rate",
    "train_seconds",
    "sample_seconds",
    "evaluations",
    "machine",
    "fmpe_version",
    "finished_at",
)
NUM_SAMPLES = 10_000


def machine_description(device: torch.device) -> str:
    """A short name of the hardware a number came from."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA), {os.cpu_count()} CPU cores"
    processor = platform.processor() or platform.machine()
    return f"CPU {processor}, {os.cpu_count()} cores, torch {torch.__version__}"


def timed(function, *args, repeats: int = 1, **kwargs):
    """The result of the last of `repeats` calls of `function`, and the median wall seconds
    of a call."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
    return result, statistics.median(seconds)


def float64_log_prob(posterior: Posterior, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reference log densities (n,) of theta (n, d): a float64 solve at tolerance 1e-9.

    The posterior is converted for the solve and back to float32 after it.
    """
    exact = posterior.double().log_prob(theta.double(), x.double(), rtol=1e-9, atol=1e-9)
    posterior.float()
    return exact


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _trainer_kwargs(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"accelerator": "gpu", "devices": [device.index or 0]}
    return {"accelerator": "cpu", "devices": 1}


def completed(results: Path) -> dict[tuple[str, int, int, int], dict]:
    """The rows already in the results CSV, by (task, budget, observation, seed)."""
    if not results.exists():
        return {}
    with results.open(newline="") as f:
        return {
            (row["task"], int(row["budget"]), int(row["observation"]), int(row["seed"])): row
            for row in csv.DictReader(f)
        }


def append_row(results: Path, row: dict, fields: Sequence[str] = FIELDS) -> None:
    """Appends one row to a CSV, writing the header first if the file is new."""
    results.parent.mkdir(parents=True, exist_ok=True)
    new = not results.exists()
    with results.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow(row)


def train_for_task(
    task: Task,
    budget: int,
    seed: int,
    device: torch.device,
    run_dir: Path,
    show_progress: bool,
) -> tuple[Posterior, float]:
    """Trains (or reloads a finished) posterior with the task card's hyperparameters.

    The hyperparameters are recorded beside the posterior; a finished posterior whose record
    differs from what the card now says is refused rather than reused.

    Returns:
        the posterior on `device` and the training wall time in seconds.
    """
    stem = run_dir / f"{task.name}_{budget}_seed{seed}"
    saved = stem.with_suffix(".fmpe")
    timing = stem.with_suffix(".seconds")
    model_options, train_options = load_card(task.name).hyperparameters(budget)
    hyperparameters = {"model": model_options, "train": train_options}
    record = stem.with_suffix(".card.json")
    if saved.exists() and timing.exists():
        check_recorded_hyperparameters(record, hyperparameters)
        return fmpe.load(saved, prior=task.prior, device=device), float(timing.read_text())
    torch.manual_seed(seed)
    start = time.perf_counter()
    posterior = FMPE(task.simulate, task.prior, **model_options).train(
        budget,
        seed=seed,
        checkpoint_dir=stem.with_suffix(".checkpoints"),
        trainer_kwargs=_trainer_kwargs(device),
        show_progress=show_progress,
        **train_options,
    )
    seconds = time.perf_counter() - start
    posterior.save(saved)
    record.write_text(json.dumps(hyperparameters, indent=2, sort_keys=True))
    timing.write_text(f"{seconds:.2f}")
    return posterior.to(device), seconds


def check_recorded_hyperparameters(record: Path, hyperparameters: dict) -> None:
    """Raises ValueError if `record` holds other card hyperparameters than `hyperparameters`.

    Posteriors trained before fmpe kept this record (0.3.0 and earlier) cannot be checked;
    they are reused with a warning.
    """
    if not record.exists():
        warnings.warn(
            f"no {record.name}: the posterior beside it is reused without checking that the "
            "task card still gives the hyperparameters it was trained with",
            stacklevel=3,
        )
        return
    run_files = f"{record.parent / record.name.removesuffix('.card.json')}.*"
    try:
        recorded = json.loads(record.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{record} is not valid JSON ({error}); delete the run's files ({run_files}) to retrain"
        ) from None
    expected = json.loads(json.dumps(hyperparameters))
    if recorded != expected:
        changed = []
        for part, now in expected.items():
            before = recorded.get(part, {})
            changed += [
                f"{part}.{key}: {before.get(key)!r} -> {now.get(key)!r}"
                for key in sorted(now.keys() | before.keys())
                if before.get(key) != now.get(key)
            ]
        raise ValueError(
            f"the posterior beside {record} was trained with other hyperparameters than the "
            f"task card now gives ({'; '.join(changed)}). Delete its files ({run_files}) to "
            "retrain, or pass another --runs and --results"
        )


def evaluate(
    posterior: Posterior, task: Task, observation: int, seed: int, num_samples: int = NUM_SAMPLES
) -> dict:
    """Scores the posterior against the task's reference samples for one observation."""
    x = task.observation(observation).to(posterior.device)
    reference = task.reference_samples(observation)
    torch.manual_seed(seed)
    posterior.evaluations = 0
    start = time.perf_counter()
    samples = posterior.sample(num_samples, x).cpu()
    sample_seconds = time.perf_counter() - start
    evaluations = posterior.evaluations
    theta_true = task.true_parameters(observation).to(posterior.device)
    nltp = -posterior.log_prob(theta_true.unsqueeze(0), x).item()
    return {
        "c2st": c2st(reference[:num_samples], samples, device=posterior.device),
        "mmd": mmd(reference[:num_samples], samples),
        "nltp": nltp,
        "acceptance_rate": posterior.acceptance_rate,
        "sample_seconds": round(sample_seconds, 3),
        "evaluations": evaluations,
    }


def run(
    tasks: Iterable[str],
    budgets: Iterable[int],
    observations: Iterable[int],
    *,
    seed: int = 0,
    device: str | None = None,
    results: Path,
    run_dir: Path,
    num_samples: int = NUM_SAMPLES,
    show_progress: bool = True,
) -> list[dict]:
    """Runs every (task, budget, observation) cell not yet in `results`.

    Returns:
        the rows of all requested cells, those found in `results` and those added.
    """
    torch_device = resolve_device(device)
    done = completed(results)
    cells = [(t, b, o) for t in tasks for b in budgets for o in observations]
    todo = [c for c in cells if (c[0], c[1], c[2], seed) not in done]
    with tqdm(total=len(cells), initial=len(cells) - len(todo), desc="benchmark") as bar:
        for task_name, budget in dict.fromkeys((t, b) for t, b, _ in todo):
            task = get_task(task_name)
            run_dir.mkdir(parents=True, exist_ok=True)
            bar.set_postfix_str(f"training {task_name} at {budget}")
            posterior, train_seconds = train_for_task(
                task, budget, seed, torch_device, run_dir, show_progress
            )
            for _, _, observation in (c for c in todo if c[:2] == (task_name, budget)):
                bar.set_postfix_str(f"{task_name} {budget} observation {observation}")
                row = {
                    "task": task_name,
                    "budget": budget,
                    "observation": observation,
                    "seed": seed,
                    **evaluate(posterior, task, observation, seed, num_samples),
                    "train_seconds": round(train_seconds, 2),
                    "machine": machine_description(torch_device),
                    "fmpe_version": fmpe.__version__,
                    "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                }
                append_row(results, row)
                done[(task_name, budget, observation, seed)] = row
                bar.update(1)
    return [done[(t, b, o, seed)] for t, b, o in cells]
