"""The LightningModules: the maths of each estimator's loss; the Trainer does the rest.

`EstimatorModule` holds what every estimator shares (the optimizer, the schedule, the epoch
loss); a subclass says what its loss is and what its validation set holds.
"""

import lightning as L
import torch
from torch import Tensor, nn

from fmpe.coupling import get_coupling
from fmpe.flow_matching import draw_path_noise, flow_matching_loss
from fmpe.training.data import TensorBatches, fixed_path_noise
from fmpe.training.optimization import configure_optimization
from fmpe.training.settings import TrainingSettings


class EstimatorModule(L.LightningModule):
    """Trains `network` on standardized (θ, x) batches; subclasses define `loss`.

    Args:
        network: the network being trained.
        settings: the optimizer and its schedule (`TrainingSettings`).
    """

    def __init__(self, network: nn.Module, settings: TrainingSettings):
        super().__init__()
        self.network = network
        self.settings = settings

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        """The training loss of a batch: theta (n, d), x (n, *x_shape) -> ()."""
        raise NotImplementedError

    def validation_loss(self, batch: tuple[Tensor, ...]) -> Tensor:
        """The loss of a batch of the validation set (see `validation_set`) -> ()."""
        raise NotImplementedError

    @staticmethod
    def validation_set(theta: Tensor, x: Tensor, seed: int) -> TensorBatches:
        """The validation set of standardized pairs theta (m, d), x (m, *x_shape)."""
        return TensorBatches(theta, x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        theta, x = batch
        loss = self.loss(theta, x)
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
        loss = self.validation_loss(batch)
        self.log("val_loss", loss, prog_bar=True, batch_size=len(batch[0]), sync_dist=True)

    def configure_optimizers(self):
        # The schedule spans the Trainer's epochs, whatever set them.
        return configure_optimization(self.network, self.settings, self.trainer.max_epochs)


class FlowMatchingModule(EstimatorModule):
    """Conditional flow matching of a velocity network v(t, θ_t, x).

    Args:
        sigma_min: width of the OT path at t = 1.
        time_prior_exponent: α of the training time prior p(t) ∝ t^α.
        coupling: registered name of the pairing of base draws with parameters
            (`fmpe.coupling`); validation always uses independent pairs.
    """

    def __init__(
        self,
        network: nn.Module,
        settings: TrainingSettings,
        sigma_min: float = 1e-4,
        time_prior_exponent: float = 4.0,
        coupling: str = "independent",
    ):
        super().__init__(network, settings)
        self.sigma_min = sigma_min
        self.time_prior_exponent = time_prior_exponent
        self.coupling = get_coupling(coupling)

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        t, theta0 = draw_path_noise(theta, self.time_prior_exponent)
        theta0 = self.coupling(theta0, theta, x)
        return flow_matching_loss(self.network, theta, x, t, theta0, self.sigma_min)

    def validation_loss(self, batch: tuple[Tensor, ...]) -> Tensor:
        theta, x, t, theta0 = batch
        return flow_matching_loss(self.network, theta, x, t, theta0, self.sigma_min)

    @staticmethod
    def validation_set(theta: Tensor, x: Tensor, seed: int) -> TensorBatches:
        """Pairs with fixed times and base draws (`fixed_path_noise`)."""
        return fixed_path_noise(theta, x, seed)


class NPEModule(EstimatorModule):
    """Maximum likelihood of a conditional density q(θ | x): the loss is -log q(θ | x)."""

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        return -self.network(x).log_prob(theta).mean()

    def validation_loss(self, batch: tuple[Tensor, ...]) -> Tensor:
        theta, x = batch
        return self.loss(theta, x)
