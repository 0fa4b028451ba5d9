"""Evaluating a posterior on many (θ*, x) pairs, a chunk of observations per batched call.

A posterior is anything with the methods of `fmpe.Posterior` for a batch of observations:
`sample(n, x)` -> (n, b, d), `log_prob(theta, x)` with theta (n, b, d) -> (n, b), and
`sample_and_log_prob(n, x)` -> both, each accepting `show_progress=`.
"""

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from fmpe.checks import as_count, as_float_tensor, check_shape


class BatchedPosterior(Protocol):
    def sample(self, n: int, x: Tensor, *, show_progress: bool = ...) -> Tensor: ...

    def log_prob(self, theta: Tensor, x: Tensor, *, show_progress: bool = ...) -> Tensor: ...

    def sample_and_log_prob(
        self, n: int, x: Tensor, *, show_progress: bool = ...
    ) -> tuple[Tensor, Tensor]: ...


def check_pairs(thetas: Tensor | np.ndarray, xs: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """thetas (N, d) and xs (N, *x_shape) as float tensors, with a ValueError otherwise.

    thetas come back on the CPU (each chunk is moved to the posterior's device when used);
    xs stay where they are, on the device the posterior expects.
    """
    thetas = as_float_tensor(thetas, "thetas").detach().cpu()
    xs = as_float_tensor(xs, "xs")
    check_shape(thetas, (None, None), "thetas")
    if len(thetas) == 0:
        raise ValueError("thetas is empty; pass at least one (θ*, x) pair")
    if xs.dim() == 0 or len(xs) != len(thetas):
        raise ValueError(
            f"xs must have shape ({len(thetas)}, *x_shape), one observation per row of thetas "
            f"{tuple(thetas.shape)}; got {tuple(xs.shape)}"
        )
    if not torch.isfinite(thetas).all():
        raise ValueError("thetas contains NaN or infinite values")
    return thetas, xs


def observation_chunks(
    num_observations: int, chunk_size: int, show_progress: bool, desc: str
) -> Iterator[slice]:
    """Consecutive slices of at most chunk_size observations, with one progress bar over all
    observations that advances after each chunk is processed."""
    as_count(chunk_size, "chunk_size", minimum=1)
    with tqdm(total=num_observations, desc=desc, disable=not show_progress) as bar:
        for start in range(0, num_observations, chunk_size):
            stop = min(start + chunk_size, num_observations)
            yield slice(start, stop)
            bar.update(stop - start)


def draw_samples(posterior: BatchedPosterior, n: int, x: Tensor, theta_dim: int) -> Tensor:
    """posterior.sample(n, x) for x (b, *x_shape), checked to be (n, b, d)."""
    samples = posterior.sample(n, x, show_progress=False)
    check_shape(samples, (n, len(x), theta_dim), "posterior.sample(n, x) for a batch x")
    return samples


def draw_samples_and_log_prob(
    posterior: BatchedPosterior, n: int, x: Tensor, theta_dim: int
) -> tuple[Tensor, Tensor]:
    """posterior.sample_and_log_prob(n, x), checked to be (n, b, d) and (n, b) without NaN."""
    samples, log_prob = posterior.sample_and_log_prob(n, x, show_progress=False)
    check_shape(samples, (n, len(x), theta_dim), "posterior.sample_and_log_prob samples")
    check_shape(log_prob, (n, len(x)), "posterior.sample_and_log_prob log_prob")
    _check_no_nan(log_prob, "posterior.sample_and_log_prob")
    return samples, log_prob


def true_log_prob(posterior: BatchedPosterior, theta: Tensor, x: Tensor) -> Tensor:
    """log q(θ*_i | x_i) for theta (b, d) and x (b, *x_shape): (b,)"""
    log_prob = posterior.log_prob(theta.to(x.device).unsqueeze(0), x, show_progress=False)
    check_shape(log_prob, (1, len(x)), "posterior.log_prob(theta (1, b, d), x)")
    _check_no_nan(log_prob, "posterior.log_prob")
    return log_prob[0]


def _check_no_nan(log_prob: Tensor, method: str) -> None:
    if torch.isnan(log_prob).any():
        raise ValueError(f"{method} returned NaN log densities; they cannot be ranked")
