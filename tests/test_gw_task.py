"""The gw task (shapes, prior, noise, injections, likelihood), the SVD embedding, and the
smoke run of benchmarks/gw.py."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy import stats

import fmpe
import fmpe.gw as gw
from fmpe.benchmark import RowLog
from fmpe.benchmark.cards import load_card
from fmpe.gw import GWSimulator
from fmpe.networks.embeddings import EXACT_SVD_FEATURES, SVDEmbedding
from fmpe.standardize import Standardizer
from fmpe.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
# The reference's prior (shared/reference/gw.md), in the parameter order.
PRIOR_BOUNDS = [
    (15.0, 30.0),
    (0.5, 1.0),
    (200.0, 1500.0),
    (-0.05, 0.05),
    (0.0, 2 * math.pi),
    (-1.0, 1.0),
    (0.0, math.pi),
    (0.0, 2 * math.pi),
    (-1.0, 1.0),
]


@pytest.fixture(scope="module")
def task():
    return get_task("gw")


def test_shapes_and_prior(task):
    assert task.theta_dim == 9
    assert task.x_shape == (2, 2, 433)
    low, high = torch.tensor(PRIOR_BOUNDS, dtype=torch.float64).T
    torch.manual_seed(0)
    theta = task.prior.sample((5000,))
    assert theta.shape == (5000, 9)
    assert ((theta >= low) & (theta < high)).all()
    # Uniform over the box: every column's mean is the middle, and the density is constant.
    middle = ((low + high) / 2).float()
    width = (high - low).float()
    assert ((theta.mean(0) - middle).abs() < 0.03 * width).all()
    expected = -torch.log(high - low).sum().item()
    assert torch.allclose(task.prior.log_prob(theta).double(), torch.tensor(expected).double())
    assert task.simulate(theta[:3]).shape == (3, 2, 2, 433)


def test_training_data_are_noise_free_and_simulate_adds_unit_noise(task):
    torch.manual_seed(1)
    theta = task.prior.sample((300,))
    clean = task.training_simulate(theta)
    assert torch.equal(clean, task.training_simulate(theta))
    noise = (task.simulate(theta) - clean).double().flatten()
    assert abs(noise.mean().item()) < 5 / noise.numel() ** 0.5
    assert noise.var().item() == pytest.approx(1.0, abs=0.01)
    assert stats.kstest(noise[:20_000].numpy(), "norm").pvalue > 1e-3


def test_augment_x_draws_fresh_noise_and_is_reproducible_with_a_generator(task):
    torch.manual_seed(2)
    clean = task.training_simulate(task.prior.sample((50,)))
    first, second = task.augment_x(clean), task.augment_x(clean)
    assert not torch.allclose(first, second)
    residual = (first - clean).double()
    assert residual.var().item() == pytest.approx(1.0, abs=0.03)
    # Independent draws: the two noises are uncorrelated.
    correlation = np.corrcoef(residual.flatten(), (second - clean).double().flatten())[0, 1]
    assert abs(correlation) < 0.02
    same = [task.augment_x(clean, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*same)


def test_injections_are_reproducible_loud_enough_and_their_snr_is_recorded(task):
    assert task.num_observations >= 100
    again = get_task("gw")
    for i in (1, 50, task.num_observations):
        assert torch.equal(task.observation(i), again.observation(i))
        assert torch.equal(task.true_parameters(i), again.true_parameters(i))
    theta = torch.stack([task.true_parameters(i) for i in range(1, 101)]).double()
    low, high = torch.tensor(PRIOR_BOUNDS, dtype=torch.float64).T
    assert ((theta > low) & (theta < high)).all()
    snr = torch.tensor([task.snr(i) for i in range(1, 101)])
    assert (snr >= 8).all()
    # The SNR from the polarizations, the detector response and the PSD, taken one by one.
    frequencies = 20.0 + 0.25 * torch.arange(433, dtype=torch.float64)
    mass_1, mass_2 = gw.component_masses(theta[:, 0], theta[:, 1])
    h_plus, h_cross = gw.taylorf2(
        frequencies, mass_1, mass_2, theta[:, 2], torch.acos(theta[:, 5]), theta[:, 4]
    )
    psd = gw.aligo_psd(frequencies)
    squared = 0.0
    for detector in ("H1", "L1"):
        strain = gw.detector_strain(
            h_plus,
            h_cross,
            frequencies,
            detector,
            theta[:, 7],
            torch.asin(theta[:, 8]),
            theta[:, 6],
            gw.constants.GMST_GW150914,
            theta[:, 3],
        )
        squared = squared + gw.optimal_snr(strain, psd, 0.25) ** 2
    assert torch.allclose(snr, squared.sqrt().float(), rtol=1e-4)


def test_observations_are_signal_plus_unit_noise(task):
    theta = torch.stack([task.true_parameters(i) for i in range(1, 101)])
    x = torch.stack([task.observation(i) for i in range(1, 101)])
    noise = (x.double() - task._exact.waveforms(theta.double())).flatten()
    assert noise.var().item() == pytest.approx(1.0, abs=0.01)
    assert abs(noise.mean().item()) < 5 / noise.numel() ** 0.5


def test_the_likelihood_is_gaussian_and_peaks_at_the_true_parameters(task):
    i = max(range(1, 101), key=task.snr)
    x, truth = task.observation(i), task.true_parameters(i).double()
    residual = x.double() - task._exact.waveforms(truth[None])[0]
    expected = -0.5 * residual.square().sum() - residual.numel() / 2 * math.log(2 * math.pi)
    log_likelihood = task.log_likelihood(truth[None], x)
    assert log_likelihood.dtype == torch.float64
    assert log_likelihood.item() == pytest.approx(expected.item(), abs=1e-6)
    # A scan of the chirp mass peaks within its posterior width (M_c / SNR² is generous).
    grid = truth[0] + torch.linspace(-0.5, 0.5, 201, dtype=torch.float64)
    scan = truth.repeat(201, 1)
    scan[:, 0] = grid
    best = grid[task.log_likelihood(scan, x).argmax()]
    assert abs(best - truth[0]) < 0.02
    # No prior draw comes close to the truth's likelihood.
    torch.manual_seed(3)
    assert task.log_likelihood(task.prior.sample((2000,)), x).max() < log_likelihood - 50
    with pytest.raises(ValueError, match="one observation of shape"):
        task.log_likelihood(truth[None], x[None])


def standardized_waveforms(task, n: int, seed: int) -> tuple[torch.Tensor, Standardizer]:
    torch.manual_seed(seed)
    clean = task.training_simulate(task.prior.sample((n,)))
    return clean, Standardizer.fit(task.augment_x(clean))


def test_svd_embedding_fits_the_leading_singular_vectors_and_reconstructs_waveforms(task):
    clean, standardizer = standardized_waveforms(task, 2300, 4)
    train, held_out = standardizer(clean[:2000]), standardizer(clean[2000:])
    embedding = SVDEmbedding(task.x_shape, basis=128, hidden_widths=[32], width=16)
    random_error = None
    for fitted in (False, True):
        if fitted:
            embedding.fit_to_data(train)
        basis = embedding.basis.detach().double()  # (2, 128, 866)
        assert torch.allclose(basis @ basis.transpose(1, 2), torch.eye(128).double(), atol=1e-5)
        rows = held_out.reshape(300, 2, 866).double()
        coefficients = embedding.project(held_out).double()
        reconstructed = torch.einsum("nck,ckm->ncm", coefficients, basis)
        error = ((reconstructed - rows).norm(dim=-1) / rows.norm(dim=-1)).median()
        if not fitted:
            random_error = error
    assert error < 0.1
    assert random_error > 0.9
    # The same subspace as numpy's SVD of the second detector's rows.
    rows = train.reshape(2000, 2, 866)[:, 1].double().numpy()
    leading = np.linalg.svd(rows, full_matrices=False)[2][:128]
    fitted = embedding.basis[1].detach().double().numpy()
    assert np.allclose(fitted.T @ fitted, leading.T @ leading, atol=1e-4)


def test_svd_embedding_fit_is_randomized_above_the_exact_size_and_as_good():
    # The scale-up band: 2 x 3937 numbers per detector, above EXACT_SVD_FEATURES.
    simulator = GWSimulator(f_max=512.0, delta_f=0.125, bounds={"chirp_mass": (8.0, 30.0)})
    torch.manual_seed(6)
    clean = simulator.waveforms(simulator.prior().sample((700,)))
    train, held_out = clean[:600], clean[600:]
    features = 2 * 3937
    assert features > EXACT_SVD_FEATURES
    embedding = SVDEmbedding(simulator.x_shape, basis=64, hidden_widths=[16], width=8)
    state = torch.get_rng_state()
    embedding.fit_to_data(train)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's stream did not move
    basis = embedding.basis.detach().double()
    assert torch.allclose(basis @ basis.transpose(1, 2), torch.eye(64).double(), atol=1e-5)

    def held_out_error(basis: np.ndarray, channel: int) -> float:
        rows = held_out.reshape(100, 2, features)[:, channel].double().numpy()
        residual = rows - rows @ basis.T @ basis
        return float(np.median(np.linalg.norm(residual, axis=1) / np.linalg.norm(rows, axis=1)))

    for channel in (0, 1):
        rows = train.reshape(600, 2, features)[:, channel].double().numpy()
        exact = np.linalg.svd(rows, full_matrices=False)[2][:64]
        randomized_error = held_out_error(basis[channel].numpy(), channel)
        exact_error = held_out_error(exact, channel)
        assert randomized_error <= 1.01 * exact_error + 1e-4


def test_svd_embedding_rejects_bad_input(task):
    with pytest.raises(ValueError, match="basis must be an int in"):
        SVDEmbedding(task.x_shape, basis=900)
    embedding = SVDEmbedding(task.x_shape, basis=8, hidden_widths=[16], width=8)
    with pytest.raises(ValueError, match="fit_to_data needs x of shape"):
        embedding.fit_to_data(torch.zeros(20, 2, 433))
    with pytest.raises(ValueError, match="at least 8 rows"):
        embedding.fit_to_data(torch.zeros(4, *task.x_shape))


def test_a_posterior_with_the_svd_embedding_reloads_without_a_refit(task, tmp_path, monkeypatch):
    fits = []
    fit = SVDEmbedding.fit_to_data

    def counted_fit(self, x):
        fits.append(len(x))
        fit(self, x)

    monkeypatch.setattr(SVDEmbedding, "fit_to_data", counted_fit)
    torch.manual_seed(5)
    posterior = fmpe.NPE(
        task.training_simulate,
        task.prior,
        embedding_net={"name": "svd", "basis": 16, "hidden_widths": [32], "width": 16},
        network_options={"transforms": 2, "hidden_features": [32]},
    ).train(400, augment_x=task.augment_x, max_epochs=1, batch_size=100, show_progress=False)
    assert fits == [360]  # once, on the unaugmented training split
    path = tmp_path / "gw.fmpe"
    posterior.save(path)
    loaded = fmpe.load(path, prior=task.prior)
    assert fits == [360]
    trained = posterior.network.embedding_net.basis
    assert torch.equal(loaded.network.embedding_net.basis, trained)
    theta, x = task.true_parameters(1)[None], task.observation(1)
    assert torch.allclose(loaded.log_prob(theta, x), posterior.log_prob(theta, x))


def test_the_card_builds_fmpe_and_npe_with_the_svd_embedding():
    card = load_card("gw")
    model, _ = card.hyperparameters(100_000, "fmpe")
    assert model["embedding_net"]["name"] == "svd"
    assert model["network_options"]["theta_route"] == "gate"
    assert model["sigma_min"] == 1e-3 and model["time_prior_exponent"] == 1.0
    npe_model, _ = card.hyperparameters(100_000, "npe")
    assert npe_model["embedding_net"] == model["embedding_net"]


def test_the_smoke_run_of_the_comparison_writes_every_result(tmp_path):
    out = tmp_path / "results"
    command = [sys.executable, str(ROOT / "benchmarks" / "gw.py"), "--smoke", "--out", str(out)]
    command += ["--runs", str(tmp_path / "runs")]
    # --score-only stops before the costly steps; the full run then resumes from its results.
    subprocess.run([*command, "--score-only"], check=True, cwd=tmp_path, timeout=600)
    names = {p.name for p in out.iterdir()}
    assert {"gw_injections.csv", "gw_pp.png", "gw_is_efficiency.png"} <= names
    assert not {"gw_reference.csv", "gw_corner.png"} & names
    assert "Not run yet" in (out / "gw_summary.md").read_text()
    subprocess.run(command, check=True, cwd=tmp_path, timeout=600)
    names = {p.name for p in out.iterdir()}
    assert "Not run yet" not in (out / "gw_summary.md").read_text()
    for name in (
        "gw_injections.csv",
        "gw_reference.csv",
        "gw_jsd.csv",
        "gw_dynesty.csv",
        "gw_dynesty_repeat.csv",
        "gw_summary.md",
        "gw_pp.png",
        "gw_corner.png",
        "gw_is_efficiency.png",
    ):
        assert name in names
    jsd = {r["estimator"] for r in RowLog(out / "gw_jsd.csv").rows()}
    assert jsd == {"fmpe", "npe", "dynesty", "dynesty_repeat", "dynesty_runs", "reference_halves"}
    # dynesty's second run is another draw, not the first one again.
    first, second = (
        load_file(str(tmp_path / "runs" / f"gw_2000_seed0_{kind}1.safetensors"))["theta"]
        for kind in ("dynesty", "dynesty_repeat")
    )
    assert not torch.equal(first, second)


def test_the_coordinates_measurement_trains_box_and_r_once_per_estimator(tmp_path):
    out = tmp_path / "results"
    command = [sys.executable, str(ROOT / "benchmarks" / "gw.py"), "--smoke", "--coordinates"]
    command += ["--out", str(out), "--runs", str(tmp_path / "runs"), "--quiet"]
    subprocess.run(command, check=True, cwd=tmp_path, timeout=600)
    rows = RowLog(out / "gw_coordinates.csv").rows()
    assert sorted((r["estimator"], r["map_to_unbounded"]) for r in rows) == [
        ("fmpe", "False"), ("fmpe", "True"), ("npe", "False"), ("npe", "True"),
    ]  # fmt: skip
    assert all(math.isfinite(float(r["heldout_nll"])) for r in rows)
    chosen = {}  # estimator: whether its chosen row maps onto R
    for line in (out / "gw_coordinates.md").read_text().splitlines()[-4:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[6] == "yes":
            chosen[cells[0].lower()] = cells[2] == "yes"
    for name in ("fmpe", "npe"):  # the lower held-out −log q decides
        mine = [r for r in rows if r["estimator"] == name]
        best = min(mine, key=lambda r: float(r["heldout_nll"]))
        assert chosen[name] == (best["map_to_unbounded"] == "True")
    subprocess.run(command, check=True, cwd=tmp_path, timeout=600)  # resumes: trains nothing
    assert RowLog(out / "gw_coordinates.csv").rows() == rows


def test_the_t_theta_measurement_chooses_fmpe_s_embedding_by_validation_loss(tmp_path):
    out = tmp_path / "results"
    command = [sys.executable, str(ROOT / "benchmarks" / "gw.py"), "--smoke"]
    command += ["--t-theta-embedding", "--out", str(out), "--runs", str(tmp_path / "runs")]
    subprocess.run([*command, "--quiet"], check=True, cwd=tmp_path, timeout=600)
    rows = RowLog(out / "gw_t_theta_embedding.csv").rows()
    assert [(r["estimator"], r["map_to_unbounded"]) for r in rows] == [("fmpe", "False")] * 2
    widths = [json.loads(r["configuration"])["model"]["network_options"] for r in rows]
    assert [w["t_theta_widths"] for w in widths] == [[], [64, 128, 256]]
    best = min(rows, key=lambda r: float(r["validation_loss"]))
    table = (out / "gw_t_theta_embedding.md").read_text().splitlines()[-2:]
    chosen = [line.split("|")[3].strip() for line in table if "| yes |" in line]
    assert chosen == ["residual net 64-128-256" if best is rows[1] else "none"]
    subprocess.run([*command, "--quiet"], check=True, cwd=tmp_path, timeout=600)
    assert RowLog(out / "gw_t_theta_embedding.csv").rows() == rows  # resumes: trains nothing


def test_the_scale_up_benchmark_measures_both_bands(tmp_path):
    results = tmp_path / "gw_scale_up.csv"
    script = ROOT / "benchmarks" / "gw_scale_up.py"
    command = [sys.executable, str(script), "--smoke", "--threads", "1", "--results", str(results)]
    subprocess.run(command, check=True, cwd=tmp_path, timeout=600)
    rows = RowLog(results).rows()
    assert [(r["band"], r["bins_per_detector"]) for r in rows] == [
        ("task", "433"),
        ("scale-up", "3937"),
    ]
    task, scale_up = rows
    assert float(scale_up["store_mb"]) > 5 * float(task["store_mb"])  # nine times the numbers
    assert all(float(r["train_s"]) > 0 and r["machine"] for r in rows)
    assert "| scale-up | 3937 |" in results.with_suffix(".md").read_text()
    failed = subprocess.run(
        [sys.executable, str(script), "--budget", "10"], capture_output=True, text=True
    )
    assert failed.returncode == 2 and "--budget must be at least 100" in failed.stderr
