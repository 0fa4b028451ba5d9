"""Simulations on disk: the shard store and training streamed from it."""

import pytest
import torch

import fmpe.training.data
from fmpe import FMPE
from fmpe.io.store import SimulationStore
from fmpe.standardize import Standardizer
from fmpe.training.data import StreamingDataModule


def filled_store(path, shard_rows=(300, 250, 400)) -> SimulationStore:
    store = SimulationStore(path)
    start = 0
    for rows in shard_rows:
        index = torch.arange(start, start + rows, dtype=torch.float32)
        # Row i holds theta = (i, -i) and x = (2i, 3i, 1), so rows can be told apart later.
        store.append(
            torch.stack([index, -index], 1), torch.stack([2 * index, 3 * index, index**0], 1)
        )
        start += rows
    return store


def test_shards_round_trip_and_reopen(tmp_path):
    store = filled_store(tmp_path)
    assert len(store) == 950 and store.shard_rows == [300, 250, 400]
    assert store.shapes() == (2, (3,))
    reopened = SimulationStore(tmp_path)
    theta, x = reopened.load_shard(1)
    assert torch.equal(theta[0], torch.tensor([300.0, -300.0])) and x.shape == (250, 3)


def test_store_refuses_other_shapes_and_drops_nan_rows(tmp_path):
    store = filled_store(tmp_path)
    with pytest.raises(
        ValueError, match=r"x \(as stored in .*\) must have shape \(n, 3\), got \(5, 4\)"
    ):
        store.append(torch.zeros(5, 2), torch.zeros(5, 4))
    x = torch.zeros(5, 3)
    x[2, 1] = torch.nan
    with pytest.warns(UserWarning, match="dropped 1 of 5"):
        store.append(torch.zeros(5, 2), x)
    assert store.shard_rows[-1] == 4


def test_corrupted_shard_is_named(tmp_path):
    filled_store(tmp_path)
    shard = sorted(tmp_path.glob("shard-*"))[1]
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(ValueError, match="shard-000001.safetensors is not a readable simulation"):
        SimulationStore(tmp_path)


def training_rows(module: StreamingDataModule) -> list[int]:
    """The row numbers (theta[:, 0] before standardization) of one epoch's batches."""
    rows = []
    for theta_z, _ in module.train_dataloader():
        rows += module.theta_standardizer.inverse(theta_z)[:, 0].round().long().tolist()
    return rows


def test_streaming_visits_every_training_row_once_and_never_a_validation_row(tmp_path):
    store = filled_store(tmp_path)
    module = StreamingDataModule(store, batch_size=32, validation_fraction=0.1, shards_in_memory=2)
    validation = module.theta_standardizer.inverse(module.validation_set.tensors[0])[:, 0]
    validation = set(validation.round().long().tolist())
    assert len(validation) == 30 + 25 + 40
    first, second = training_rows(module), training_rows(module)
    assert len(first) == len(set(first)) and not validation & set(first)
    # Only the remainder of each group of shards in memory is left out, under one batch each.
    assert 950 - 95 - 2 * 32 < len(first) <= 950 - 95
    assert first != second  # a new order every epoch
    everything = torch.cat([store.load_shard(i)[0] for i in range(3)])
    train = torch.tensor(sorted(set(range(950)) - validation))
    expected = Standardizer.fit(everything[train])
    torch.testing.assert_close(module.theta_standardizer.mean, expected.mean)
    torch.testing.assert_close(module.theta_standardizer.std, expected.std)


def test_ddp_ranks_split_the_batches_evenly(tmp_path, monkeypatch):
    store = filled_store(tmp_path)
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(fmpe.training.data, "_rank_and_world_size", lambda rank=rank: (rank, 2))
        module = StreamingDataModule(store, batch_size=32, validation_fraction=0.1)
        seen.append(training_rows(module))
    assert len(seen[0]) == len(seen[1]) > 0
    assert not set(seen[0]) & set(seen[1])


def test_training_from_a_store_matches_the_posterior(gaussian, tmp_path):
    torch.manual_seed(0)
    estimator = FMPE(
        gaussian.simulator, gaussian.prior, network_options={"hidden_widths": (64, 64)}
    )
    posterior = estimator.train(
        6000,
        store=tmp_path / "sims",
        batch_size=256,
        max_epochs=60,
        learning_rate=2e-3,
        show_progress=False,
    )
    assert len(SimulationStore(tmp_path / "sims")) == 6000
    x_obs = torch.tensor([0.8, -0.4])
    torch.manual_seed(1)
    samples = posterior.sample(4000, x_obs)
    exact = gaussian.posterior(x_obs)
    assert torch.allclose(samples.mean(0), exact.mean, atol=0.06)
    assert torch.allclose(samples.std(0), exact.stddev, rtol=0.15)
    # Asking again for the same number simulates nothing more.
    estimator.simulate(6000, store=tmp_path / "sims", show_progress=False)
    assert len(estimator.store) == 6000
