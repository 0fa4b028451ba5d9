"""Lightning callbacks of fmpe's training: an average of the weights, the best weights, the
time spent, and the global random state."""

import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, WeightAveraging
from torch import Tensor, nn


class ExponentialMovingAverage(WeightAveraging):
    """Keeps an exponential moving average of the weights, updated after every step.

    Lightning validates and checkpoints the average, so early stopping and the best weights
    both refer to it; the flow-matching loss is noisy enough that the raw weights of the last
    steps scatter around a better average. The decay warms up as (1 + k) / (10 + k) after k
    updates, so that a short run is not averaged with its random initialisation.

    A module whose raw entries are not what should be averaged defines
    ``averaged_state() -> dict[str, Tensor]``: for those of its own state entries (names as in
    its state_dict), the values the average moves toward instead. POET layers return their
    effective weight there, so the average is one of the layers' functions and merges, which
    keep the function, leave it consistent. Non-floating buffers are copied, not averaged.
    """

    def __init__(self, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        super().__init__()
        self.decay = decay
        self._pairs: tuple[list[Tensor], list[Tensor]] | None = None
        self._adapted: list[tuple[dict[str, Tensor], nn.Module]] = []

    def averaged_state_dict(self) -> dict[str, Tensor]:
        """The average's weights, keyed like the LightningModule's own state_dict."""
        return self._average_model.module.state_dict()

    def _pair_up(self, pl_module: L.LightningModule) -> None:
        """The averaged tensors and their fixed targets, and the modules whose targets are
        recomputed at every step."""
        average = self._average_model.module
        averaged = dict(average.named_parameters()) | dict(average.named_buffers())
        adapted: set[str] = set()
        for prefix, module in pl_module.named_modules():
            if hasattr(module, "averaged_state"):
                own = {name: averaged[f"{prefix}.{name}"] for name in module.averaged_state()}
                self._adapted.append((own, module))
                adapted |= {f"{prefix}.{name}" for name in own}
        raw = dict(pl_module.named_parameters()) | dict(pl_module.named_buffers())
        fixed = [name for name in raw if name not in adapted]
        floating = [name for name in fixed if raw[name].is_floating_point()]
        self._pairs = ([averaged[n] for n in floating], [raw[n].detach() for n in floating])
        self._copied = [(averaged[n], raw[n]) for n in fixed if not raw[n].is_floating_point()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # One fused update of all tensors; Lightning's generic update walks the modules in
        # Python at every step, which costs more than a small network's whole step.
        average = self._average_model
        if self._pairs is None:
            self._pair_up(pl_module)
        k = int(average.n_averaged)
        weight = 1.0 - min(self.decay, (1 + k) / (10 + k))
        with torch.no_grad():
            if self._pairs[0]:
                torch._foreach_lerp_(*self._pairs, weight)
            for averaged, raw in self._copied:
                averaged.copy_(raw)
            for own, module in self._adapted:
                for name, target in module.averaged_state().items():
                    if own[name].is_floating_point():
                        own[name].lerp_(target.detach(), weight)
                    else:
                        own[name].copy_(target)
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


class TrainingTime(Callback):
    """Wall seconds spent in training, kept in checkpoints, so that a resumed run adds its own
    time to that of the processes before it."""

    def __init__(self):
        self._earlier = 0.0
        self._started: float | None = None

    @property
    def seconds(self) -> float:
        running = time.perf_counter() - self._started if self._started is not None else 0.0
        return self._earlier + running

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._earlier, self._started = self.seconds, None

    def state_dict(self) -> dict:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self._earlier = state_dict["seconds"]


class GlobalRandomState(Callback):
    """Torch's global random state (CPU, and CUDA once initialized), kept in checkpoints.

    The training noise (times, base draws, dropout) and the data loader's seed come from it,
    so a run resumed from a checkpoint draws what the uninterrupted run drew after saving it,
    bit for bit on the same machine. Under DDP rank 0's state is saved and every rank
    restores it, which is exact while the ranks' states agree (they are seeded alike and draw
    alike). CUDA states are restored only onto as many devices as were saved.
    """

    def state_dict(self) -> dict:
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        torch.set_rng_state(state_dict["cpu"])
        cuda = state_dict.get("cuda")
        if cuda is not None and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
