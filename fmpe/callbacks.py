"""Lightning callbacks of fmpe's training: an average of the weights, and the best weights."""

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, WeightAveraging
from torch import Tensor


class ExponentialMovingAverage(WeightAveraging):
    """Keeps an exponential moving average of the weights, updated after every step.

    Lightning validates and checkpoints the average, so early stopping and the best weights
    both refer to it; the flow-matching loss is noisy enough that the raw weights of the last
    steps scatter around a better average. The decay warms up as (1 + k) / (10 + k) after k
    updates, so that a short run is not averaged with its random initialisation.
    """

    def __init__(self, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        super().__init__()
        self.decay = decay
        self._pairs: tuple[list[Tensor], list[Tensor]] | None = None

    def averaged_state_dict(self) -> dict[str, Tensor]:
        """The average's weights, keyed like the LightningModule's own state_dict."""
        return self._average_model.module.state_dict()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # One fused update of all tensors; Lightning's generic update walks the modules in
        # Python at every step, which costs more than a small network's whole step.
        average = self._average_model
        if self._pairs is None:
            self._pairs = (
                [*average.module.parameters(), *average.module.buffers()],
                [t.detach() for t in (*pl_module.parameters(), *pl_module.buffers())],
            )
        k = int(average.n_averaged)
        weight = 1.0 - min(self.decay, (1 + k) / (10 + k))
        with torch.no_grad():
            torch._foreach_lerp_(*self._pairs, weight)
        average.n_averaged += 1
        self._latest_update_step = trainer.global_step


class BestWeights(Callback):
    """Remembers, in memory, the weights with the lowest validation loss so far.

    They are part of the callback's state, so a checkpoint of an interrupted run keeps them.
    With an `ExponentialMovingAverage`, the averaged weights (the ones validated) are kept.
    """

    def __init__(self, monitor: str = "val_loss", average: ExponentialMovingAverage | None = None):
        self.monitor = monitor
        self.average = average
        self.best_score = float("inf")
        self.best_state: dict[str, Tensor] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        if score < self.best_score:
            self.best_score = score
            state = self.average.averaged_state_dict() if self.average else pl_module.state_dict()
            self.best_state = {name: t.detach().cpu().clone() for name, t in state.items()}

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_state": self.best_state}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_score = state_dict["best_score"]
        self.best_state = state_dict["best_state"]
