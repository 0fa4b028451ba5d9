"""fmpe.gw against LALSuite (waveforms, antenna patterns, time delays, PSD) and against
independent numpy/scipy evaluations of the likelihood, the noise and the SNR."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import fmpe.gw as gw
from fmpe.gw.constants import GMST_GW150914

DELTA_F = 0.25
F_MIN, F_MAX = 20.0, 128.0
GPS_GW150914 = 1126259462.391
# Chirp masses and mass ratios over the task's prior; f_ISCO runs from 62 to 128 Hz.
CHIRP_MASSES = (15.0, 22.0, 30.0)
MASS_RATIOS = (0.5, 0.75, 1.0)
DISTANCES = (200.0, 1500.0)
INCLINATIONS = (0.0, 0.8, 1.5, 2.6)
PHASES = (0.0, 1.3, 4.0)


@pytest.fixture(scope="module")
def lal():
    pytest.importorskip("lalsimulation")
    import lal
    import lalsimulation

    return lal, lalsimulation


def grid_frequencies(f_min: float = F_MIN, f_max: float = F_MAX, delta_f: float = DELTA_F):
    return f_min + delta_f * torch.arange(round((f_max - f_min) / delta_f) + 1, dtype=torch.float64)


def lal_polarizations(lal, m1, m2, distance, inclination, phase, f_min=F_MIN, f_max=F_MAX):
    """LAL's TaylorF2 on the bins f_min..f_max, zero-padded where LAL stops at f_ISCO."""
    lal, lalsimulation = lal
    h_plus, h_cross = lalsimulation.SimInspiralChooseFDWaveform(
        m1 * lal.MSUN_SI,
        m2 * lal.MSUN_SI,
        *(0.0,) * 6,
        distance * 1e6 * lal.PC_SI,
        inclination,
        phase,
        0.0,
        0.0,
        0.0,
        DELTA_F,
        f_min,
        0.0,  # f_max = 0: end at f_ISCO, as fmpe does
        0.0,
        None,
        lalsimulation.TaylorF2,
    )
    first, last = round(f_min / DELTA_F), round(f_max / DELTA_F)
    out = []
    for series in (h_plus, h_cross):
        data = np.zeros(last + 1, dtype=complex)
        length = min(series.data.length, last + 1)
        data[:length] = series.data.data[:length]
        out.append(data[first:])
    return out


def waveform_grid():
    rows = [
        (
            *(float(m) for m in gw.component_masses(*torch.tensor([c, q], dtype=torch.float64))),
            d,
            i,
            p,
        )
        for c in CHIRP_MASSES
        for q in MASS_RATIOS
        for d in DISTANCES
        for i in INCLINATIONS
        for p in PHASES
    ]
    return torch.tensor(rows, dtype=torch.float64)


def test_taylorf2_matches_lal_in_float64(lal):
    parameters = waveform_grid()
    frequencies = grid_frequencies()
    h_plus, h_cross = gw.taylorf2(frequencies, *parameters.unbind(-1))
    assert h_plus.dtype == torch.complex128 and h_plus.shape == (len(parameters), 433)
    worst = 0.0
    for row, plus, cross in zip(parameters.tolist(), h_plus.numpy(), h_cross.numpy()):
        reference = lal_polarizations(lal, *row)
        for mine, theirs in zip((plus, cross), reference):
            inside = theirs != 0
            # LAL stops at f_ISCO: the same bins must be zero here, and none other.
            np.testing.assert_array_equal(mine != 0, inside)
            error = np.abs(mine[inside] - theirs[inside]) / np.abs(theirs[inside])
            worst = max(worst, error.max())
    assert worst <= 1e-6
    # The grid reaches f_ISCO inside the band, so the cut was exercised.
    assert (h_plus[:, -1] == 0).any()


def test_taylorf2_float32_is_close_to_float64():
    parameters = waveform_grid().float()
    frequencies = grid_frequencies()
    h_plus, h_cross = gw.taylorf2(frequencies.float(), *parameters.unbind(-1))
    assert h_plus.dtype == torch.complex64 and h_cross.dtype == torch.complex64
    exact_plus, exact_cross = gw.taylorf2(frequencies, *parameters.double().unbind(-1))
    scale = exact_plus.abs().amax(-1, keepdim=True)
    assert ((h_plus - exact_plus).abs() / scale).max() < 2e-4
    assert ((h_cross - exact_cross).abs() / scale).max() < 2e-4


