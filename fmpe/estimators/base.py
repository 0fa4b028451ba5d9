"""What every estimator shares: the prior and simulator, simulations in memory or in a store,
and one training path (data module, network, Lightning fit) that returns a posterior.

A new estimator subclasses `Estimator` and gives its network default, its training defaults,
its LightningModule (an `EstimatorModule`: the loss) and its posterior class, which it builds
(docs/extending.md)::

    class MyEstimator(Estimator):
        default_network = "residual"
        training_defaults = TrainingSettings(learning_rate=1e-3)
        module_class = MyModule
        posterior_class = MyPosterior      # a `Posterior` with its own `kind`

        def _posterior(self, network, data):
            return self.posterior_class(network, data.theta_coordinates, data.x_standardizer, ...)
"""

import dataclasses
import warnings
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.distributions import Distribution

from fmpe.checks import as_count, as_float_tensor, check_shape, drop_invalid_simulations
from fmpe.io.store import SimulationStore
from fmpe.networks import materialize, network_builder
from fmpe.networks.registry import NETWORKS, accepts_nan, build_embedding, exchangeable_axes
from fmpe.posteriors import Posterior
from fmpe.posteriors.truncation import TruncatedPrior, hpd_threshold
from fmpe.simulation import Simulator, simulate, simulation_chunks
from fmpe.training.data import Augmentation, SimulationDataModule, StreamingDataModule
from fmpe.training.fit import fit
from fmpe.training.modules import EstimatorModule
from fmpe.training.settings import TrainingSettings
from fmpe.unbounded import UnboundedTransform, in_support

SIMULATIONS_FILE = "simulations.safetensors"


def _checked_prior(prior: Any) -> Distribution:
    if prior is None:
        raise ValueError(
            "the estimator needs a prior: a torch.distributions.Distribution over theta"
        )
    if not (
        callable(getattr(prior, "sample", None)) and callable(getattr(prior, "log_prob", None))
    ):
        raise ValueError(
            "the prior must be a torch.distributions.Distribution over theta (with sample and "
            f"log_prob), e.g. BoxUniform(low, high); got {type(prior).__name__} {prior!r}"
        )
    return prior


