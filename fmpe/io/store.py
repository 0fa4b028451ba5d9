"""Simulations on disk, in safetensors shards, for training sets larger than memory.

A store is a folder of files `shard-000000.safetensors`, `shard-000001.safetensors`, ...; each
holds `theta` (m, d) and `x` (m, *x_shape). Shards are written whole (to a temporary name, then
renamed), so a simulation run that is killed leaves only complete shards and can go on.
"""

import os
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from fmpe.checks import as_float_tensor, check_shape, drop_invalid_simulations

SHARD_PATTERN = "shard-*.safetensors"


class SimulationStore:
    """A folder of simulation shards.

    >>> store = SimulationStore("simulations/")
    >>> store.append(theta, x)            # writes one shard
    >>> theta, x = store.load_shard(0)
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._rows = [self._shard_rows(path) for path in self.shard_paths]

    @property
    def shard_paths(self) -> list[Path]:
        return sorted(self.directory.glob(SHARD_PATTERN))

    @property
    def shard_rows(self) -> list[int]:
        """Number of simulations in each shard."""
        return list(self._rows)

    def __len__(self) -> int:
        return sum(self._rows)

    def shapes(self) -> tuple[int, tuple[int, ...]]:
        """d and x_shape of the stored simulations."""
        if not self._rows:
            raise ValueError(f"the simulation store {self.directory} holds no shards")
        with safe_open(str(self.shard_paths[0]), "pt") as f:
            return f.get_slice("theta").get_shape()[1], tuple(f.get_slice("x").get_shape()[1:])

    def append(self, theta: Tensor, x: Tensor, allow_nan: bool = False) -> None:
        """Writes theta (m, d) and x (m, *x_shape) as a new shard, without non-finite rows;
        with `allow_nan`, NaN in x is kept (missing trials, for the "set" embedding)."""
        theta = as_float_tensor(theta, "theta").detach().cpu().float()
        x = as_float_tensor(x, "x").detach().cpu().float()
        if theta.dim() != 2 or x.dim() < 2 or len(theta) != len(x):
            raise ValueError(
                "a shard needs theta (m, d) and x (m, *x_shape) with the same m, got "
                f"{tuple(theta.shape)} and {tuple(x.shape)}"
            )
        if self._rows:
            d, x_shape = self.shapes()
            check_shape(theta, (None, d), f"theta (as stored in {self.directory})")
            check_shape(x, (None, *x_shape), f"x (as stored in {self.directory})")
        theta, x = drop_invalid_simulations(theta, x, allow_nan=allow_nan)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"shard-{len(self._rows):06d}.safetensors"
        partial = path.with_suffix(".partial")
        save_file({"theta": theta.contiguous(), "x": x.contiguous()}, str(partial))
        os.replace(partial, path)
        self._rows.append(len(theta))

    def load_shard(self, index: int) -> tuple[Tensor, Tensor]:
        """theta (m, d) and x (m, *x_shape) of one shard."""
        path = self.shard_paths[index]
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{path} is not a readable simulation shard: {error}") from error
        if set(tensors) != {"theta", "x"}:
            raise ValueError(f"{path} must hold tensors 'theta' and 'x', found {sorted(tensors)}")
        return tensors["theta"], tensors["x"]

    def _shard_rows(self, path: Path) -> int:
        try:
            with safe_open(str(path), "pt") as f:
                theta_rows = f.get_slice("theta").get_shape()[0]
                x_rows = f.get_slice("x").get_shape()[0]
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{path} is not a readable simulation shard: {error}") from error
        if theta_rows != x_rows:
            raise ValueError(f"{path} holds {theta_rows} theta but {x_rows} x rows")
        return theta_rows
