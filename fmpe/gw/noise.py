"""Detector noise: the Advanced LIGO design sensitivity, whitening, Gaussian noise, SNR.

Stationary Gaussian noise of one-sided power spectral density S_n(f) has, in a frequency bin of
width Δf, independent real and imaginary parts of variance S_n / (4 Δf). Multiplying by
sqrt(4 Δf / S_n) (whitening) makes both parts standard normal.
"""

import torch
from torch import Tensor


def aligo_psd(frequencies: Tensor) -> Tensor:
    """Advanced LIGO's zero-detuned high-power design PSD, the analytic fit of Ajith (2011).

    Within a few per cent of the tabulated design curve for 20-2000 Hz; poor below 20 Hz.

    Args:
        frequencies: (f,) positive, Hz.

    Returns:
        (f,) one-sided PSD in 1/Hz.
    """
    if not bool((frequencies > 0).all()):
        raise ValueError("the PSD needs positive frequencies (in Hz)")
    x = frequencies / 245.4
    return 1e-48 * (
        0.0152 * x**-4 + 0.2935 * x ** (9 / 4) + 2.7951 * x**1.5 - 6.5080 * x**0.75 + 17.7622
    )


def whitening_factor(psd: Tensor, delta_f: float) -> Tensor:
    """sqrt(4 Δf / S_n), (f,) -> (f,): the factor that makes noise standard normal."""
    return torch.sqrt(4 * delta_f / psd)


def whiten(strain: Tensor, psd: Tensor, delta_f: float) -> Tensor:
    """h_w = h sqrt(4 Δf / S_n). strain: (..., f), psd: (f,) -> (..., f)."""
    return strain * whitening_factor(psd, delta_f)


def whitened_noise(
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Whitened frequency-domain Gaussian noise: real and imaginary parts each N(0, 1).

    Args:
        shape: e.g. (n, f).
        dtype: the real dtype of each part; the result is the matching complex dtype.

    Returns:
        complex tensor of `shape`.
    """
    parts = torch.randn((*shape, 2), generator=generator, dtype=dtype, device=device)
    return torch.view_as_complex(parts)


def optimal_snr(strain: Tensor, psd: Tensor, delta_f: float) -> Tensor:
    """The optimal signal-to-noise ratio sqrt(Σ_f 4 Δf |h(f)|² / S_n(f)).

    Args:
        strain: (..., f) complex.
        psd: (f,).

    Returns:
        (...)
    """
    return torch.sqrt((4 * delta_f * strain.abs() ** 2 / psd).sum(-1))
