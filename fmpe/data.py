"""Training data: the split, the standardization and fast in-memory batching."""

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from fmpe.standardize import Standardizer


class TensorBatches(Dataset):
    """Indexes several tensors at once with a whole list of indices.

    Used with a BatchSampler and `batch_size=None`, one DataLoader step is one slicing
    operation instead of a Python loop over single examples and a collate.
    """

    def __init__(self, *tensors: Tensor):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, indices: list[int]) -> tuple[Tensor, ...]:
        return tuple(tensor[indices] for tensor in self.tensors)


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


class SimulationDataModule(L.LightningDataModule):
    """Splits simulations, fits the z-scoring on the training split and serves batches.

    Each validation pair gets one fixed time (uniform on [0, 1]) and one fixed base draw, so
    that the validation loss is the same function in every epoch and early stopping reacts to
    the network, not to fresh noise.

    Args:
        theta: (n, d), x: (n, *x_shape) finite simulations.
    """

    def __init__(
        self,
        theta: Tensor,
        x: Tensor,
        batch_size: int,
        validation_fraction: float = 0.05,
        seed: int = 0,
    ):
        super().__init__()
        self.batch_size = batch_size
        self.seed = seed
        train, validation = split_indices(len(theta), validation_fraction, seed)
        self.theta_standardizer = Standardizer.fit(theta[train])
        self.x_standardizer = Standardizer.fit(x[train])
        theta_z = self.theta_standardizer(theta)
        x_z = self.x_standardizer(x)

        noise = torch.Generator().manual_seed(seed + 1)
        num_validation = len(validation)
        fixed_t = (torch.arange(num_validation) + torch.rand(num_validation, generator=noise)) / (
            num_validation
        )
        fixed_t = fixed_t[torch.randperm(num_validation, generator=noise)].to(theta.dtype)
        fixed_theta0 = torch.randn(theta_z[validation].shape, generator=noise, dtype=theta.dtype)

        self.train_set = TensorBatches(theta_z[train], x_z[train])
        self.validation_set = TensorBatches(
            theta_z[validation], x_z[validation], fixed_t, fixed_theta0
        )

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed + 2)
        sampler = BatchSampler(
            RandomSampler(self.train_set, generator=generator), self.batch_size, drop_last=False
        )
        return DataLoader(self.train_set, sampler=sampler, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        sampler = BatchSampler(
            SequentialSampler(self.validation_set), max(self.batch_size, 4096), drop_last=False
        )
        return DataLoader(self.validation_set, sampler=sampler, batch_size=None)
