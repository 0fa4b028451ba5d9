import json
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

import fmpe
from fmpe import FMPE

X_OBS = torch.tensor([0.8, -0.4])


def test_round_trip_gives_identical_samples_and_densities(gaussian_posterior, tmp_path):
    path = tmp_path / "gaussian.fmpe"
    gaussian_posterior.save(path)
    loaded = fmpe.load(path)
    torch.manual_seed(11)
    before, log_before = gaussian_posterior.sample_and_log_prob(300, X_OBS)
    torch.manual_seed(11)
    after, log_after = loaded.sample_and_log_prob(300, X_OBS)
    assert torch.equal(before, after)
    assert torch.equal(log_before, log_after)
    assert loaded.solver == gaussian_posterior.solver
    assert torch.equal(loaded.prior.loc, gaussian_posterior.prior.loc)
    assert torch.equal(loaded.prior.covariance_matrix, gaussian_posterior.prior.covariance_matrix)


def test_truncated_file_is_refused(gaussian_posterior, tmp_path):
    path = tmp_path / "p.fmpe"
    gaussian_posterior.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or damaged"):
        fmpe.load(path)


def test_edited_weights_are_refused(gaussian_posterior, tmp_path):
    path = tmp_path / "p.fmpe"
    gaussian_posterior.save(path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip bits of the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        fmpe.load(path)


def _rewrite_header(path, edit):
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + data[8 + length :])


def test_edited_configuration_is_refused(gaussian_posterior, tmp_path):
    path = tmp_path / "p.fmpe"
    gaussian_posterior.save(path)

    def widen(header):
        config = json.loads(header["__metadata__"]["config"])
        config["chunk_size"] = 5
        header["__metadata__"]["config"] = json.dumps(config)

    _rewrite_header(path, widen)
    with pytest.raises(ValueError, match="checksum"):
        fmpe.load(path)


def test_other_format_version_is_refused(gaussian_posterior, tmp_path):
    path = tmp_path / "p.fmpe"
    gaussian_posterior.save(path)
    _rewrite_header(path, lambda h: h["__metadata__"].update(format_version="99"))
    with pytest.raises(ValueError, match="format version 99"):
        fmpe.load(path)


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "not_a_posterior.fmpe"
    path.write_text("hello")
    with pytest.raises(ValueError, match="not a readable fmpe posterior"):
        fmpe.load(path)
    with pytest.raises(FileNotFoundError):
        fmpe.load(tmp_path / "missing.fmpe")


def test_custom_embedding_net_must_be_supplied(gaussian, tmp_path):
    def make_embedding():
        return nn.Sequential(nn.Linear(2, 8), nn.Tanh())

    torch.manual_seed(0)
    estimator = FMPE(
        gaussian.simulator,
        gaussian.prior,
        network_options={"hidden_widths": (16,)},
        embedding_net=make_embedding(),
    )
    posterior = estimator.train(300, max_epochs=1, show_progress=False)
    path = tmp_path / "embedded.fmpe"
    posterior.save(path)
    with pytest.raises(ValueError, match="embedding_net"):
        fmpe.load(path)
    loaded = fmpe.load(path, embedding_net=make_embedding())
    torch.manual_seed(0)
    a = posterior.sample(10, X_OBS)
    torch.manual_seed(0)
    b = loaded.sample(10, X_OBS)
    assert torch.equal(a, b)


DATA = Path(__file__).parent / "data"
FILE_040 = DATA / "posterior-0.4.0.fmpe"  # written by fmpe 0.4.0 (format 2), map_to_unbounded


def _old_file(tmp_path, version, drop_bounds):
    """The 0.4.0 file rewritten as format `version`, its checksum recomputed as 0.4.0 did."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from fmpe.posteriors.file import _checksum

    with safe_open(str(FILE_040), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if drop_bounds:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("theta_transform.")}
    metadata |= {"format_version": version, "checksum": _checksum(metadata["config"], tensors)}
    path = tmp_path / f"v{version}.fmpe"
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_file_of_fmpe_0_4_0_loads_and_samples_as_it_did():
    from safetensors.torch import load_file

    expected = load_file(DATA / "posterior-0.4.0-expected.safetensors")
    posterior = fmpe.load(FILE_040)
    torch.manual_seed(3)
    theta, log_prob = posterior.sample_and_log_prob(20, expected["x"])
    # Not bit for bit: float32 kernels differ between CPUs (the file was written on another).
    torch.testing.assert_close(theta, expected["theta"], rtol=0, atol=1e-5)
    torch.testing.assert_close(log_prob, expected["log_prob"], rtol=0, atol=1e-5)


def test_a_file_from_before_the_sample_settings_samples_as_it_did():
    """Files of fmpe < 0.6 sampled with their density solve's method; they go on doing so."""
    solver = fmpe.load(FILE_040).solver
    assert solver.method == "dopri5_per_row"
    sampling = (solver.sample_method, solver.sample_steps, solver.sample_time_grid)
    assert sampling == (solver.method, solver.steps, solver.time_grid)
    assert fmpe.SolverSettings().sample_method == "rk4"  # what a new posterior samples with


def test_version_1_files_load_with_unbounded_theta(tmp_path):
    """Files written before the unbounded transform existed hold no bounds of θ."""
    loaded = fmpe.load(_old_file(tmp_path, "1", drop_bounds=True))
    assert torch.isinf(loaded.theta_transform.low).all()
    assert torch.isinf(loaded.theta_transform.high).all()


def test_edited_format_version_is_refused(tmp_path):
    """Version 2 kept its version outside the checksum: "2" edited to "1" would silently
    drop the bounds of θ."""
    path = tmp_path / "edited.fmpe"
    path.write_bytes(FILE_040.read_bytes())
    _rewrite_header(path, lambda h: h["__metadata__"].update(format_version="1"))
    with pytest.raises(ValueError, match="says format version 1 but holds bounds"):
        fmpe.load(path)


def test_format_version_is_inside_the_checksum(gaussian_posterior, tmp_path):
    path = tmp_path / "p.fmpe"
    gaussian_posterior.save(path)
    _rewrite_header(path, lambda h: h["__metadata__"].update(format_version="2"))
    with pytest.raises(ValueError, match="edited or damaged"):
        fmpe.load(path)
