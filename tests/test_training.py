"""Training with Lightning: seeding, resumption and best weights."""

import subprocess
import sys
import textwrap

import lightning as L
import torch

from fmpe import FMPE


def test_seeded_training_is_reproducible(gaussian):
    theta = gaussian.prior.sample((600,))
    x = gaussian.simulator(theta)
    posteriors = [
        FMPE(prior=gaussian.prior, hidden_widths=(16, 16))
        .append_simulations(theta, x)
        .train(max_epochs=3, seed=7, show_progress=False)
        for _ in range(2)
    ]
    for a, b in zip(posteriors[0].parameters(), posteriors[1].parameters()):
        assert torch.equal(a, b)


KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import lightning as L
    import torch
    from torch.distributions import MultivariateNormal
    from fmpe import FMPE

    class KillAtEpochTwo(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 2:
                os.kill(os.getpid(), signal.SIGKILL)

    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
    FMPE(lambda th: th + 0.1 * torch.randn_like(th), prior, hidden_widths=(16,)).train(
        500, max_epochs=10, checkpoint_dir=sys.argv[1], seed=3, show_progress=False,
        trainer_kwargs={"callbacks": [KillAtEpochTwo()]},
    )
    """
)


def test_killed_run_resumes_from_checkpoint(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED_RUN)
    checkpoints = tmp_path / "run"
    result = subprocess.run([sys.executable, str(script), str(checkpoints)], capture_output=True)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    assert (checkpoints / "simulations.safetensors").exists()
    killed_at = torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"]
    assert 0 < killed_at <= 2

    def no_simulator(theta):
        raise AssertionError("a resumed run must reuse the stored simulations")

    prior = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    epochs_run = []

    class RecordEpochs(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            epochs_run.append(trainer.current_epoch)

    posterior = FMPE(no_simulator, prior, hidden_widths=(16,)).train(
        500,
        max_epochs=10,
        checkpoint_dir=checkpoints,
        seed=3,
        show_progress=False,
        trainer_kwargs={"callbacks": [RecordEpochs()]},
    )
    assert epochs_run == list(range(killed_at + 1, 10))
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 9
    assert posterior.sample(5, torch.zeros(2)).shape == (5, 2)
