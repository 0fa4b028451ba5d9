"""Lightning's DDP with two CPU processes (gloo) against a single-process run."""

import sys

import lightning as L
import pytest
import torch

from fmpe import FMPE
from fmpe.metrics import c2st

X_OBS = torch.tensor([0.8, -0.4])


class RecordRanks(L.Callback):
    """Each process writes its rank, so the test sees that two processes really trained."""

    def __init__(self, folder):
        self.folder = folder

    def on_train_start(self, trainer, module):
        backend = torch.distributed.get_backend()
        text = f"{trainer.global_rank} of {trainer.world_size} ({backend})"
        (self.folder / f"rank{trainer.global_rank}").write_text(text)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
@pytest.mark.skipif(sys.platform != "linux", reason="gloo process groups tested on Linux")
def test_two_process_ddp_matches_single_process(gaussian, tmp_path):
    torch.manual_seed(0)
    theta = gaussian.prior.sample((4000,))
    x = gaussian.simulator(theta)

    def train(batch_size, **trainer_kwargs):
        return (
            FMPE(
                prior=gaussian.prior,
                network_options={"hidden_widths": (32, 32)},
                time_prior_exponent=1.0,
            )
            .append_simulations(theta, x)
            .train(
                batch_size=batch_size,
                max_epochs=20,
                seed=1,
                show_progress=False,
                trainer_kwargs=trainer_kwargs,
            )
        )

    single = train(128, accelerator="cpu", devices=1)
    # Two processes with half the batch each see the same examples per optimizer step.
    distributed = train(
        64,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        callbacks=[RecordRanks(tmp_path)],
    )
    ranks = sorted(p.read_text() for p in tmp_path.glob("rank*"))
    assert ranks == ["0 of 2 (gloo)", "1 of 2 (gloo)"]

    exact = gaussian.posterior(X_OBS)
    torch.manual_seed(2)
    reference = exact.sample((2000,))
    scores = [c2st(reference, p.sample(2000, X_OBS)) for p in (single, distributed)]
    assert scores[1] < 0.6, scores
    assert abs(scores[0] - scores[1]) < 0.05, scores
    theta_test = exact.sample((200,))
    gap = (single.log_prob(theta_test, X_OBS) - distributed.log_prob(theta_test, X_OBS)).abs()
    assert gap.mean() < 0.1
