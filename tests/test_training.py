"""Training with Lightning: seeding, resumption and best weights."""

import json
import subprocess
import sys
import textwrap
import time
import warnings

import lightning as L
import pytest
import torch

from fmpe import FMPE
from fmpe.io.store import SimulationStore
from fmpe.training.data import SimulationDataModule, StreamingDataModule
from fmpe.training.fit import CHECKPOINT


def test_seeded_training_is_reproducible(gaussian):
    theta = gaussian.prior.sample((600,))
    x = gaussian.simulator(theta)
    posteriors = [
        FMPE(prior=gaussian.prior, network_options={"hidden_widths": (16, 16)})
        .append_simulations(theta, x)
        .train(max_epochs=3, seed=7, show_progress=False)
        for _ in range(2)
    ]
    for a, b in zip(posteriors[0].parameters(), posteriors[1].parameters()):
        assert torch.equal(a, b)


KILLED_RUN = textwrap.dedent(
    """
    import json, os, signal, sys
    import lightning as L
    import torch
    from torch.distributions import MultivariateNormal
    from fmpe import FMPE

    torch.set_num_threads(1)  # as in the tests' process (conftest), for bit-equal results

    class KillAtEpochTwo(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 2:
                os.kill(os.getpid(), signal.SIGKILL)

    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
    simulator = lambda th: th + 0.1 * torch.randn_like(th)  # noqa: E731
    options = json.loads(sys.argv[2])
    FMPE(simulator, prior, network_options=options["network"]).train(
        500, checkpoint_dir=sys.argv[1], show_progress=False,
        trainer_kwargs={"accelerator": "cpu", "callbacks": [KillAtEpochTwo()]},
        **options["training"],
    )
    """
)

# Five batches an epoch (475 training pairs), so that the shuffling matters. On the CPU, whose
# kernels are deterministic, so that a resumed run can be compared bit for bit.
KILLED_TRAINING = {"max_epochs": 10, "seed": 3, "batch_size": 100}
POET_MERGING_ACROSS_THE_KILL = {"name": "poet", "block_size": 4, "merge_every": 7}


def checkpointed_weights(path) -> dict[str, torch.Tensor]:
    """The averaged and the raw weights in a checkpoint."""
    checkpoint = torch.load(path, weights_only=True)
    raw = {f"raw.{k}": v for k, v in checkpoint["current_model_state"].items()}
    return checkpoint["state_dict"] | raw


@pytest.mark.parametrize(
    "network",
    [{"hidden_widths": [16]}, {"hidden_widths": [16], "linear": POET_MERGING_ACROSS_THE_KILL}],
    ids=["linear", "poet"],
)
def test_killed_run_resumes_from_checkpoint_exactly(tmp_path, network):
    script = tmp_path / "killed.py"
    script.write_text(KILLED_RUN)
    checkpoints = tmp_path / "run"
    options = json.dumps({"network": network, "training": KILLED_TRAINING})
    result = subprocess.run(
        [sys.executable, str(script), str(checkpoints), options], capture_output=True
    )
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    assert (checkpoints / "simulations.safetensors").exists()
    killed_at = torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"]
    assert 0 < killed_at <= 2

    def no_simulator(theta):
        raise AssertionError("a resumed run must reuse the stored simulations")

    prior = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    epochs_run = []

    clock = {}

    class RecordEpochs(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            epochs_run.append(trainer.current_epoch)

        def on_train_start(self, trainer, module):
            clock["start"] = time.perf_counter()

        def on_train_end(self, trainer, module):
            clock["end"] = time.perf_counter()

    checkpoint = torch.load(checkpoints / "last.ckpt", weights_only=False)
    (before,) = [v["seconds"] for k, v in checkpoint["callbacks"].items() if "TrainingTime" in k]
    assert before > 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        posterior = FMPE(no_simulator, prior, network_options=network).train(
            500,
            checkpoint_dir=checkpoints,
            show_progress=False,
            trainer_kwargs={"accelerator": "cpu", "callbacks": [RecordEpochs()]},
            **KILLED_TRAINING,
        )
    # Resuming is what the checkpoint folder is for: no warning that it is not empty.
    assert not [w for w in caught if "not empty" in str(w.message)]
    assert epochs_run == list(range(killed_at + 1, 10))
    # The training time adds the killed process's time (up to its last checkpoint) to this one's.
    own = clock["end"] - clock["start"]
    assert posterior.training_record.seconds == pytest.approx(before + own, abs=0.05)
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 9
    assert posterior.sample(5, torch.zeros(2)).shape == (5, 2)

    # Bit for bit what the same run gives uninterrupted: shuffling and training noise included.
    simulator = lambda th: th + 0.1 * torch.randn_like(th)  # noqa: E731
    straight = tmp_path / "straight"
    uninterrupted = FMPE(simulator, prior, network_options=network).train(
        500,
        checkpoint_dir=straight,
        show_progress=False,
        trainer_kwargs={"accelerator": "cpu"},
        **KILLED_TRAINING,
    )
    resumed, expected = map(checkpointed_weights, (checkpoints / CHECKPOINT, straight / CHECKPOINT))
    assert resumed.keys() == expected.keys()
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)
    for a, b in zip(posterior.parameters(), uninterrupted.parameters(), strict=True):
        assert torch.equal(a, b)


