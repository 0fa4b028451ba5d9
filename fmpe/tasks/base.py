"""The simulator plug-in interface: a prior, a simulator and, for benchmarks, observations."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor
from torch.distributions import Distribution


class NoReferenceSamplesError(LookupError):
    """Raised by `Task.reference_samples` for a task that ships no reference posterior."""


class Task(ABC):
    """A simulation-based inference problem.

    Attributes:
        name: the registry name, e.g. ``"two_moons"``.
        theta_dim: number of parameters d.
        x_shape: shape of one simulated data set.
        prior: distribution over ``(theta_dim,)``; ``sample((n,))`` gives ``(n, d)`` and
            ``log_prob(theta: (n, d))`` gives ``(n,)``, ``-inf`` outside ``prior.support``.
        num_observations: how many benchmark observations the task ships (0 if none);
            observations are numbered from 1.
        metrics: the names of the benchmark metrics that score a posterior on this task
            (registered in `fmpe.benchmark.METRICS`; each fills one results column, or
            several); sbibm's tasks, which ship reference samples, declare C2ST, MMD and
            −log q(θ*).
        augment_x: None, or ``augment(x, generator=None) -> x`` that the benchmark applies
            afresh to each training pair's x (e.g. noise added to noise-free simulations of
            `training_simulate`).

    Subclasses implement `_simulate`; `simulate` checks shapes around it.
    """

    name: str
    theta_dim: int
    x_shape: tuple[int, ...]
    prior: Distribution
    num_observations: int
    metrics: tuple[str, ...] = ("nltp",)
    augment_x = None

    def training_simulate(self, theta: Tensor) -> Tensor:
        """What the benchmark trains on (before `augment_x`): ``(n, d) -> (n, *x_shape)``."""
        return self.simulate(theta)

    def simulate(self, theta: Tensor) -> Tensor:
        """Run the simulator once per parameter vector.

        Args:
            theta: ``(n, theta_dim)``.

        Returns:
            ``(n, *x_shape)`` float32; rows for which the simulator failed may be NaN.
        """
        if theta.dim() != 2 or theta.shape[1] != self.theta_dim:
            shape = tuple(theta.shape)
            raise ValueError(
                f"{self.name}: theta must have shape (n, {self.theta_dim}), got {shape}"
            )
        x = self._simulate(theta)
        return x.reshape(theta.shape[0], *self.x_shape).to(torch.float32)

    @abstractmethod
    def _simulate(self, theta: Tensor) -> Tensor:
        """``theta: (n, theta_dim)`` -> ``(n, *x_shape)`` or anything reshapeable to it."""

    @abstractmethod
    def observation(self, i: int) -> Tensor:
        """The i-th benchmark observation, ``(*x_shape)``, for ``1 <= i <= num_observations``."""

    @abstractmethod
    def true_parameters(self, i: int) -> Tensor:
        """The parameters that generated observation i, ``(theta_dim,)``."""

    def reference_samples(self, i: int) -> Tensor:
        """Samples from the reference posterior given observation i, ``(m, theta_dim)``."""
        raise NoReferenceSamplesError(f"task {self.name!r} ships no reference posterior samples")

    def _check_observation(self, i: int) -> None:
        if not 1 <= i <= self.num_observations:
            raise ValueError(
                f"{self.name}: observation number must be in 1..{self.num_observations}, got {i}"
            )

    def __repr__(self) -> str:
        shapes = f"theta_dim={self.theta_dim}, x_shape={self.x_shape}"
        return f"{type(self).__name__}(name={self.name!r}, {shapes})"
