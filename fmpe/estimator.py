"""FMPE: simulate, train a flow-matching posterior with Lightning, return the posterior."""

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.distributions import Distribution

from fmpe.callbacks import BestWeights, ExponentialMovingAverage
from fmpe.data import SimulationDataModule, StreamingDataModule
from fmpe.network import Route, VelocityNetwork
from fmpe.ode import SolverSettings
from fmpe.posterior import Posterior
from fmpe.simulation import Simulator, simulate, simulation_chunks
from fmpe.store import SimulationStore
from fmpe.training import FlowMatchingModule, Schedule
from fmpe.unbounded import UnboundedTransform
from fmpe.validation import as_float_tensor, check_shape, drop_invalid_simulations

DEFAULT_WIDTHS = (64, 64, 64, 64)
SIMULATIONS_FILE = "simulations.safetensors"


class FMPE:
    """Flow matching posterior estimation.

    Args:
        simulator: maps θ (n, d) to x (n, *x_shape); optional if simulations are appended.
        prior: a torch distribution over θ with `sample` and `log_prob`.
        hidden_widths: one residual block of the velocity network per entry.
        theta_route, x_route: where (t, θ) and x enter the network ("main", "gate", "both");
            see `VelocityNetwork`.
        embedding_net: maps standardized x (n, *x_shape) to features (n, k).
        sigma_min: width of the optimal-transport path at t = 1.
        time_prior_exponent: α of the training time prior p(t) ∝ t^α.
        map_to_unbounded: learn the flow on T(θ), where T removes the bounds of the prior's
            support per dimension (a logit for a box, a log for a half-line; see
            `UnboundedTransform`). Samples then never fall outside the prior, and log_prob
            is normalized over its support. Off by default: on sbibm's box priors it raised
            C2ST at 1e4 simulations (two_moons 0.541 to 0.566); on log-normal priors it
            helped (docs/method.md).
        solver: default ODE settings of the returned posterior.
    """

    def __init__(
        self,
        simulator: Simulator | None = None,
        prior: Distribution | None = None,
        *,
        hidden_widths: Sequence[int] = DEFAULT_WIDTHS,
        theta_route: Route = "main",
        x_route: Route = "main",
        embedding_net: nn.Module | None = None,
        activation: str = "gelu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        sigma_min: float = 1e-4,
        time_prior_exponent: float = 4.0,
        map_to_unbounded: bool = False,
        solver: SolverSettings | None = None,
    ):
        if prior is None:
            raise ValueError("FMPE needs a prior: a torch.distributions.Distribution over theta")
        self.simulator = simulator
        self.prior = prior
        self.network_options = dict(
            hidden_widths=tuple(hidden_widths),
            theta_route=theta_route,
            x_route=x_route,
            activation=activation,
            dropout=dropout,
            batch_norm=batch_norm,
        )
        self.embedding_net = embedding_net
        self.sigma_min = sigma_min
        self.time_prior_exponent = time_prior_exponent
        self.solver = solver or SolverSettings()
        self.theta_dim = self._prior_dim(prior)
        self.theta_transform = (
            UnboundedTransform.for_prior(prior, self.theta_dim)
            if map_to_unbounded
            else UnboundedTransform.identity(self.theta_dim)
        )
        self.theta: Tensor | None = None
        self.x: Tensor | None = None
        self.store: SimulationStore | None = None

    @staticmethod
    def _prior_dim(prior: Distribution) -> int:
        draw = prior.sample((2,))
        if draw.dim() != 2:
            raise ValueError(
                "the prior must draw parameter vectors: prior.sample((n,)) should have shape "
                f"(n, d), got {tuple(draw.shape)}"
            )
        return draw.shape[1]

    def append_simulations(self, theta: Tensor, x: Tensor) -> "FMPE":
        """Adds simulated pairs to the training data.

        Args:
            theta: (n, d) parameters, x: (n, *x_shape) their simulations.
        """
        if self.store is not None:
            raise ValueError("this estimator trains on a store; append to the store instead")
        theta = as_float_tensor(theta, "theta").detach().cpu()
        x = as_float_tensor(x, "x").detach().cpu()
        check_shape(theta, (None, self.theta_dim), "theta")
        if x.dim() < 2:
            raise ValueError(
                f"x must have shape (n, *x_shape) with at least 2 dims, got {tuple(x.shape)}"
            )
        if x.shape[0] != theta.shape[0]:
            raise ValueError(
                f"theta and x must hold the same number of simulations, got {theta.shape[0]} "
                f"and {x.shape[0]}"
            )
        if self.x is not None:
            check_shape(x, (None, *self.x.shape[1:]), "x (as in earlier simulations)")
        theta, x = drop_invalid_simulations(theta.float(), x.float())
        self.theta = theta if self.theta is None else torch.cat([self.theta, theta])
        self.x = x if self.x is None else torch.cat([self.x, x])
        return self

    def simulate(
        self,
        num_simulations: int,
        *,
        batch_size: int = 1000,
        num_workers: int = 0,
        store: str | Path | SimulationStore | None = None,
        show_progress: bool = True,
    ) -> "FMPE":
        """Runs the simulator on θ drawn from the prior and keeps the results.

        Args:
            batch_size: θ per simulator call.
            num_workers: worker processes simulating batches in parallel (0: this process);
                the simulator must then be picklable. The result does not depend on it.
            store: a folder to write the simulations to, one shard per batch, instead of
                memory; `train` then streams them from there. Simulations already in the
                folder count towards `num_simulations`, so an interrupted run goes on.
        """
        if self.simulator is None:
            raise ValueError("no simulator was given: pass one to FMPE or append simulations")
        if store is None:
            theta, x = simulate(
                self.simulator,
                self.prior,
                num_simulations,
                batch_size=batch_size,
                num_workers=num_workers,
                show_progress=show_progress,
            )
            return self.append_simulations(theta, x)
        self.use_store(store)
        missing = num_simulations - len(self.store)
        if missing > 0:
            for theta, x in simulation_chunks(
                self.simulator,
                self.prior,
                missing,
                batch_size=batch_size,
                num_workers=num_workers,
                show_progress=show_progress,
            ):
                self.store.append(theta, x)
        return self

    def use_store(self, store: str | Path | SimulationStore) -> "FMPE":
        """Trains on the simulations in a store (a folder of shards), streamed from disk."""
        if self.theta is not None:
            raise ValueError("simulations are already held in memory; use either them or a store")
        self.store = store if isinstance(store, SimulationStore) else SimulationStore(store)
        if len(self.store) > 0:
            d, _ = self.store.shapes()
            if d != self.theta_dim:
                raise ValueError(
                    f"the store {self.store.directory} holds theta of dimension {d}, but the "
                    f"prior's is {self.theta_dim}"
                )
        return self

    def train(
        self,
        num_simulations: int | None = None,
        *,
        batch_size: int = 512,
        learning_rate: float = 2e-3,
        weight_decay: float = 0.0,
        max_epochs: int = 200,
        schedule: Schedule = "cosine",
        early_stopping_patience: int | None = None,
        validation_fraction: float = 0.05,
        gradient_clip: float | None = 1.0,
        ema_decay: float | None = 0.999,
        seed: int = 0,
        store: str | Path | SimulationStore | None = None,
        checkpoint_dir: str | Path | None = None,
        trainer_kwargs: dict | None = None,
        show_progress: bool = True,
    ) -> Posterior:
        """Trains the velocity network and returns the posterior.

        Args:
            num_simulations: simulate this many pairs first (needs a simulator).
            max_epochs: the length of training, over which the cosine schedule anneals the
                learning rate. The weights with the lowest validation loss are returned.
            early_stopping_patience: stop once the validation loss has not improved for this
                many epochs (None: never). Off by default: the flow-matching loss flattens
                long before the posterior stops improving, and on two_moons stopping after
                30 epochs without improvement took C2ST from 0.53 to 0.56.
            ema_decay: the network used for validation and returned is an exponential moving
                average of the trained weights with this decay per step (None: the raw weights).
            store: train on the simulations in this folder of shards (see `simulate`),
                streamed from disk, which is how training sets larger than memory work;
                with `num_simulations`, simulate into it first whatever it lacks.
            checkpoint_dir: where the simulations (unless in a store) and checkpoints are
                kept. Calling `train` again with the same directory resumes an interrupted
                run.
            trainer_kwargs: passed to `lightning.Trainer` (accelerator, devices, strategy,
                logger, precision, ...), overriding fmpe's choices; `callbacks` are added to
                fmpe's checkpointing and early stopping.

        Returns:
            the posterior, on the device it was trained on.
        """
        L.seed_everything(seed, verbose=False)
        directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if store is not None:
            self.use_store(store)
        if self.store is not None:
            if num_simulations is not None:
                self.simulate(num_simulations, store=self.store, show_progress=show_progress)
            if len(self.store) == 0:
                raise ValueError(f"the simulation store {self.store.directory} is empty")
            data = StreamingDataModule(
                self.store,
                batch_size,
                validation_fraction=validation_fraction,
                seed=seed,
                theta_transform=self.theta_transform,
            )
            x_shape = self.store.shapes()[1]
        else:
            if num_simulations is not None and not self._resumable(directory):
                self.simulate(num_simulations, show_progress=show_progress)
            if directory is not None:
                self._sync_simulations(directory)
            if self.theta is None:
                raise ValueError(
                    "no training data: pass num_simulations, call append_simulations or use a store"
                )
            data = SimulationDataModule(
                self.theta,
                self.x,
                batch_size,
                validation_fraction=validation_fraction,
                seed=seed,
                theta_transform=self.theta_transform,
            )
            x_shape = self.x.shape[1:]
        network = VelocityNetwork(
            self.theta_dim,
            x_shape,
            embedding_net=self.embedding_net,
            **self.network_options,
        )
        module = FlowMatchingModule(
            network,
            sigma_min=self.sigma_min,
            time_prior_exponent=self.time_prior_exponent,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            schedule=schedule,
            max_epochs=max_epochs,
        )
        device = self._fit(
            module,
            data,
            directory,
            max_epochs,
            early_stopping_patience,
            gradient_clip,
            ema_decay,
            trainer_kwargs or {},
            show_progress,
        )
        posterior = Posterior(
            module.network,
            data.theta_standardizer,
            data.x_standardizer,
            prior=self.prior,
            solver=self.solver,
            theta_transform=self.theta_transform,
        )
        return posterior.to(device)

    def _fit(
        self,
        module: FlowMatchingModule,
        data: SimulationDataModule,
        directory: Path | None,
        max_epochs: int,
        patience: int | None,
        gradient_clip: float | None,
        ema_decay: float | None,
        trainer_kwargs: dict,
        show_progress: bool,
    ) -> torch.device:
        """Fits the module, restores its best weights and returns the device it trained on.

        With a `directory`, Lightning saves `last.ckpt` there after every epoch, and a call
        that finds one resumes from it.
        """
        trainer_kwargs = dict(trainer_kwargs)
        average = ExponentialMovingAverage(ema_decay) if ema_decay is not None else None
        best = BestWeights("val_loss", average)
        callbacks: list = [best]
        if patience is not None:
            callbacks.append(EarlyStopping(monitor="val_loss", patience=patience))
        callbacks += [average] if average is not None else []
        if directory is not None:
            # Without a monitor, the one checkpoint kept is the latest: last.ckpt.
            last = ModelCheckpoint(dirpath=directory, filename="last", enable_version_counter=False)
            callbacks.append(last)
        callbacks += trainer_kwargs.pop("callbacks", None) or []
        options = dict(
            max_epochs=max_epochs,
            callbacks=callbacks,
            gradient_clip_val=gradient_clip,
            logger=False,
            enable_checkpointing=directory is not None,
            enable_model_summary=False,
            enable_progress_bar=show_progress,
            num_sanity_val_steps=0,
            deterministic=False,
        )
        options.update(trainer_kwargs)
        resume_from = directory / "last.ckpt" if directory is not None else None
        with _quiet_lightning(show_progress):
            trainer = L.Trainer(**options)
            trainer.fit(
                module,
                datamodule=data,
                ckpt_path=resume_from if resume_from and resume_from.exists() else None,
            )
        if best.best_state is not None:
            module.load_state_dict(best.best_state)
        module.eval()
        return trainer.strategy.root_device

    def _resumable(self, directory: Path | None) -> bool:
        return directory is not None and (directory / SIMULATIONS_FILE).exists()

    def _sync_simulations(self, directory: Path) -> None:
        """Stores the training set in `directory`, or reloads it there to resume a run."""
        path = directory / SIMULATIONS_FILE
        if path.exists():
            stored = load_file(str(path))
            if self.theta is not None and not (
                torch.equal(stored["theta"], self.theta) and torch.equal(stored["x"], self.x)
            ):
                raise ValueError(
                    f"{directory} holds a run with other simulations; use a new checkpoint_dir"
                )
            self.theta, self.x = stored["theta"], stored["x"]
        elif self.theta is not None:
            directory.mkdir(parents=True, exist_ok=True)
            save_file({"theta": self.theta.contiguous(), "x": self.x.contiguous()}, str(path))


@contextmanager
def _quiet_lightning(show_progress: bool) -> Iterator[None]:
    """Silences Lightning's start-up banner (GPU available, ...) when no progress is shown,
    and its advice about data loader workers, which does not apply to in-memory tensors."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    if not show_progress:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*")
            yield
    finally:
        logger.setLevel(level)
