import json
import struct

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
        gaussian.simulator, gaussian.prior, hidden_widths=(16,), embedding_net=make_embedding()
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


def test_version_1_files_load_with_unbounded_theta(gaussian_posterior, tmp_path):
    """Files written before the unbounded transform existed hold no bounds of θ."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from fmpe.serialization import _checksum

    path = tmp_path / "v1.fmpe"
    gaussian_posterior.save(path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("theta_transform.")}
    metadata |= {"format_version": "1", "checksum": _checksum(metadata["config"], tensors)}
    save_file(tensors, str(path), metadata=metadata)
    loaded = fmpe.load(path)
    assert torch.isinf(loaded.theta_transform.low).all()
    theta = torch.randn(20, 2)
    assert torch.equal(loaded.log_prob(theta, X_OBS), gaussian_posterior.log_prob(theta, X_OBS))
