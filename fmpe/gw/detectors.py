"""Ground-based interferometers: geometry, antenna patterns, arrival times, projected strain.

Geometry and conventions follow LAL (`lal.CachedDetectors`, `XLALComputeDetAMResponse`,
`XLALTimeDelayFromEarthCenter`). Sky positions are equatorial (right ascension, declination),
turned into Earth-fixed coordinates by the Greenwich mean sidereal time (GMST) of the event;
the Earth's rotation during a signal is neglected.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from fmpe.gw.constants import SPEED_OF_LIGHT


@dataclass(frozen=True)
class Detector:
    """An L-shaped interferometer on the Earth.

    Attributes:
        name: the two-character prefix, e.g. "H1".
        latitude, longitude: geodetic, in degrees (East positive).
        x_azimuth, y_azimuth: arm directions in radians, from North towards East (LAL's
            convention; bilby measures from East towards North, so az_LAL = π/2 - az_bilby).
        x_altitude, y_altitude: arm tilts above the local horizontal, radians.
        position: geocentric Earth-fixed vertex position (x, y, z) in metres.
    """

    name: str
    latitude: float
    longitude: float
    x_azimuth: float
    y_azimuth: float
    x_altitude: float
    y_altitude: float
    position: tuple[float, float, float]

    def arm(self, azimuth: float, altitude: float) -> tuple[float, float, float]:
        """Earth-fixed unit vector of an arm with the given azimuth and altitude."""
        latitude, longitude = math.radians(self.latitude), math.radians(self.longitude)
        north = math.cos(altitude) * math.cos(azimuth)
        east = math.cos(altitude) * math.sin(azimuth)
        up = math.sin(altitude)
        rho = -math.sin(latitude) * north + math.cos(latitude) * up
        return (
            math.cos(longitude) * rho - math.sin(longitude) * east,
            math.sin(longitude) * rho + math.cos(longitude) * east,
            math.cos(latitude) * north + math.sin(latitude) * up,
        )

    @cached_property
    def response_tensor(self) -> tuple[tuple[float, ...], ...]:
        """D = (u u^T - w w^T) / 2 for the x-arm u and y-arm w, as a 3 x 3 nested tuple."""
        u = self.arm(self.x_azimuth, self.x_altitude)
        w = self.arm(self.y_azimuth, self.y_altitude)
        return tuple(tuple((u[i] * u[j] - w[i] * w[j]) / 2 for j in range(3)) for i in range(3))


DETECTORS: dict[str, Detector] = {
    detector.name: detector
    for detector in (
        Detector(
            "H1",
            46.455147,
            -119.407657,
            5.654877,
            4.084081,
            -6.195e-4,
            1.25e-5,
            (-2161414.92636, -3834695.17889, 4600350.22664),
        ),
        Detector(
            "L1",
            30.562894,
            -90.774240,
            4.403178,
            2.832381,
            -3.121e-4,
            -6.107e-4,
            (-74276.0447238, -5496283.71971, 3224257.01744),
        ),
        Detector(
            "V1",
            43.631414,
            10.504497,
            0.339163,
            5.051552,
            0.0,
            0.0,
            (4546374.099, 842989.697626, 4378576.96241),
        ),
    )
}


def get_detector(name: str) -> Detector:
    """The detector called `name` ("H1", "L1" or "V1")."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; valid detectors: {', '.join(DETECTORS)}")
    return DETECTORS[name]


def antenna_patterns(
    detector: str, ra: Tensor, dec: Tensor, psi: Tensor, gmst: float | Tensor
) -> tuple[Tensor, Tensor]:
    """The detector's response F_+, F_x to the two polarizations of a wave from (ra, dec).

    Args:
        detector: "H1", "L1" or "V1".
        ra, dec: (n,) right ascension and declination, radians.
        psi: (n,) polarization angle, radians.
        gmst: Greenwich mean sidereal time, radians (a number or a tensor broadcastable to (n,)).

    Returns:
        f_plus, f_cross: (n,) each, in the dtype of `ra`.
    """
    f_plus, f_cross = network_antenna_patterns((detector,), ra, dec, psi, gmst)
    return f_plus[:, 0], f_cross[:, 0]


