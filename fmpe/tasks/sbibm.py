"""sbibm's tasks wrapped as `Task`s, delegating to sbibm's own task objects.

sbibm itself is imported lazily, so ``fmpe.tasks`` works without the optional dependency.
sir and lotka_volterra cannot be imported from sbibm (they need Julia) and have their own
modules; slcp_distractors and the two Bernoulli GLM tasks subclass `SbibmTask` to simulate
efficiently.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.distributions import Distribution

from fmpe.tasks.base import Task
from fmpe.tasks.priors import masked
from fmpe.tasks.shipped import SBIBM_METRICS, SBIBM_MISSING

WRAPPED_TASKS = (
    "gaussian_linear",
    "gaussian_linear_uniform",
    "gaussian_mixture",
    "two_moons",
    "slcp",
)


@contextmanager
def default_validation(enabled: bool) -> Iterator[None]:
    """Set torch.distributions' global default for argument validation, then restore it.

    sbibm switches validation off globally whenever a task is built; here that stays local.
    """
    previous = Distribution._validate_args
    Distribution.set_default_validate_args(enabled)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(previous)


class SbibmTask(Task):
    """The sbibm task ``name`` (e.g. one of `WRAPPED_TASKS`).

    The prior is sbibm's, with ``log_prob`` made ``-inf`` outside the support (sbibm's own
    raises there while argument validation is on). Simulations run as in sbibm: in float32,
    with validation off.
    """

    metrics = SBIBM_METRICS

    def __init__(self, name: str) -> None:
        try:
            import sbibm
        except ImportError as error:
            raise ImportError(SBIBM_MISSING) from error
        with default_validation(False):
            self._task = sbibm.get_task(name)
            self._simulator = self._task.get_simulator()
        self.name = name
        self.theta_dim = self._task.dim_parameters
        self.x_shape = (self._task.dim_data,)
        self.num_observations = self._task.num_observations
        self.prior = masked(self._task.get_prior_dist())

    def _simulate(self, theta: Tensor) -> Tensor:
        with default_validation(False):
            return self._simulator(theta.to(torch.float32))

    def observation(self, i: int) -> Tensor:
        self._check_observation(i)
        return self._task.get_observation(num_observation=i).reshape(self.x_shape)

    def true_parameters(self, i: int) -> Tensor:
        self._check_observation(i)
        return self._task.get_true_parameters(num_observation=i).reshape(self.theta_dim)

    def reference_samples(self, i: int) -> Tensor:
        self._check_observation(i)
        return self._task.get_reference_posterior_samples(num_observation=i)