class Estimator:
    """Simulations in, a trained posterior out.

    Args:
        simulator: maps θ (n, d) to x (n, *x_shape); optional if simulations are appended.
        prior: a torch distribution over θ with `sample` and `log_prob`.
        network: a registered network name (see `fmpe.register_network`), or a builder
            ``builder(theta_dim, x_shape, **options) -> nn.Module``; None: the estimator's
            default.
        network_options: keyword arguments of the builder (JSON values, so that the posterior
            can be saved; ``linear`` may name or be a layer factory, e.g. "poet").
        embedding_net: maps standardized x (n, *x_shape) to features (n, k): a registered
            name or ``{"name": ..., **options}`` (saved by name), or a module (whose
            architecture must then be passed again to `fmpe.load`).
        map_to_unbounded: learn on T(θ), where T removes the bounds of the prior's support
            per dimension (a logit for a box, a log for a half-line; see
            `UnboundedTransform`). Samples then never fall outside the prior, and log_prob is
            normalized over its support.
    """

    default_network: str
    training_defaults = TrainingSettings()
    module_class: type[EstimatorModule]
    posterior_class: type[Posterior]
    """What `train` returns; registering the estimator registers it by its `kind`."""

    def __init__(
        self,
        simulator: Simulator | None = None,
        prior: Distribution | None = None,
        *,
        network: str | Callable[..., nn.Module] | None = None,
        network_options: dict[str, Any] | None = None,
        embedding_net: nn.Module | str | dict | None = None,
        map_to_unbounded: bool = False,
    ):
        self.simulator = simulator
        self.prior = _checked_prior(prior)
        self.network = network if network is not None else self.default_network
        network_builder(self.network)  # an unknown name fails here, not after simulating
        self.network_options = dict(network_options or {})
        self.embedding_net = embedding_net
        self.theta_dim = self._prior_dim(self.prior)
        self.theta_transform = (
            UnboundedTransform.for_prior(self.prior, self.theta_dim)
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

    # ----- simulations ------------------------------------------------------------------

    def append_simulations(self, theta: Tensor, x: Tensor) -> "Estimator":
        """Adds simulated pairs to the training data.

        Pairs with a NaN or infinite value are dropped (with a warning that counts them),
        except NaN in x where the embedding net reads it as missing values (`accepts_nan`);
        θ outside the prior's support is kept, with a warning.

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
        theta, x = drop_invalid_simulations(
            theta.float(), x.float(), allow_nan=accepts_nan(self.embedding_net)
        )
        outside = int((~in_support(self.prior, theta)).sum())
        if outside:
            warnings.warn(
                f"{outside} of {len(theta)} appended θ lie outside the prior's support (or on "
                "its bounds); they are trained on, but the posterior rejects samples there",
                stacklevel=2,
            )
        self.theta = theta if self.theta is None else torch.cat([self.theta, theta])
        self.x = x if self.x is None else torch.cat([self.x, x])
        return self

    def simulate(
        self,
        num_simulations: int,
        *,
        batch_size: int = 1000,
        num_workers: int = 0,
        executor: Executor | None = None,
        store: str | Path | SimulationStore | None = None,
        show_progress: bool = True,
    ) -> "Estimator":
        """Runs the simulator on θ drawn from the prior and keeps the results.

        Args:
            batch_size: θ per simulator call.
            num_workers: worker processes simulating batches in parallel (0: this process);
                the simulator must then be picklable. The result does not depend on it.
            executor: any `concurrent.futures.Executor` to simulate the batches on instead
                (a dask client's `get_executor()`, submitit for SLURM, MPI's or Ray's pool);
                the result is the same as in this process (`fmpe.simulation.simulate`).
            store: a folder to write the simulations to, one shard per batch, instead of
                memory; `train` then streams them from there. Simulations already in the
                folder count towards `num_simulations`, so an interrupted run goes on.
        """
        num_simulations = as_count(num_simulations, "num_simulations", minimum=1)
        if self.simulator is None:
            raise ValueError(
                "no simulator was given: pass one to the estimator or append simulations"
            )
        if store is None:
            theta, x = simulate(
                self.simulator,
                self.prior,
                num_simulations,
                batch_size=batch_size,
                num_workers=num_workers,
                executor=executor,
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
                executor=executor,
                show_progress=show_progress,
            ):
                self.store.append(theta, x, allow_nan=accepts_nan(self.embedding_net))
        return self

    def use_store(self, store: str | Path | SimulationStore) -> "Estimator":
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

    # ----- training ---------------------------------------------------------------------

    def train(
        self,
        num_simulations: int | None = None,
        *,
        store: str | Path | SimulationStore | None = None,
        checkpoint_dir: str | Path | None = None,
        augment_x: Augmentation | None = None,
        trainer_kwargs: dict | None = None,
        show_progress: bool = True,
        **settings,
    ) -> Posterior:
        """Trains the network and returns the posterior.

        Args:
            num_simulations: simulate this many pairs first (needs a simulator).
            store: train on the simulations in this folder of shards (see `simulate`),
                streamed from disk, which is how training sets larger than memory work;
                with `num_simulations`, simulate into it first whatever it lacks.
            checkpoint_dir: where the simulations (unless in a store) and checkpoints are
                kept. Calling `train` again with the same directory resumes an interrupted
                run.
            augment_x: ``augment(x, generator=None) -> x`` applied afresh to x every time a
                training pair is used (e.g. noise added to noise-free simulations), and once,
                with a fixed generator, to the validation pairs.
            trainer_kwargs: passed to `lightning.Trainer` (accelerator, devices, strategy,
                logger, precision, ...), overriding fmpe's choices; `callbacks` are added to
                fmpe's.
            settings: fields of `TrainingSettings` (batch_size, learning_rate, max_epochs,
                ...); the others keep this estimator's `training_defaults`. The weights with
                the lowest validation loss are returned.

        Returns:
            the posterior, on the device it was trained on.
        """
        settings = self.training_defaults.updated(settings)
        if num_simulations is not None:
            num_simulations = as_count(num_simulations, "num_simulations", minimum=1)
        L.seed_everything(settings.seed, verbose=False)
        directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
        data = self._data_module(
            num_simulations, store, directory, settings, augment_x, show_progress
        )
        x_shape = data.x_standardizer.mean.shape
        network, spec = self._build_network(x_shape)
        for module in network.modules():
            if hasattr(module, "fit_to_data"):
                module.fit_to_data(data.embedding_fit_data())
        module = self.module_class(network, settings, **self._module_options())
        device, record = fit(
            module,
            data,
            settings,
            checkpoint_dir=directory,
            trainer_kwargs=trainer_kwargs,
            show_progress=show_progress,
        )
        posterior = self._posterior(materialize(module.network), data)
        posterior.network_spec, posterior.embedding_spec = spec
        posterior.training_record = record
        return posterior.to(device)

    def train_rounds(
        self,
        num_rounds: int,
        simulations_per_round: int,
        x_obs: Tensor,
        *,
        epsilon: float = 1e-4,
        show_progress: bool = True,
        **train_options,
    ) -> Posterior:
        """Truncated sequential rounds for one observation (TSNPE): round 1 simulates from
        the prior; every later round from the prior truncated to the region holding 1 −
        `epsilon` of the last posterior's mass at `x_obs` (`fmpe.posteriors.truncation`),
        and trains anew on every round's simulations.

        Needs a posterior with an exact density (FMPE's or NPE's). The returned posterior
        is accurate inside the truncated region only: use it at `x_obs`. Its `metadata`
        records the rounds and each later round's acceptance rate under the prior; its
        training record's seconds sum every round's training.

        Args:
            train_options: as `train` takes them (settings, trainer_kwargs, augment_x).
        """
        num_rounds = as_count(num_rounds, "num_rounds", minimum=1)
        simulations_per_round = as_count(simulations_per_round, "simulations_per_round", minimum=2)
        if "checkpoint_dir" in train_options or "store" in train_options:
            raise ValueError(
                "train_rounds keeps its simulations in memory: no checkpoint_dir or store"
            )
        if self.simulator is None:
            raise ValueError("train_rounds needs a simulator")
        posterior = self.train(simulations_per_round, show_progress=show_progress, **train_options)
        acceptance_rates, seconds = [], posterior.training_record.seconds
        for _ in range(num_rounds - 1):
            threshold = hpd_threshold(posterior, x_obs, epsilon)
            proposal = TruncatedPrior(self.prior, posterior, x_obs, threshold)
            theta, x = simulate(
                self.simulator, proposal, simulations_per_round, show_progress=show_progress
            )
            acceptance_rates.append(proposal.acceptance_rate)
            self.append_simulations(theta, x)
            posterior = self.train(show_progress=show_progress, **train_options)
            seconds += posterior.training_record.seconds
        # The record is the last round's; its training seconds are every round's.
        posterior.training_record = dataclasses.replace(posterior.training_record, seconds=seconds)
        posterior.metadata.update(
            rounds=num_rounds,
            simulations_per_round=simulations_per_round,
            epsilon=epsilon,
            acceptance_rates=acceptance_rates,
        )
        return posterior

    def _module_options(self) -> dict[str, Any]:
        """Keyword arguments of `module_class` beyond the network and the settings."""
        return {}

    def _posterior(self, network: nn.Module, data) -> Posterior:
        raise NotImplementedError

    def _network_contract(self, x_shape: tuple[int, ...]) -> str:
        """What this estimator needs of a network, in words."""
        raise NotImplementedError

    def _probe(self, network: nn.Module, x_shape: tuple[int, ...]) -> tuple[tuple, tuple]:
        """Calls `network` on a batch of zeros: (the shape it gave, the shape it must give)."""
        raise NotImplementedError

    def _check_network(self, network: nn.Module, x_shape: tuple[int, ...]) -> None:
        """Calls the network once, in eval mode, and raises a clear error unless it acts as
        this estimator needs (`_network_contract`)."""
        was_training = network.training
        network.eval()
        try:
            with torch.no_grad():
                shape, expected = self._probe(network, x_shape)
        except (TypeError, RuntimeError, ValueError, AttributeError) as error:
            raise ValueError(
                f"{self._network_contract(x_shape)}; calling it failed: {error}"
            ) from error
        finally:
            network.train(was_training)
        if shape != expected:
            raise ValueError(f"{self._network_contract(x_shape)}, got shape {shape}")

    def _build_network(self, x_shape) -> tuple[nn.Module, tuple[dict | None, dict | str | None]]:
        """The network, and the specs that name it and its embedding net for saving."""
        options = dict(self.network_options)
        embedding_spec: dict | str | None = None
        if isinstance(self.embedding_net, nn.Module):
            options["embedding_net"], embedding_spec = self.embedding_net, "custom"
        elif self.embedding_net is not None:
            options["embedding_net"] = build_embedding(self.embedding_net, x_shape)
            embedding_spec = self.embedding_net
            if isinstance(embedding_spec, str):
                embedding_spec = {"name": embedding_spec}
        builder = network_builder(self.network)
        try:
            network = builder(self.theta_dim, tuple(x_shape), **options)
        except TypeError as error:
            raise ValueError(f"network {self.network!r} could not be built: {error}") from error
        self._check_network(network, tuple(x_shape))
        name = self.network if isinstance(self.network, str) else NETWORKS.name_of(self.network)
        # The posterior holds the network with its layers materialized (ordinary linear
        # layers, whatever `linear` and `end_linear` built them), so the file describes it
        # without them.
        saved = {k: v for k, v in self.network_options.items() if k not in ("linear", "end_linear")}
        network_spec = {"name": name, "options": saved} if name is not None else None
        return network, (network_spec, embedding_spec)

    def _data_module(
        self,
        num_simulations: int | None,
        store: str | Path | SimulationStore | None,
        directory: Path | None,
        settings: TrainingSettings,
        augment_x: Augmentation | None,
        show_progress: bool,
    ):
        options = dict(
            batch_size=settings.batch_size,
            validation_set=self.module_class.validation_set,
            validation_fraction=settings.validation_fraction,
            seed=settings.seed,
            theta_transform=self.theta_transform,
            augment_x=augment_x,
            x_exchangeable_axes=exchangeable_axes(self.embedding_net),
        )
        if store is not None:
            self.use_store(store)
        if self.store is not None:
            if num_simulations is not None:
                self.simulate(num_simulations, store=self.store, show_progress=show_progress)
            if len(self.store) == 0:
                raise ValueError(f"the simulation store {self.store.directory} is empty")
            return StreamingDataModule(self.store, **options)
        if directory is not None and (directory / SIMULATIONS_FILE).exists():
            self._reload_simulations(directory, num_simulations)
        else:
            if num_simulations is not None:
                self.simulate(num_simulations, show_progress=show_progress)
            if self.theta is None:
                raise ValueError(
                    "no training data: pass num_simulations, call append_simulations or use a store"
                )
            if directory is not None:
                directory.mkdir(parents=True, exist_ok=True)
                tensors = {"theta": self.theta.contiguous(), "x": self.x.contiguous()}
                requested = str(num_simulations if num_simulations is not None else len(self.theta))
                save_file(tensors, str(directory / SIMULATIONS_FILE), {"requested": requested})
        return SimulationDataModule(self.theta, self.x, **options)

    def _reload_simulations(self, directory: Path, num_simulations: int | None) -> None:
        """Reloads the training set of an interrupted run in `directory`."""
        path = directory / SIMULATIONS_FILE
        with safe_open(str(path), framework="pt") as f:
            stored = {name: f.get_tensor(name) for name in f.keys()}
            requested = (f.metadata() or {}).get("requested")
        if (
            num_simulations is not None
            and requested is not None
            and int(requested) != num_simulations
        ):
            raise ValueError(
                f"{directory} holds a run with {requested} simulations, but train asked for "
                f"{num_simulations}; use a new checkpoint_dir, or ask for {requested} to resume"
            )
        if self.theta is not None and not (
            torch.equal(stored["theta"], self.theta) and torch.equal(stored["x"], self.x)
        ):
            raise ValueError(
                f"{directory} holds a run with other simulations; use a new checkpoint_dir"
            )
        self.theta, self.x = stored["theta"], stored["x"]
