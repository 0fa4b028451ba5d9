"""The LightningModule of flow matching: the loss, the optimizer and the schedule."""

from typing import Literal

import lightning as L
import torch
from torch import Tensor

from fmpe.loss import draw_path_noise, flow_matching_loss
from fmpe.network import VelocityNetwork

Schedule = Literal["plateau", "cosine", "constant"]


class FlowMatchingModule(L.LightningModule):
    """Trains a velocity network by conditional flow matching on standardized (θ, x) pairs.

    Args:
        network: the velocity network v(t, θ_t, x).
        sigma_min: width of the OT path at t = 1.
        time_prior_exponent: α of the training time prior p(t) ∝ t^α.
        schedule: "plateau" divides the learning rate by 5 when the validation loss stalls,
            "cosine" anneals it to 1% over `max_epochs`, "constant" keeps it.
    """

    def __init__(
        self,
        network: VelocityNetwork,
        sigma_min: float = 1e-4,
        time_prior_exponent: float = 4.0,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        schedule: Schedule = "cosine",
        plateau_patience: int = 5,
        max_epochs: int = 1000,
    ):
        super().__init__()
        if schedule not in ("plateau", "cosine", "constant"):
            raise ValueError(
                f"schedule must be 'plateau', 'cosine' or 'constant', got {schedule!r}"
            )
        self.network = network
        self.sigma_min = sigma_min
        self.time_prior_exponent = time_prior_exponent
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.plateau_patience = plateau_patience
        self.max_epochs = max_epochs

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        theta, x = batch
        t, theta0 = draw_path_noise(theta, self.time_prior_exponent)
        loss = flow_matching_loss(self.network, theta, x, t, theta0, self.sigma_min)
        # Summed here and logged once per epoch: `self.log` at every step costs more than a
        # small network's forward pass.
        self.epoch_loss_sum += loss.detach() * len(theta)
        self.epoch_count += len(theta)
        return loss

    def on_train_epoch_start(self) -> None:
        self.epoch_loss_sum = torch.zeros((), device=self.device)
        self.epoch_count = 0

    def on_train_epoch_end(self) -> None:
        if self.epoch_count > 0:
            mean = self.epoch_loss_sum / self.epoch_count
            self.log("train_loss", mean, prog_bar=True, sync_dist=True)

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        theta, x, t, theta0 = batch
        loss = flow_matching_loss(self.network, theta, x, t, theta0, self.sigma_min)
        self.log("val_loss", loss, prog_bar=True, batch_size=len(theta), sync_dist=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.network.parameters(),
            lr=self.learning_rate,
            weight_decay=self.weight_decay,
            # One kernel updates every parameter, instead of a Python loop over them.
            fused=all(p.device.type in ("cpu", "cuda") for p in self.network.parameters()),
        )
        if self.schedule == "constant":
            return optimizer
        if self.schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=self.max_epochs, eta_min=0.01 * self.learning_rate
            )
            return {"optimizer": optimizer, "lr_scheduler": scheduler}
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.2, patience=self.plateau_patience
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"},
        }