def test_taylorf2_rejects_bad_input():
    frequencies = grid_frequencies()
    ones = torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="same shape"):
        gw.taylorf2(frequencies, 30 * ones, 25 * ones, 400 * ones[:2], ones, ones)
    with pytest.raises(ValueError, match="positive"):
        gw.taylorf2(frequencies - 20, 30 * ones, 25 * ones, 400 * ones, ones, ones)
    with pytest.raises(ValueError, match="1-D"):
        gw.taylorf2(frequencies[None], 30 * ones, 25 * ones, 400 * ones, ones, ones)


def test_component_masses_match_the_definitions():
    chirp_mass = torch.tensor([15.0, 22.0, 30.0], dtype=torch.float64)
    mass_ratio = torch.tensor([0.5, 0.8, 1.0], dtype=torch.float64)
    m1, m2 = gw.component_masses(chirp_mass, mass_ratio)
    assert (m1 >= m2).all()
    torch.testing.assert_close(m2 / m1, mass_ratio)
    torch.testing.assert_close((m1 * m2) ** 0.6 / (m1 + m2) ** 0.2, chirp_mass)
    back = gw.chirp_mass_and_mass_ratio(m1, m2)
    torch.testing.assert_close(back[0], chirp_mass)
    torch.testing.assert_close(back[1], mass_ratio)


def sky(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0, 2 * np.pi, n)
    dec = np.arcsin(rng.uniform(-1, 1, n))
    psi = rng.uniform(0, np.pi, n)
    return ra, dec, psi


