"""TaylorF2: the non-spinning post-Newtonian inspiral in the frequency domain.

Conventions are LALSimulation's (`SimInspiralChooseFDWaveform` with approximant TaylorF2, zero
spins, f_ref = 0, f_max = 0): the 3.5PN stationary-phase phase, the Newtonian amplitude with
LAL's sign, and the waveform cut above the innermost stable circular orbit (ISCO) of a test
mass, f_ISCO = 1 / (6^(3/2) π M). The coalescence time is 0; a time shift t multiplies the
waveform by exp(-2πi f t) and is applied by `fmpe.gw.detectors.detector_strain`.

With v = (π M f)^(1/3) (M in seconds), the waveform is h(f) = A(f) exp(-i Θ(f)) with

    Θ(f) = Ψ(f) - 2 φ_ref - π/4,   Ψ(f) = 3 / (128 η v^5) Σ_k (φ_k + φ_k^l ln v) v^k.

Expanding ln v = (ln(π M) + ln f) / 3 makes Ψ linear in a fixed basis of functions of f,
Ψ = c @ B(f) + c_0 (`phase_basis`, `phase_coefficients`): a batch of phases is then one
matrix product with precomputed powers of f.
"""

import math

import torch
from torch import Tensor

from fmpe.gw.constants import EULER_GAMMA, MEGAPARSEC, SOLAR_MASS_LENGTH, SOLAR_MASS_TIME

PHASE_BASIS_SIZE = 8
"""Rows of `phase_basis`: f^(-5/3), f^(-1), f^(-2/3), f^(-1/3), ln f, f^(1/3), f^(1/3) ln f,
f^(2/3)."""


def component_masses(chirp_mass: Tensor, mass_ratio: Tensor) -> tuple[Tensor, Tensor]:
    """Component masses from the chirp mass and the mass ratio q = m2 / m1 <= 1.

    Args:
        chirp_mass: (n,) M_c = (m1 m2)^(3/5) / (m1 + m2)^(1/5).
        mass_ratio: (n,) q in (0, 1].

    Returns:
        mass_1, mass_2: (n,) each, with mass_1 >= mass_2, in the unit of `chirp_mass`.
    """
    mass_1 = chirp_mass * (1 + mass_ratio) ** 0.2 / mass_ratio**0.6
    return mass_1, mass_ratio * mass_1


def chirp_mass_and_mass_ratio(mass_1: Tensor, mass_2: Tensor) -> tuple[Tensor, Tensor]:
    """The inverse of `component_masses`: (n,), (n,) -> chirp mass (n,), q = m2 / m1 (n,)."""
    chirp_mass = (mass_1 * mass_2) ** 0.6 / (mass_1 + mass_2) ** 0.2
    return chirp_mass, mass_2 / mass_1


def isco_frequency(total_mass: Tensor) -> Tensor:
    """Gravitational-wave frequency (Hz) at the test-mass ISCO, (n,) solar masses -> (n,)."""
    return 1 / (6**1.5 * math.pi * SOLAR_MASS_TIME * total_mass)


def phase_basis(frequencies: Tensor) -> Tensor:
    """The functions of frequency that the TaylorF2 phase Ψ is linear in.

    Args:
        frequencies: (f,) positive, in Hz.

    Returns:
        (PHASE_BASIS_SIZE, f), in the dtype of `frequencies`.
    """
    _check_frequencies(frequencies)
    third = frequencies ** (1 / 3)
    log = torch.log(frequencies)
    return torch.stack(
        [
            frequencies ** (-5 / 3),
            1 / frequencies,
            1 / third**2,
            1 / third,
            log,
            third,
            third * log,
            third**2,
        ]
    )


