"""Gravitational-wave physics in torch: TaylorF2 waveforms, detector response, noise.

Physics only: nothing here imports fmpe's training, tasks or networks. Conventions are
LALSuite's; see docs/gw_physics.md for what is modelled and how it was checked.
"""

from fmpe.gw.detectors import DETECTORS, Detector, antenna_patterns, detector_strain, time_delay
from fmpe.gw.likelihood import whitened_log_likelihood
from fmpe.gw.noise import aligo_psd, optimal_snr, whiten, whitened_noise, whitening_factor
from fmpe.gw.simulator import PRIOR_BOUNDS, GWSimulator
from fmpe.gw.waveform import (
    chirp_mass_and_mass_ratio,
    component_masses,
    isco_frequency,
    taylorf2,
)

__all__ = [
    "DETECTORS",
    "PRIOR_BOUNDS",
    "Detector",
    "GWSimulator",
    "aligo_psd",
    "antenna_patterns",
    "chirp_mass_and_mass_ratio",
    "component_masses",
    "detector_strain",
    "isco_frequency",
    "optimal_snr",
    "taylorf2",
    "time_delay",
    "whiten",
    "whitened_log_likelihood",
    "whitened_noise",
    "whitening_factor",
]
