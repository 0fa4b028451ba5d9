"""Per-dimension z-scoring of parameters and data, fitted on the training split."""

import torch
from torch import Tensor, nn


class Standardizer(nn.Module):
    """An affine map z = (value - mean) / std, stored as buffers so it saves with the model.

    Args:
        mean: (*shape)
        std: (*shape), strictly positive.
    """

    def __init__(self, mean: Tensor, std: Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    @classmethod
    def fit(cls, values: Tensor, min_std: float = 1e-8) -> "Standardizer":
        """Fits mean and std of values (n, *shape) over the first dimension.

        Constant dimensions get std 1 so that they are shifted but not blown up. NaN entries
        (missing values) are left out of their dimension's moments; a dimension without
        values gets mean 0, and one with fewer than two std 1.
        """
        if torch.isnan(values).any():
            present = ~torch.isnan(values)
            count = present.sum(0)
            mean = torch.where(count > 0, values.nan_to_num().sum(0) / count.clamp(min=1), 0.0)
            squares = torch.where(present, values - mean, 0.0).pow(2).sum(0)
            std = torch.where(count > 1, (squares / (count - 1).clamp(min=1)).sqrt(), 1.0)
            return cls.from_moments(mean, std, min_std)
        mean = values.mean(0)
        std = values.std(0) if values.shape[0] > 1 else torch.ones_like(mean)
        return cls.from_moments(mean, std, min_std)

    @classmethod
    def from_moments(cls, mean: Tensor, std: Tensor, min_std: float = 1e-8) -> "Standardizer":
        """The map for a known mean and std (*shape); constant dimensions get std 1."""
        return cls(mean, torch.where(std > min_std, std, torch.ones_like(std)))

    def shared_along(self, axes: tuple[int, ...]) -> "Standardizer":
        """The map with one mean and std along each of `axes` of the shape (entries that are
        exchangeable, such as iid trials), from the moments averaged along them."""
        if not axes:
            return self
        mean = self.mean.mean(axes, keepdim=True)
        second_moment = (self.std**2 + self.mean**2).mean(axes, keepdim=True)
        std = (second_moment - mean**2).clamp(min=0).sqrt()
        return Standardizer.from_moments(
            mean.expand_as(self.mean).contiguous(), std.expand_as(self.std).contiguous()
        )

    def forward(self, values: Tensor) -> Tensor:
        """values: (n, *shape) -> (n, *shape)"""
        return (values - self.mean) / self.std

    def inverse(self, z: Tensor) -> Tensor:
        """z: (n, *shape) -> (n, *shape)"""
        return z * self.std + self.mean

    def log_abs_det_jacobian(self) -> Tensor:
        """log |det dz/dvalue| = -Σ log std, the density correction of the forward map."""
        return -self.std.log().sum()


class RunningMoments:
    """Counts, sums and sums of squares (in float64) of values added batch by batch, to fit a
    `Standardizer` to data that is never in memory at once. NaN entries (missing values) are
    left out of their entry's moments, as `Standardizer.fit` leaves them out."""

    def __init__(self):
        self.count: Tensor | None = None
        self.total: Tensor | None = None
        self.total_squares: Tensor | None = None

    def add(self, values: Tensor) -> None:
        """values: (m, *shape)"""
        values = values.double()
        present = ~torch.isnan(values)
        values = torch.where(present, values, 0.0)
        count, total, squares = present.sum(0), values.sum(0), values.pow(2).sum(0)
        if self.count is None:
            self.count, self.total, self.total_squares = count, total, squares
        else:
            self.count, self.total = self.count + count, self.total + total
            self.total_squares = self.total_squares + squares

    def standardizer(self, min_std: float = 1e-8) -> Standardizer:
        """The z-scoring of everything added, with the sample (n - 1) variance; an entry
        without values gets mean 0, and one with fewer than two std 1."""
        count = self.count.clamp(min=1)
        mean = torch.where(self.count > 0, self.total / count, 0.0)
        variance = (self.total_squares - count * mean**2) / (count - 1).clamp(min=1)
        std = torch.where(self.count > 1, variance.clamp(min=0).sqrt(), 1.0)
        return Standardizer.from_moments(mean.float(), std.float(), min_std)