def network_antenna_patterns(
    detectors: Sequence[str], ra: Tensor, dec: Tensor, psi: Tensor, gmst: float | Tensor
) -> tuple[Tensor, Tensor]:
    """`antenna_patterns` of several detectors at once: f_plus, f_cross (n, detectors) each."""
    responses = [get_detector(name).response_tensor for name in detectors]
    responses = torch.tensor(responses, dtype=ra.dtype, device=ra.device)
    hour_angle = gmst - ra
    sin_h, cos_h = torch.sin(hour_angle), torch.cos(hour_angle)
    sin_d, cos_d = torch.sin(dec), torch.cos(dec)
    sin_p, cos_p = torch.sin(psi), torch.cos(psi)
    # The wave's polarization axes X, Y in Earth-fixed coordinates.
    x = torch.stack(
        [
            -cos_p * sin_h - sin_p * cos_h * sin_d,
            -cos_p * cos_h + sin_p * sin_h * sin_d,
            sin_p * cos_d,
        ],
        dim=-1,
    )
    y = torch.stack(
        [
            sin_p * sin_h - cos_p * cos_h * sin_d,
            sin_p * cos_h + cos_p * sin_h * sin_d,
            cos_p * cos_d,
        ],
        dim=-1,
    )
    response_x = torch.einsum("nj,dij->ndi", x, responses)
    response_y = torch.einsum("nj,dij->ndi", y, responses)
    f_plus = (response_x * x[:, None]).sum(-1) - (response_y * y[:, None]).sum(-1)
    f_cross = 2 * (response_x * y[:, None]).sum(-1)  # D is symmetric: X^T D Y = Y^T D X
    return f_plus, f_cross


def time_delay(detector: str, ra: Tensor, dec: Tensor, gmst: float | Tensor) -> Tensor:
    """Arrival time at the detector minus arrival time at the geocentre, in seconds.

    Args:
        detector: "H1", "L1" or "V1".
        ra, dec: (n,) radians.
        gmst: radians, a number or a tensor broadcastable to (n,).

    Returns:
        (n,) in the dtype of `ra`.
    """
    return network_time_delays((detector,), ra, dec, gmst)[:, 0]


def network_time_delays(
    detectors: Sequence[str], ra: Tensor, dec: Tensor, gmst: float | Tensor
) -> Tensor:
    """`time_delay` of several detectors at once: (n, detectors) seconds."""
    positions = [get_detector(name).position for name in detectors]
    positions = torch.tensor(positions, dtype=ra.dtype, device=ra.device)
    hour_angle = gmst - ra
    cos_d = torch.cos(dec)
    towards_source = torch.stack(
        [cos_d * torch.cos(hour_angle), -cos_d * torch.sin(hour_angle), torch.sin(dec)], dim=-1
    )
    return -(towards_source @ positions.T) / SPEED_OF_LIGHT


def detector_strain(
    h_plus: Tensor,
    h_cross: Tensor,
    frequencies: Tensor,
    detector: str,
    ra: Tensor,
    dec: Tensor,
    psi: Tensor,
    gmst: float | Tensor,
    time_of_arrival: Tensor,
) -> Tensor:
    """The strain h_I(f) a detector records from a wave that reaches the geocentre at a time.

    h_I(f) = (F_+ h_+(f) + F_x h_x(f)) exp(-2πi f (t + Δt_I)).

    Args:
        h_plus, h_cross: (n, f) complex polarizations with coalescence at t = 0.
        frequencies: (f,) Hz.
        detector: "H1", "L1" or "V1".
        ra, dec, psi: (n,) radians.
        gmst: radians.
        time_of_arrival: (n,) geocentric coalescence time t, seconds.

    Returns:
        (n, f) complex.
    """
    f_plus, f_cross = antenna_patterns(detector, ra, dec, psi, gmst)
    delay = time_of_arrival + time_delay(detector, ra, dec, gmst)
    shift = torch.polar(torch.ones_like(h_plus.real), -2 * math.pi * delay[:, None] * frequencies)
    return (f_plus[:, None] * h_plus + f_cross[:, None] * h_cross) * shift