@pytest.mark.parametrize("name", ["H1", "L1", "V1"])
@pytest.mark.parametrize("gps", [GPS_GW150914, 1187008882.4])
def test_antenna_patterns_and_time_delays_match_lal(lal, name, gps):
    lal, lalsimulation = lal
    detector = lalsimulation.DetectorPrefixToLALDetector(name)
    gmst = lal.GreenwichMeanSiderealTime(gps) % (2 * np.pi)
    ra, dec, psi = sky()
    reference = np.array(
        [lal.ComputeDetAMResponse(detector.response, *angles, gmst) for angles in zip(ra, dec, psi)]
    )
    f_plus, f_cross = gw.antenna_patterns(name, *map(torch.tensor, (ra, dec, psi)), gmst)
    assert f_plus.shape == f_cross.shape == (len(ra),)
    # LAL stores its response tensor in single precision.
    np.testing.assert_allclose(f_plus.numpy(), reference[:, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(f_cross.numpy(), reference[:, 1], rtol=0, atol=1e-6)

    delays = np.array(
        [lal.TimeDelayFromEarthCenter(detector.location, a, d, gps) for a, d in zip(ra, dec)]
    )
    mine = gw.time_delay(name, torch.tensor(ra), torch.tensor(dec), gmst)
    np.testing.assert_allclose(mine.numpy(), delays, rtol=0, atol=1e-8)
    np.testing.assert_allclose(gw.DETECTORS[name].position, detector.location, rtol=0, atol=1e-3)


def test_gmst_of_gw150914_matches_lal(lal):
    lal, _ = lal
    assert math.isclose(
        lal.GreenwichMeanSiderealTime(GPS_GW150914) % (2 * math.pi), GMST_GW150914, abs_tol=1e-12
    )


def test_unknown_detector_names_the_valid_ones():
    angles = torch.zeros(2)
    with pytest.raises(ValueError, match="H1, L1, V1"):
        gw.antenna_patterns("K1", angles, angles, angles, 0.0)
    with pytest.raises(ValueError, match="H1, L1, V1"):
        gw.time_delay("h1", angles, angles, 0.0)
    with pytest.raises(ValueError, match="H1, L1, V1"):
        gw.GWSimulator(detectors=("H1", "G1"))


def test_aligo_psd_is_within_four_percent_of_lals_design_curve(lal):
    lal, lalsimulation = lal
    series = lal.CreateREAL8FrequencySeries("psd", 0, 0.0, DELTA_F, lal.DimensionlessUnit, 8001)
    lalsimulation.SimNoisePSDaLIGOZeroDetHighPowerGWINC(series, 10.0)
    frequencies = DELTA_F * np.arange(series.data.length)
    # 20 Hz to 2 kHz, leaving out the tabulated curve's suspension resonance near 480 Hz.
    keep = (frequencies >= 20) & (frequencies < 2000) & (np.abs(frequencies - 480) > 10)
    ratio = gw.aligo_psd(torch.tensor(frequencies[keep])).numpy() / series.data.data[keep]
    assert np.abs(ratio - 1).max() < 0.04


def test_projected_whitened_strain_matches_a_lal_pipeline(lal):
    """GWSimulator's waveforms against LAL's polarizations, response and delays, combined and
    whitened in numpy."""
    lal_module, lalsimulation = lal
    simulator = gw.GWSimulator(dtype=torch.float64)
    torch.manual_seed(5)
    theta = simulator.prior().sample((12,))
    x = simulator.waveforms(theta).numpy()
    frequencies = simulator.frequencies.numpy()
    whitening = np.sqrt(4 * DELTA_F / gw.aligo_psd(simulator.frequencies).numpy())
    for row, data in zip(theta.tolist(), x):
        chirp_mass, q, distance, t_c, phase, cos_i, psi, ra, sin_dec = row
        m1, m2 = (
            float(m)
            for m in gw.component_masses(*torch.tensor([chirp_mass, q], dtype=torch.float64))
        )
        h_plus, h_cross = lal_polarizations(lal, m1, m2, distance, math.acos(cos_i), phase)
        dec = math.asin(sin_dec)
        for i, name in enumerate(simulator.detectors):
            detector = lalsimulation.DetectorPrefixToLALDetector(name)
            f_plus, f_cross = lal_module.ComputeDetAMResponse(
                detector.response, ra, dec, psi, GMST_GW150914
            )
            delay = -np.dot(detector.location, unit_vector(ra, dec)) / lal_module.C_SI
            strain = (f_plus * h_plus + f_cross * h_cross) * np.exp(
                -2j * np.pi * frequencies * (t_c + delay)
            )
            expected = strain * whitening
            # LAL's F_+ and F_x are single precision: 1e-6 of each polarization's amplitude.
            tolerance = 1e-6 * ((np.abs(h_plus) + np.abs(h_cross)) * whitening).max()
            assert np.abs(data[i, 0] - expected.real).max() <= tolerance
            assert np.abs(data[i, 1] - expected.imag).max() <= tolerance


def unit_vector(ra: float, dec: float) -> np.ndarray:
    """Earth-fixed direction towards a source at (ra, dec) at the GMST of GW150914."""
    hour_angle = GMST_GW150914 - ra
    return np.array(
        [
            math.cos(dec) * math.cos(hour_angle),
            -math.cos(dec) * math.sin(hour_angle),
            math.sin(dec),
        ]
    )


def test_simulator_agrees_with_taylorf2_and_detector_strain():
    simulator = gw.GWSimulator(dtype=torch.float64)
    torch.manual_seed(1)
    theta = simulator.prior().sample((50,))
    chirp_mass, q, distance, t_c, phase, cos_i, psi, ra, sin_dec = theta.unbind(-1)
    frequencies = simulator.frequencies
    h_plus, h_cross = gw.taylorf2(frequencies, *gw.component_masses(chirp_mass, q), distance,
                                  torch.acos(cos_i), phase)  # fmt: skip
    strains = [
        gw.whiten(
            gw.detector_strain(
                h_plus, h_cross, frequencies, name, ra, torch.asin(sin_dec), psi,
                GMST_GW150914, t_c,
            ),
            gw.aligo_psd(frequencies),
            DELTA_F,
        )
        for name in simulator.detectors
    ]  # fmt: skip
    expected = torch.stack([torch.stack([s.real, s.imag], 1) for s in strains], 1)
    torch.testing.assert_close(simulator.waveforms(theta), expected, rtol=0, atol=1e-10)

    single = gw.GWSimulator()
    x32 = single.waveforms(theta.float())
    assert x32.dtype == torch.float32
    scale = expected.abs().amax((1, 2, 3), keepdim=True)
    assert ((x32.double() - expected).abs() / scale).max() < 2e-4


def test_simulator_shapes_prior_and_scale_up():
    simulator = gw.GWSimulator()
    assert simulator.x_shape == (2, 2, 433)
    assert simulator.frequencies[0] == 20 and simulator.frequencies[-1] == 128
    prior = simulator.prior()
    theta = prior.sample((7,))
    assert theta.shape == (7, 9) and theta.dtype == torch.float32
    low, high = (torch.tensor(b) for b in zip(*gw.PRIOR_BOUNDS.values()))
    assert ((theta >= low) & (theta <= high)).all()
    assert torch.isfinite(prior.log_prob(theta)).all()
    assert simulator.simulate(theta).shape == (7, 2, 2, 433)

    wide = gw.GWSimulator(
        detectors=("H1", "L1", "V1"), f_max=512.0, delta_f=0.125, dtype=torch.float64,
        bounds={"chirp_mass": (8.0, 30.0)},
    )  # fmt: skip
    assert wide.x_shape == (3, 2, 3937)
    x = wide.waveforms(wide.prior().sample((3,)))
    assert x.shape == (3, 3, 2, 3937) and x.dtype == torch.float64
    assert wide.prior().base_dist.low[0] == 8.0


def test_simulator_chunks_give_the_same_waveforms():
    theta = gw.GWSimulator().prior().sample((40,)).double()
    whole = gw.GWSimulator(chunk_size=1000, dtype=torch.float64).waveforms(theta)
    chunked = gw.GWSimulator(chunk_size=16, dtype=torch.float64).waveforms(theta)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    # In float32 the matrix product of the phase (up to ~1e4 rad) is summed in an order that
    # the CPU's kernel picks by batch size; a phase error of ~1e-4 rad is float32's share.
    whole32 = gw.GWSimulator(chunk_size=1000).waveforms(theta.float())
    chunked32 = gw.GWSimulator(chunk_size=16).waveforms(theta.float())
    scale = whole.abs().max().item()
    torch.testing.assert_close(chunked32.double(), whole, rtol=0, atol=5e-4 * scale)
    torch.testing.assert_close(whole32.double(), whole, rtol=0, atol=5e-4 * scale)
    with pytest.raises(ValueError, match="chunk_size"):
        gw.GWSimulator(chunk_size=0)


def test_simulator_rejects_bad_input():
    simulator = gw.GWSimulator()
    with pytest.raises(ValueError, match=r"\(n, 9\)"):
        simulator.waveforms(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="x must have shape"):
        simulator.log_likelihood(simulator.prior().sample((3,)), torch.zeros(2, 2, 2, 433))
    with pytest.raises(ValueError, match="chirp_mass"):
        gw.GWSimulator(bounds={"chirpmass": (10.0, 20.0)})
    with pytest.raises(ValueError, match="low < high"):
        gw.GWSimulator(bounds={"mass_ratio": (1.0, 0.5)})
    with pytest.raises(ValueError, match="f_min"):
        gw.GWSimulator(f_min=200.0, f_max=128.0)


def test_log_likelihood_matches_scipy():
    simulator = gw.GWSimulator(dtype=torch.float64)
    generator = torch.Generator().manual_seed(2)
    theta = simulator.prior().sample((6,))
    x = simulator.simulate(theta, generator=generator)
    signal = simulator.waveforms(theta).numpy()
    expected = stats.norm.logpdf(x.numpy(), loc=signal).sum((1, 2, 3))
    np.testing.assert_allclose(simulator.log_likelihood(theta, x).numpy(), expected, rtol=1e-12)

    # One observed data set against many parameters.
    other = simulator.prior().sample((5,))
    expected = stats.norm.logpdf(x[0].numpy(), loc=simulator.waveforms(other).numpy())
    np.testing.assert_allclose(
        simulator.log_likelihood(other, x[0]).numpy(), expected.sum((1, 2, 3)), rtol=1e-12
    )

    # Complex data count each real and imaginary part.
    data = torch.complex(*torch.randn(2, 4, 30, dtype=torch.float64))
    mean = torch.complex(*torch.randn(2, 4, 30, dtype=torch.float64))
    expected = stats.norm.logpdf(data.real, mean.real) + stats.norm.logpdf(data.imag, mean.imag)
    np.testing.assert_allclose(
        gw.whitened_log_likelihood(data, mean).numpy(), expected.sum(-1), rtol=1e-12
    )
    with pytest.raises(ValueError, match="same shape"):
        gw.whitened_log_likelihood(data, mean[:, :10])


def test_whitened_noise_is_standard_normal_and_reproducible():
    noise = gw.whitened_noise((4000, 50), generator=torch.Generator().manual_seed(3))
    assert noise.dtype == torch.complex64
    for part in (noise.real.double().flatten(), noise.imag.double().flatten()):
        m = part.numel()
        assert abs(part.mean()) < 5 / math.sqrt(m)
        assert abs(part.var() - 1) < 5 * math.sqrt(2 / m)
    correlation = (noise.real.double() * noise.imag.double()).mean()
    assert abs(correlation) < 5 / math.sqrt(noise.numel())
    again = gw.whitened_noise((4000, 50), generator=torch.Generator().manual_seed(3))
    assert torch.equal(noise, again)

    simulator = gw.GWSimulator()
    theta = simulator.prior().sample((2000,))
    residual = simulator.simulate(theta) - simulator.waveforms(theta)
    assert abs(residual.double().mean()) < 5 / math.sqrt(residual.numel())
    assert abs(residual.double().var() - 1) < 5 * math.sqrt(2 / residual.numel())


def test_snr_matches_its_formula():
    frequencies = grid_frequencies()
    psd = gw.aligo_psd(frequencies).numpy()
    simulator = gw.GWSimulator(dtype=torch.float64)
    theta = simulator.prior().sample((8,))
    chirp_mass, q, distance, t_c, phase, cos_i, psi, ra, sin_dec = theta.unbind(-1)
    h_plus, h_cross = gw.taylorf2(frequencies, *gw.component_masses(chirp_mass, q), distance,
                                  torch.acos(cos_i), phase)  # fmt: skip
    squared = 0.0
    for name in simulator.detectors:
        strain = gw.detector_strain(
            h_plus, h_cross, frequencies, name, ra, torch.asin(sin_dec), psi, GMST_GW150914, t_c
        )
        rho = gw.optimal_snr(strain, gw.aligo_psd(frequencies), DELTA_F).numpy()
        formula = np.sqrt((4 * DELTA_F * np.abs(strain.numpy()) ** 2 / psd).sum(-1))
        np.testing.assert_allclose(rho, formula, rtol=1e-12)
        squared = squared + formula**2
    np.testing.assert_allclose(simulator.snr(theta).numpy(), np.sqrt(squared), rtol=1e-10)


def test_snr_of_the_reference_source():
    """Face-on and overhead (F_+ = 1), M_c = 20, q = 0.8 at 1 Gpc gives an SNR of about 30."""
    m1, m2 = gw.component_masses(*torch.tensor([[20.0], [0.8]], dtype=torch.float64))
    frequencies = grid_frequencies()
    zero = torch.zeros(1, dtype=torch.float64)
    h_plus, _ = gw.taylorf2(frequencies, m1, m2, 1000 + zero, zero, zero)
    snr = gw.optimal_snr(h_plus, gw.aligo_psd(frequencies), DELTA_F)
    assert 29 < snr.item() < 31


def test_log_likelihood_is_differentiable():
    simulator = gw.GWSimulator(dtype=torch.float64)
    torch.manual_seed(4)
    theta = simulator.prior().sample((2,))
    x = simulator.simulate(theta[:1])[0]
    theta.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: simulator.log_likelihood(t, x), (theta,), eps=1e-7, atol=1e-4, rtol=1e-4
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_simulator_on_cuda_matches_cpu():
    cpu = gw.GWSimulator(dtype=torch.float64)
    cuda = gw.GWSimulator(dtype=torch.float64, device="cuda")
    theta = cpu.prior().sample((100,))
    torch.testing.assert_close(cuda.waveforms(theta).cpu(), cpu.waveforms(theta))
    generator = torch.Generator(device="cuda").manual_seed(0)
    assert cuda.simulate(theta, generator=generator).device.type == "cuda"
