"""How fast fmpe simulates projected gravitational-wave data, against a LALSuite loop.

    uv run python benchmarks/gw_simulator.py [--threads 1 2] [--batch-sizes 100 1000 10000]
                                              [--no-compile]

Measures noise-free whitened H1 + L1 waveforms per second at the GW task's size (20-128 Hz,
Δf = 0.25 Hz: 433 bins per detector), with parameters drawn from the task's prior:

- lal loop: one waveform at a time, as with LALSuite: `SimInspiralChooseFDWaveform` (TaylorF2),
  then per detector `ComputeDetAMResponse`, `TimeDelayFromEarthCenter` and the time shift and
  whitening in numpy (single-threaded); every `vs lal` divides by this rate;
- lal polarizations only: the same loop stopping after `SimInspiralChooseFDWaveform`, an upper
  bound on the speed of any LAL-based loop;
- fmpe naive: fmpe.gw's batched building blocks composed directly (`taylorf2`, then
  `detector_strain` and `whiten` per detector);
- fmpe simulator: `GWSimulator.waveforms` (phase from precomputed powers of f, one cosine per
  real number, in-place arithmetic);
- fmpe simulator compiled: the same under `torch.compile` (float32 only; compile time is in
  the notes);
- fmpe simulator at the scale-up size (20-512 Hz, Δf = 0.125 Hz: 3937 bins per detector);
- on CUDA, when available: `GWSimulator.waveforms` on the GPU.

Each rate is the median of 5 timings of repeated calls lasting at least 0.2 s each. Appends
rows to benchmarks/results/gw_simulator.csv (each naming its machine and the 1-minute load
average when it was measured) and rewrites gw_simulator.md from all rows there.
"""

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import fmpe.gw as gw
from fmpe.benchmark import RowLog, markdown_table, provenance

RESULTS = Path(__file__).parent / "results"
GPS_GW150914 = 1126259462.391
REPEATS = 5
MIN_SECONDS = 0.2
LAL_WAVEFORMS = 2000
GPU_BATCH_SIZES = (1_000, 10_000, 100_000)
# The scale-up: 20-512 Hz, Δf = 0.125 Hz, chirp masses down to 8 (6.9 s from 20 Hz).
WIDE_BOUNDS = {"chirp_mass": (8.0, 30.0)}
WIDE_BATCH_SIZE = 1_000
FIELDS = (
    "variant",
    "dtype",
    "device",
    "threads",
    "batch_size",
    "waveforms_per_second",
    "vs_lal",
    "notes",
    "load_average",
    "machine",
    "fmpe_version",
    "finished_at",
)


def waveforms_per_second(
    function: Callable[[], object], batch_size: int, synchronize: Callable[[], None] = lambda: None
) -> float:
    """Median over REPEATS of batch_size * calls / seconds, each timing at least MIN_SECONDS."""
    function()
    synchronize()
    rates = []
    for _ in range(REPEATS):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < MIN_SECONDS:
            function()
            synchronize()
            calls += 1
        rates.append(batch_size * calls / elapsed)
    return statistics.median(rates)


def lal_loop(theta: np.ndarray, simulator: gw.GWSimulator, project: bool = True) -> np.ndarray:
    """theta (n, 9) -> (n, detectors, 2, f), one waveform at a time through LALSuite.

    With project=False only the polarizations are made (an upper bound on any LAL loop's speed)
    and the result is (n, 2 polarizations, f) complex.
    """
    import lal
    import lalsimulation

    frequencies = simulator.frequencies.double().cpu().numpy()
    whitening = gw.whitening_factor(gw.aligo_psd(torch.from_numpy(frequencies)), 0.25).numpy()
    minus_two_pi_f = -2 * np.pi * frequencies
    first = round(frequencies[0] / simulator.delta_f)
    detectors = [lalsimulation.DetectorPrefixToLALDetector(name) for name in simulator.detectors]
    shape = simulator.x_shape if project else (2, len(frequencies))
    out = np.empty((len(theta), *shape), dtype=float if project else complex)
    responses = np.empty((len(detectors), 2))
    delays = np.empty((len(detectors), 1))
    for i, (chirp_mass, q, distance, t_c, phase, cos_i, psi, ra, sin_dec) in enumerate(theta):
        m1 = chirp_mass * (1 + q) ** 0.2 / q**0.6
        h_plus, h_cross = lalsimulation.SimInspiralChooseFDWaveform(
            m1 * lal.MSUN_SI, q * m1 * lal.MSUN_SI, 0, 0, 0, 0, 0, 0,
            distance * 1e6 * lal.PC_SI, math.acos(cos_i), phase, 0, 0, 0,
            simulator.delta_f, frequencies[0], 0.0, 0.0, None, lalsimulation.TaylorF2,
        )  # fmt: skip
        # LAL's series stop at f_ISCO; fmpe's bins above it are zero.
        polarizations = np.zeros((2, len(frequencies)), dtype=complex)
        length = min(h_plus.data.length - first, len(frequencies))
        polarizations[0, :length] = h_plus.data.data[first : first + length]
        polarizations[1, :length] = h_cross.data.data[first : first + length]
        if not project:
            out[i] = polarizations
            continue
        dec = math.asin(sin_dec)
        for j, detector in enumerate(detectors):
            responses[j] = lal.ComputeDetAMResponse(detector.response, ra, dec, psi, simulator.gmst)
            delays[j] = lal.TimeDelayFromEarthCenter(detector.location, ra, dec, GPS_GW150914)
        strain = responses @ polarizations * whitening
        strain *= np.exp(1j * minus_two_pi_f * (t_c + delays))
        out[i, :, 0], out[i, :, 1] = strain.real, strain.imag
    return out


