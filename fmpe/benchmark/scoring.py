"""Benchmark metrics by name; each task declares which ones score it (`Task.metrics`).

A metric is a function of a `Scoring` (the posterior, the task, one observation and the
posterior samples drawn for it) that returns a number:

>>> def mean_error(s: Scoring) -> float:
...     return (s.samples.mean(0) - s.task.true_parameters(s.observation)).abs().mean().item()
>>> METRICS.register("mean_error", mean_error)

and a task with ``metrics = ("mean_error", ...)`` gets a results column of that name. A
metric that computes several numbers at once returns them as a dict instead, and the task
gets a column per key.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fmpe.metrics import c2st, mmd
from fmpe.posteriors import Posterior
from fmpe.registry import Registry
from fmpe.tasks import Task


@dataclass(frozen=True)
class Scoring:
    """What a metric may look at for one observation.

    Attributes:
        posterior: the trained posterior, on `device`.
        task: the task.
        observation: the observation's number.
        x: (*x_shape) the observation, on `device`.
        samples: (n, d) posterior samples for x, on the CPU.
        seed: the benchmark's seed.
    """

    posterior: Posterior
    task: Task
    observation: int
    x: Tensor
    samples: Tensor
    seed: int
    device: torch.device


Metric = Callable[[Scoring], float | dict[str, float]]
METRICS: Registry[Metric] = Registry("metric", "fmpe.benchmark.METRICS")


def register_metric(name: str, metric: Metric) -> None:
    """Makes `metric` available to tasks that list `name` in their `metrics`; the same as
    ``METRICS.register(name, metric)``."""
    METRICS.register(name, metric)


def get_metric(name: str) -> Metric:
    """The metric registered as `name`."""
    return METRICS.get(name)


def _reference(s: Scoring) -> Tensor:
    return s.task.reference_samples(s.observation)[: len(s.samples)]


def _c2st(s: Scoring) -> float:
    """C2ST against the task's reference samples, as sbibm defines it (0.5 is best)."""
    return c2st(_reference(s), s.samples, device=s.device)


def _mmd(s: Scoring) -> float:
    """Unbiased MMD² against the reference samples (Gaussian kernel, median bandwidth)."""
    return mmd(_reference(s), s.samples)


def _nltp(s: Scoring) -> float:
    """−log q(θ* | x) of the parameters that generated the observation."""
    theta = s.task.true_parameters(s.observation).to(s.device)
    return -s.posterior.log_prob(theta.unsqueeze(0), s.x).item()


register_metric("c2st", _c2st)
register_metric("mmd", _mmd)
register_metric("nltp", _nltp)
