"""Checks of user input: clear errors that name what was expected, nothing broadcast."""

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def as_float_tensor(value: Tensor | np.ndarray, name: str) -> Tensor:
    """Converts numpy arrays to tensors and rejects non-floating dtypes."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise ValueError(
            f"{name} must have a floating-point dtype, got {value.dtype}; convert it with .float()"
        )
    return value


def as_count(value, name: str, *, minimum: int = 0) -> int:
    """An integer count of at least `minimum`; bools and fractional numbers are refused.

    Integral floats (1e4) and numpy integers are accepted, since budgets are often written so.
    """
    integral = isinstance(value, int | np.integer) or (
        isinstance(value, float | np.floating) and float(value).is_integer()
    )
    if isinstance(value, bool | np.bool_) or not integral or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_shape(value: Tensor, expected: Sequence[int | None], name: str) -> None:
    """Raises unless value.shape matches expected, where None matches any size."""
    shape = tuple(value.shape)
    ok = len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected))
    if not ok:
        pretty = "(" + ", ".join("n" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} must have shape {pretty}, got {shape}")


def check_device(value: Tensor, device: torch.device, name: str) -> None:
    if value.device.type != device.type or (
        device.index is not None and value.device.index != device.index
    ):
        raise ValueError(
            f"{name} is on device {value.device} but the model is on {device}; "
            f"move it with .to('{device}')"
        )


def drop_invalid_simulations(
    theta: Tensor, x: Tensor, allow_nan: bool = False
) -> tuple[Tensor, Tensor]:
    """Removes pairs whose θ or x has a NaN or infinite entry, with a warning; with
    `allow_nan`, NaN in x is kept (missing values, for an embedding net that reads them).

    Args:
        theta: (n, d), x: (n, *x_shape)

    Returns:
        the valid pairs, theta: (m, d), x: (m, *x_shape)
    """
    if len(theta) == 0:
        raise ValueError("no simulations: theta and x hold 0 rows; nothing to train on")
    valid_x = ~torch.isinf(x) if allow_nan else torch.isfinite(x)
    valid = torch.isfinite(theta).flatten(1).all(1) & valid_x.flatten(1).all(1)
    num_dropped = int((~valid).sum())
    invalid = "infinite values" if allow_nan else "NaN or infinite values"
    if num_dropped == len(valid):
        raise ValueError(f"all {num_dropped} simulations contain {invalid}; nothing to train on")
    if num_dropped > 0:
        warnings.warn(
            f"dropped {num_dropped} of {len(valid)} simulations containing {invalid}",
            stacklevel=3,
        )
        theta, x = theta[valid], x[valid]
    return theta, x
