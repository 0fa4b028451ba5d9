"""Training data: the split, the standardization, augmentation of x, and batches from memory
or from a store on disk."""

import math
from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    Sampler,
    SequentialSampler,
)

from fmpe.coordinates import ThetaCoordinates
from fmpe.io.store import SimulationStore
from fmpe.standardize import RunningMoments, Standardizer
from fmpe.unbounded import UnboundedTransform

# Measured on two_moons at 1e3 simulations (100 validation pairs, ten observations): C2ST 0.787
# with one draw per pair, 0.757 with 5 (500 points) and 0.750 with 20.
MIN_VALIDATION_POINTS = 500

Augmentation = Callable[..., Tensor]
"""augment(x: (n, *x_shape), generator: torch.Generator | None = None) -> (n, *x_shape).

Applied to raw x afresh every time a training pair is used (e.g. detector noise added to
noise-free simulations), and once, with a fixed generator, to the validation pairs."""

ValidationSetBuilder = Callable[[Tensor, Tensor, int], "TensorBatches"]
"""validation_set(theta_z: (m, d), x_z: (m, *x_shape), seed) -> the validation set."""


class TensorBatches(Dataset):
    """Indexes several tensors at once with a whole list of indices.

    Used with a BatchSampler and `batch_size=None`, one DataLoader step is one slicing
    operation instead of a Python loop over single examples and a collate.
    """

    def __init__(self, *tensors: Tensor):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, indices: Tensor | list[int]) -> tuple[Tensor, ...]:
        return tuple(tensor[indices] for tensor in self.tensors)