def naive_waveforms(simulator: gw.GWSimulator, theta: torch.Tensor) -> torch.Tensor:
    """fmpe.gw's public functions composed without fusing: (n, 9) -> (n, detectors, 2, f)."""
    chirp_mass, q, distance, t_c, phase, cos_i, psi, ra, sin_dec = theta.unbind(-1)
    frequencies = simulator.frequencies
    h_plus, h_cross = gw.taylorf2(
        frequencies, *gw.component_masses(chirp_mass, q), distance, torch.acos(cos_i), phase
    )
    psd = gw.aligo_psd(frequencies)
    dec = torch.asin(sin_dec)
    strains = [
        gw.whiten(
            gw.detector_strain(
                h_plus, h_cross, frequencies, name, ra, dec, psi, simulator.gmst, t_c
            ),
            psd,
            simulator.delta_f,
        )
        for name in simulator.detectors
    ]
    return torch.stack([torch.stack([s.real, s.imag], 1) for s in strains], 1)


def write_table(rows: list[dict], path: Path) -> None:
    lines = [
        "# GW simulator speed",
        "",
        "Produced by `uv run python benchmarks/gw_simulator.py`; each row names its machine and",
        "the 1-minute load average when it was measured (a shared machine gives slower, noisier",
        "numbers). Noise-free whitened H1 + L1 waveforms per second, 20-128 Hz at Δf = 0.25 Hz",
        "(433 bins per detector), parameters from the GW task's prior. `vs lal` divides by the",
        "LALSuite loop (one waveform at a time, one core) of the same run.",
        "",
        *markdown_table(rows, FIELDS),
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 1_000, 10_000])
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / "gw_simulator.csv"

    def record(variant, dtype, device, threads, batch_size, rate, lal_rate, notes=""):
        row = {
            "variant": variant,
            "dtype": str(dtype).removeprefix("torch."),
            "device": device.type,
            "threads": str(threads),
            "batch_size": str(batch_size),
            "waveforms_per_second": f"{rate:.3g}",
            "vs_lal": f"{rate / lal_rate:.2f}" if lal_rate else "",
            "notes": notes,
            "load_average": f"{os.getloadavg()[0]:.2f}",
            **provenance(device),
        }
        print({k: row[k] for k in FIELDS[:8]}, flush=True)
        RowLog(path, FIELDS).add(row)

    cpu = torch.device("cpu")
    reference = gw.GWSimulator(dtype=torch.float64)
    torch.manual_seed(0)
    theta = reference.prior().sample((max(args.batch_sizes + [LAL_WAVEFORMS]),))

    lal_theta = theta[:LAL_WAVEFORMS].numpy()
    lal_rate = waveforms_per_second(lambda: lal_loop(lal_theta, reference), LAL_WAVEFORMS)
    agreement = np.abs(
        lal_loop(lal_theta[:100], reference) - reference.waveforms(theta[:100]).numpy()
    )
    notes = f"max abs difference from fmpe float64: {agreement.max():.1e} (whitened units)"
    record("lal loop", torch.float64, cpu, 1, 1, lal_rate, lal_rate, notes)
    rate = waveforms_per_second(lambda: lal_loop(lal_theta, reference, False), LAL_WAVEFORMS)
    notes = "SimInspiralChooseFDWaveform alone: no projection, no whitening"
    record("lal polarizations only", torch.float64, cpu, 1, 1, rate, lal_rate, notes)

    for threads in args.threads:
        torch.set_num_threads(threads)
        for dtype in (torch.float32, torch.float64):
            simulator = gw.GWSimulator(dtype=dtype)
            variants = {
                "fmpe naive": (lambda t, s=simulator: naive_waveforms(s, t), ""),
                "fmpe simulator": (simulator.waveforms, ""),
            }
            if dtype == torch.float32 and not args.no_compile:
                compiled = torch.compile(simulator.waveforms, dynamic=True)
                start = time.perf_counter()
                compiled(theta[: args.batch_sizes[0]].float())
                seconds = time.perf_counter() - start
                variants["fmpe simulator compiled"] = (compiled, f"compile {seconds:.0f} s")
            for batch_size in args.batch_sizes:
                batch = theta[:batch_size].to(dtype)
                for variant, (function, notes) in variants.items():
                    rate = waveforms_per_second(lambda f=function, b=batch: f(b), batch_size)
                    record(variant, dtype, cpu, threads, batch_size, rate, lal_rate, notes)

        for dtype in (torch.float32, torch.float64):
            wide = gw.GWSimulator(f_max=512.0, delta_f=0.125, bounds=WIDE_BOUNDS, dtype=dtype)
            batch = wide.prior().sample((WIDE_BATCH_SIZE,))
            rate = waveforms_per_second(lambda b=batch, f=wide.waveforms: f(b), WIDE_BATCH_SIZE)
            notes = "20-512 Hz at Δf = 0.125 Hz: 3937 bins per detector"
            record("fmpe simulator", dtype, cpu, threads, WIDE_BATCH_SIZE, rate, None, notes)

    if torch.cuda.is_available():
        device = torch.device("cuda")
        for dtype in (torch.float32, torch.float64):
            simulator = gw.GWSimulator(dtype=dtype, device=device)
            for batch_size in GPU_BATCH_SIZES:
                batch = simulator.prior().sample((batch_size,))
                rate = waveforms_per_second(
                    lambda f=simulator.waveforms, b=batch: f(b), batch_size, torch.cuda.synchronize
                )
                record("fmpe simulator", dtype, device, "", batch_size, rate, lal_rate)

    write_table(RowLog(path).rows(), args.results / "gw_simulator.md")


if __name__ == "__main__":
    main()