def test_data_modules_checkpoint_their_shuffling(tmp_path):
    """A data module loaded with another's state serves the epochs that one would serve next,
    in memory and streamed from a store."""
    theta = torch.randn(300, 2)
    x = theta + 1
    store = SimulationStore(tmp_path)
    store.append(theta[:150], x[:150])
    store.append(theta[150:], x[150:])

    def epoch(data) -> torch.Tensor:
        """θ of one epoch's batches, in their order: (rows, 2)"""
        return torch.cat([batch[0] for batch in data.train_dataloader()])

    for build in (
        lambda: SimulationDataModule(theta, x, batch_size=32),
        lambda: StreamingDataModule(store, batch_size=32),
    ):
        data = build()
        epoch(data)
        state = data.state_dict()
        ahead = [epoch(data), epoch(data)]
        restored = build()
        restored.load_state_dict(state)
        assert all(torch.equal(epoch(restored), expected) for expected in ahead)
        assert not torch.equal(epoch(build()), ahead[0])


def test_returned_weights_are_the_best_validated_average(gaussian):
    """The posterior's weights are those of the epoch with the lowest validation loss, taken
    from the moving average, not the raw weights of the last step."""
    from fmpe.training.callbacks import BestWeights

    theta = gaussian.prior.sample((600,))
    x = gaussian.simulator(theta)
    seen = {}

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen["last"] = {k: v.clone() for k, v in module.state_dict().items()}

        def on_fit_end(self, trainer, module):
            best = next(c for c in trainer.callbacks if isinstance(c, BestWeights))
            seen["best"] = best.best_state

    posterior = (
        FMPE(prior=gaussian.prior, network_options={"hidden_widths": (16, 16)})
        .append_simulations(theta, x)
        .train(max_epochs=5, seed=1, show_progress=False, trainer_kwargs={"callbacks": [Spy()]})
    )
    returned = {f"network.{k}": v for k, v in posterior.network.state_dict().items()}
    assert all(torch.equal(returned[k], seen["best"][k]) for k in returned)
    assert any(not torch.equal(returned[k], seen["last"][k]) for k in returned)


def test_bad_ema_decay_is_named(gaussian):
    estimator = FMPE(gaussian.simulator, gaussian.prior, network_options={"hidden_widths": (16,)})
    with pytest.raises(ValueError, match=r"ema_decay must be in \(0, 1\), got 1.5"):
        estimator.train(200, ema_decay=1.5, max_epochs=1, show_progress=False)
