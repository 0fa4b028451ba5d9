"""The Gaussian likelihood of whitened frequency-domain data."""

import math

import torch
from torch import Tensor


def whitened_log_likelihood(data: Tensor, signal: Tensor) -> Tensor:
    """log p(d | h) for whitened data d = h + n, every real number of n standard normal.

    log L = -1/2 Σ |d - h|² - (m / 2) ln(2π), where m counts the real numbers in one data set
    (twice the number of bins for complex data): a normalized density of the real and
    imaginary parts.

    Args:
        data, signal: (n, ...) of the same shape, both real or both complex.

    Returns:
        (n,)
    """
    if data.shape != signal.shape:
        raise ValueError(
            f"data and signal must have the same shape, got {tuple(data.shape)} "
            f"and {tuple(signal.shape)}"
        )
    residual = data - signal
    if residual.is_complex():
        residual = torch.view_as_real(residual)
    residual = residual.reshape(residual.shape[0], -1)
    return -0.5 * residual.square().sum(-1) - residual.shape[1] / 2 * math.log(2 * math.pi)