class ShuffledBatches(Sampler):
    """Index tensors (b,) of the batches of one epoch, a new permutation drawn from
    `generator` each epoch.

    Yields whole index tensors, so a batch is one indexing operation. Lightning's DDP wraps
    the sampler so that each process takes every world-size-th batch.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n = n
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        return iter(torch.randperm(self.n, generator=self.generator).split(self.batch_size))


def split_indices(n: int, validation_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random split into training and validation indices.

    Returns:
        train: (n - m,), validation: (m,) with m = max(1, round(n * validation_fraction))
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    num_validation = max(1, round(n * validation_fraction))
    if n - num_validation < 1:
        raise ValueError(f"need at least 2 simulations to train and validate, got {n}")
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return permutation[num_validation:], permutation[:num_validation]


def fixed_path_noise(theta_z: Tensor, x_z: Tensor, seed: int) -> TensorBatches:
    """Flow-matching validation pairs with fixed times (stratified on [0, 1]) and fixed base
    draws, so that the validation loss is the same function in every epoch and the choice of
    the best weights reacts to the network, not to fresh noise.

    With fewer than `MIN_VALIDATION_POINTS` pairs each pair is repeated with other draws until
    there are at least that many points: one draw per pair leaves a loss over a few hundred
    pairs too noisy to pick the best weights by.

    Args:
        theta_z: (m, d), x_z: (m, *x_shape) standardized validation pairs.

    Returns:
        the set of (θ, x, t, θ0) with r·m rows, r = ⌈MIN_VALIDATION_POINTS / m⌉ or 1.
    """
    repeats = max(1, math.ceil(MIN_VALIDATION_POINTS / len(theta_z)))
    theta_z = theta_z.repeat(repeats, 1)
    x_z = x_z.repeat(repeats, *[1] * (x_z.dim() - 1))
    noise = torch.Generator().manual_seed(seed + 1)
    m = len(theta_z)
    fixed_t = (torch.arange(m) + torch.rand(m, generator=noise)) / m
    fixed_t = fixed_t[torch.randperm(m, generator=noise)].to(theta_z.dtype)
    fixed_theta0 = torch.randn(theta_z.shape, generator=noise, dtype=theta_z.dtype)
    return TensorBatches(theta_z, x_z, fixed_t, fixed_theta0)


def _augmented(augment: Augmentation | None, x: Tensor, seed: int) -> Tensor:
    """x augmented once with a generator seeded by `seed` (x itself without augmentation)."""
    if augment is None:
        return x
    return augment(x, generator=torch.Generator(x.device).manual_seed(seed))


class _TrainingData(L.LightningDataModule):
    """What both data modules share: the validation loader, and x augmented and standardized
    on the device for training batches when there is an augmentation.

    Attributes set by subclasses: batch_size, validation_set, theta_transform,
    theta_standardizer, x_standardizer, augment_x.
    """

    batch_size: int
    validation_set: TensorBatches
    theta_transform: UnboundedTransform
    theta_standardizer: Standardizer
    x_standardizer: Standardizer
    augment_x: Augmentation | None

    @property
    def theta_coordinates(self) -> ThetaCoordinates:
        """θ ↔ z as fitted here, handed whole to the posterior."""
        return ThetaCoordinates(self.theta_transform, self.theta_standardizer)

    def val_dataloader(self) -> DataLoader:
        sampler = BatchSampler(
            SequentialSampler(self.validation_set), max(self.batch_size, 4096), drop_last=False
        )
        return DataLoader(self.validation_set, sampler=sampler, batch_size=None)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # Training batches then hold raw x: fresh noise per use, drawn where the batch lives.
        if self.augment_x is None or not self.trainer.training:
            return batch
        theta, x = batch
        return theta, self.x_standardizer.to(x.device)(self.augment_x(x))


class SimulationDataModule(_TrainingData):
    """Splits in-memory simulations, fits the z-scoring on the training split and serves
    shuffled batches.

    Args:
        theta: (n, d), x: (n, *x_shape) finite simulations.
        validation_set: builds the validation set of the estimator being trained.
        theta_transform: applied to θ before the z-scoring (None: the identity).
        augment_x: applied to x of every training batch, and once to the validation pairs;
            the z-scoring of x is fitted on augmented training data.
        x_exchangeable_axes: axes of one x along which it is z-scored alike (iid trials).
    """

    def __init__(
        self,
        theta: Tensor,
        x: Tensor,
        batch_size: int,
        validation_set: ValidationSetBuilder = fixed_path_noise,
        validation_fraction: float = 0.05,
        seed: int = 0,
        theta_transform: UnboundedTransform | None = None,
        augment_x: Augmentation | None = None,
        x_exchangeable_axes: tuple[int, ...] = (),
    ):
        super().__init__()
        self.batch_size = batch_size
        self.augment_x = augment_x
        self.theta_transform = theta_transform or UnboundedTransform.identity(theta.shape[1])
        theta = self.theta_transform.checked(theta, "the training simulations")
        train, validation = split_indices(len(theta), validation_fraction, seed)
        self.theta_standardizer = Standardizer.fit(theta[train])
        x_fitted = Standardizer.fit(_augmented(augment_x, x[train], seed + 4))
        self.x_standardizer = x_fitted.shared_along(x_exchangeable_axes)
        theta_z = self.theta_standardizer(theta)
        x_validation = self.x_standardizer(_augmented(augment_x, x[validation], seed + 5))
        self.validation_set = validation_set(theta_z[validation], x_validation, seed)
        x_train = x[train] if augment_x is not None else self.x_standardizer(x[train])
        self.train_set = TensorBatches(theta_z[train], x_train)
        self._x, self._train = x, train
        # The generator is made where the batches are drawn and pickled as its state: DDP's
        # spawned processes receive the module pickled, and a torch.Generator does not travel
        # through their pickler.
        self.shuffle_state = torch.Generator().manual_seed(seed + 2).get_state()
        self.shuffle: torch.Generator | None = None

    def train_dataloader(self) -> DataLoader:
        if self.shuffle is None:
            self.shuffle = torch.Generator()
            self.shuffle.set_state(self.shuffle_state)
        sampler = ShuffledBatches(len(self.train_set), self.batch_size, self.shuffle)
        return DataLoader(self.train_set, sampler=sampler, batch_size=None)

    def state_dict(self) -> dict:
        """The state of the shuffling's generator, which Lightning checkpoints, so that a
        resumed run draws the batches an uninterrupted one would."""
        shuffle = self.shuffle_state if self.shuffle is None else self.shuffle.get_state()
        return {"shuffle_generator": shuffle}

    def load_state_dict(self, state_dict: dict) -> None:
        self.shuffle_state = state_dict["shuffle_generator"]
        if self.shuffle is not None:
            self.shuffle.set_state(self.shuffle_state)

    def __getstate__(self) -> dict:
        state = {**self.__dict__, "shuffle": None}
        state["shuffle_state"] = self.state_dict()["shuffle_generator"]
        return state

    def embedding_fit_data(self, max_rows: int = 50_000) -> Tensor:
        """Standardized training x (at most `max_rows`, unaugmented) for `fit_to_data`."""
        return self.x_standardizer(self._x[self._train[:max_rows]])


class ShardBatches(IterableDataset):
    """Training batches streamed from a simulation store.

    Each epoch visits the shards in a new seeded order, `shards_in_memory` at a time, and
    shuffles the rows of the shards in memory together. Under DDP every process reads the same
    sequence and keeps every world-size-th batch, so all processes take the same number of
    steps. Batches hold standardized θ and standardized x, or raw x when `standardize_x` is
    off (x is then augmented and standardized after the transfer).
    """

    def __init__(
        self,
        store: SimulationStore,
        train_rows: list[Tensor],
        theta_coordinates: ThetaCoordinates,
        x_standardizer: Standardizer | None,
        batch_size: int,
        seed: int,
        shards_in_memory: int,
    ):
        self.store = store
        self.train_rows = train_rows
        self.theta_coordinates = theta_coordinates
        self.x_standardizer = x_standardizer
        self.batch_size = batch_size
        self.seed = seed
        self.shards_in_memory = shards_in_memory
        self.epoch = 0

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(self.seed + 3 + 7919 * self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.train_rows), generator=generator).tolist()
        groups = [
            order[i : i + self.shards_in_memory]
            for i in range(0, len(order), self.shards_in_memory)
        ]
        rank, world = _rank_and_world_size()
        batches_per_group = [
            sum(len(self.train_rows[s]) for s in group) // self.batch_size for group in groups
        ]
        total = sum(batches_per_group) // world * world
        k = 0
        for group, num_batches in zip(groups, batches_per_group):
            loaded = [self.store.load_shard(s) for s in group]
            theta = torch.cat([t[self.train_rows[s]] for (t, _), s in zip(loaded, group)])
            x = torch.cat([x[self.train_rows[s]] for (_, x), s in zip(loaded, group)])
            permutation = torch.randperm(len(theta), generator=generator)
            for b in range(num_batches):
                if k >= total:
                    return
                if k % world == rank:
                    index = permutation[b * self.batch_size : (b + 1) * self.batch_size]
                    x_batch = x[index]
                    if self.x_standardizer is not None:
                        x_batch = self.x_standardizer(x_batch)
                    yield self.theta_coordinates.to_z(theta[index]), x_batch
                k += 1


def _rank_and_world_size() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class StreamingDataModule(_TrainingData):
    """Trains from a simulation store without holding it in memory.

    From every shard a seeded `validation_fraction` of rows is held out and kept in memory;
    the z-scoring (of `theta_transform(θ)`, and of augmented x) is fitted on the other rows in
    one streaming pass. Arguments as for `SimulationDataModule`.
    """

    def __init__(
        self,
        store: SimulationStore,
        batch_size: int,
        validation_set: ValidationSetBuilder = fixed_path_noise,
        validation_fraction: float = 0.05,
        seed: int = 0,
        shards_in_memory: int = 4,
        theta_transform: UnboundedTransform | None = None,
        augment_x: Augmentation | None = None,
        x_exchangeable_axes: tuple[int, ...] = (),
    ):
        super().__init__()
        self.batch_size = batch_size
        self.augment_x = augment_x
        self.theta_transform = theta_transform or UnboundedTransform.identity(store.shapes()[0])
        splits = [
            split_indices(rows, validation_fraction, seed + index)
            for index, rows in enumerate(store.shard_rows)
        ]
        train_rows = [train for train, _ in splits]
        # One pass over the shards: moments of the training rows, validation rows kept.
        theta_moments, x_moments = RunningMoments(), RunningMoments()
        theta_validation, x_validation, fit_rows = [], [], []
        for index, (train, validation) in enumerate(splits):
            theta, x = store.load_shard(index)
            theta = self.theta_transform.checked(theta, f"shard {index} of {store.directory}")
            theta_moments.add(theta[train])
            x_moments.add(_augmented(augment_x, x[train], seed + 4 + index))
            theta_validation.append(theta[validation])
            x_validation.append(_augmented(augment_x, x[validation], seed + 5 + index))
            if sum(map(len, fit_rows)) < 50_000:
                fit_rows.append(x[train])
        self.theta_standardizer = theta_moments.standardizer()
        self.x_standardizer = x_moments.standardizer().shared_along(x_exchangeable_axes)
        self.unaugmented_x = torch.cat(fit_rows)
        self.validation_set = validation_set(
            self.theta_standardizer(torch.cat(theta_validation)),
            self.x_standardizer(torch.cat(x_validation)),
            seed,
        )
        self.train_set = ShardBatches(
            store,
            train_rows,
            self.theta_coordinates,
            self.x_standardizer if augment_x is None else None,
            batch_size,
            seed,
            shards_in_memory,
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=None)

    def state_dict(self) -> dict:
        """The epochs streamed so far, which seed the next epoch's order; Lightning
        checkpoints them, so that a resumed run streams what an uninterrupted one would."""
        return {"epoch": self.train_set.epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train_set.epoch = state_dict["epoch"]

    def embedding_fit_data(self, max_rows: int = 50_000) -> Tensor:
        """Standardized training x (at most `max_rows`, unaugmented) for `fit_to_data`."""
        return self.x_standardizer(self.unaugmented_x[:max_rows])
