"""Scoring one posterior on one observation with every metric its task declares.

It imports no estimator (and so not Lightning), so that the benchmark's scoring workers,
which only load saved posteriors, start in seconds.
"""

import functools
import time
from pathlib import Path

import torch

from fmpe.benchmark.scoring import Scoring, get_metric
from fmpe.posteriors import Posterior
from fmpe.posteriors.file import load
from fmpe.tasks import Task, get_task

NUM_SAMPLES = 10_000


def evaluate(
    posterior: Posterior, task: Task, observation: int, seed: int, num_samples: int = NUM_SAMPLES
) -> dict:
    """Scores the posterior on one observation with every metric the task declares: a column
    per metric, or per key of a metric that returns a dict."""
    x = task.observation(observation).to(posterior.device)
    torch.manual_seed(seed)
    start = time.perf_counter()
    samples, cost = posterior.sample(num_samples, x, return_cost=True)
    sample_seconds = time.perf_counter() - start
    scoring = Scoring(posterior, task, observation, x, samples.cpu(), seed, posterior.device)
    scores: dict[str, float] = {}
    for name in task.metrics:
        value = get_metric(name)(scoring)
        scores.update(value if isinstance(value, dict) else {name: value})
    return {
        **scores,
        "acceptance_rate": cost.acceptance_rate,
        "sample_seconds": round(sample_seconds, 3),
        "evaluations": cost.evaluations,
    }


@functools.lru_cache(maxsize=1)
def _saved_posterior(path: Path, task_name: str, device: str) -> Posterior:
    return load(path, prior=get_task(task_name).prior, device=device)


def evaluate_saved(
    path: Path, task_name: str, device: str, observation: int, seed: int, num_samples: int
) -> dict:
    """`evaluate` in a scoring worker, on the posterior saved at `path` (loaded once)."""
    posterior = _saved_posterior(path, task_name, device)
    return evaluate(posterior, get_task(task_name), observation, seed, num_samples)