def phase_coefficients(mass_1: Tensor, mass_2: Tensor) -> tuple[Tensor, Tensor]:
    """The stationary-phase phase Ψ(f) = coefficients @ phase_basis(f) + constant.

    Args:
        mass_1, mass_2: (n,) solar masses.

    Returns:
        coefficients: (n, PHASE_BASIS_SIZE); constant: (n,), radians.
    """
    total_mass = mass_1 + mass_2
    eta = mass_1 * mass_2 / total_mass**2
    pi = math.pi
    phi_2 = 3715 / 756 + 55 / 9 * eta
    phi_3 = -16 * pi
    phi_4 = 15293365 / 508032 + 27145 / 504 * eta + 3085 / 72 * eta**2
    phi_5 = pi * (38645 / 756 - 65 / 9 * eta)
    phi_5_log = 3 * phi_5
    phi_6 = (
        11583231236531 / 4694215680
        - 640 / 3 * pi**2
        - 6848 / 21 * (EULER_GAMMA + math.log(4))
        + (-15737765635 / 3048192 + 2255 / 12 * pi**2) * eta
        + 76055 / 1728 * eta**2
        - 127825 / 1296 * eta**3
    )
    phi_6_log = -6848 / 21
    phi_7 = pi * (77096675 / 254016 + 378515 / 1512 * eta - 74045 / 756 * eta**2)

    # v^k = a^(k/3) f^(k/3) and ln v = (ln a + ln f) / 3, with a = π M.
    a = pi * SOLAR_MASS_TIME * total_mass
    a_third = a ** (1 / 3)
    log_a = torch.log(a)
    newtonian = 3 / (128 * eta)
    coefficients = torch.stack(
        [
            newtonian / a ** (5 / 3),
            newtonian * phi_2 / a,
            newtonian * phi_3 / a_third**2,
            newtonian * phi_4 / a_third,
            newtonian * phi_5_log / 3,
            newtonian * a_third * (phi_6 + phi_6_log * log_a / 3),
            newtonian * a_third * phi_6_log / 3,
            newtonian * phi_7 * a_third**2,
        ],
        dim=-1,
    )
    return coefficients, newtonian * (phi_5 + phi_5_log * log_a / 3)


def amplitude_prefactor(mass_1: Tensor, mass_2: Tensor, luminosity_distance: Tensor) -> Tensor:
    """The factor A_0 of the Newtonian amplitude A(f) = A_0 f^(-7/6) (below f_ISCO).

    Args:
        mass_1, mass_2: (n,) solar masses.
        luminosity_distance: (n,) Mpc.

    Returns:
        (n,), negative (LAL's sign), in Hz^(-5/6) so that A(f) is in 1/Hz.
    """
    total_mass = mass_1 + mass_2
    eta = mass_1 * mass_2 / total_mass**2
    a = math.pi * SOLAR_MASS_TIME * total_mass
    # Written as metres per Mpc over distance to keep float32 away from 1e25.
    scale = -4 * SOLAR_MASS_LENGTH / MEGAPARSEC * SOLAR_MASS_TIME * math.sqrt(math.pi / 12)
    return scale * mass_1 * mass_2 / luminosity_distance * torch.sqrt(5 / (32 * eta)) / a ** (7 / 6)


def taylorf2(
    frequencies: Tensor,
    mass_1: Tensor,
    mass_2: Tensor,
    luminosity_distance: Tensor,
    inclination: Tensor,
    phase: Tensor,
) -> tuple[Tensor, Tensor]:
    """The two polarizations of the TaylorF2 waveform, as LAL's ChooseFDWaveform gives them.

    Args:
        frequencies: (f,) positive, in Hz.
        mass_1, mass_2: (n,) solar masses.
        luminosity_distance: (n,) Mpc.
        inclination: (n,) angle between the orbital angular momentum and the line of sight.
        phase: (n,) reference phase φ_ref (radians) at coalescence.

    Returns:
        h_plus, h_cross: (n, f) complex (complex64 for float32 input, complex128 for float64),
        in 1/Hz, zero above f_ISCO.
    """
    _check_batch(mass_1, mass_2, luminosity_distance, inclination, phase)
    coefficients, constant = phase_coefficients(mass_1, mass_2)
    angle = coefficients @ phase_basis(frequencies) + (constant - 2 * phase - math.pi / 4)[:, None]
    below_isco = frequencies <= isco_frequency(mass_1 + mass_2)[:, None]
    amplitude = torch.where(
        below_isco, amplitude_prefactor(mass_1, mass_2, luminosity_distance)[:, None], 0.0
    ) * frequencies ** (-7 / 6)
    real, imag = amplitude * torch.cos(angle), -amplitude * torch.sin(angle)
    cos_inclination = torch.cos(inclination)[:, None]
    plus = (1 + cos_inclination**2) / 2
    h_plus = torch.complex(plus * real, plus * imag)
    h_cross = torch.complex(cos_inclination * imag, -cos_inclination * real)  # -i cos ι h
    return h_plus, h_cross


def _check_frequencies(frequencies: Tensor) -> None:
    if frequencies.dim() != 1 or not frequencies.is_floating_point():
        raise ValueError(
            "frequencies must be a 1-D floating-point tensor (f,), got "
            f"shape {tuple(frequencies.shape)} and dtype {frequencies.dtype}"
        )
    if not bool((frequencies > 0).all()):
        raise ValueError("frequencies must all be positive (in Hz)")


def _check_batch(*parameters: Tensor) -> None:
    shapes = [tuple(p.shape) for p in parameters]
    if any(len(s) != 1 for s in shapes) or len(set(shapes)) != 1:
        raise ValueError(f"the waveform parameters must all have the same shape (n,), got {shapes}")
