"""Tasks whose observations live in sbibm's file layout inside the installed sbibm package.

Layout: ``<files>/num_observation_<i>/`` holding ``observation.csv``, ``true_parameters.csv``,
``observation_seed.csv`` and ``reference_posterior_samples.csv.bz2``, each a CSV with a header.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fmpe.tasks.base import Task

SBIBM_MISSING = "the sbibm benchmark tasks need the sbibm package: pip install 'fmpe[sbibm]'"
SBIBM_METRICS = ("c2st", "mmd", "nltp")
"""What the sbibm benchmark reports: C2ST and MMD against the reference samples, and
−log q(θ*)."""


def sbibm_files(task: str) -> Path:
    """The folder of sbibm's shipped files for ``task``, found without importing sbibm."""
    spec = importlib.util.find_spec("sbibm")
    if spec is None or spec.origin is None:
        raise ImportError(SBIBM_MISSING)
    folder = Path(spec.origin).parent / "tasks" / task / "files"
    if not folder.is_dir():
        raise FileNotFoundError(f"the installed sbibm has no files for task {task!r}: {folder}")
    return folder


def read_csv(path: Path) -> Tensor:
    """A CSV with one header line (``.bz2`` allowed) as a float32 ``(rows, columns)`` tensor."""
    return torch.from_numpy(np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float32))


def observation_seed(files: Path, i: int) -> int:
    """The seed of torch's generator with which sbibm drew observation i of a task."""
    path = files / f"num_observation_{i}" / "observation_seed.csv"
    return int(np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.int64)[0, 0])


class ShippedFilesTask(Task):
    """A `Task` reading its observations from ``self.files`` (sbibm's layout)."""

    metrics = SBIBM_METRICS

    files: Path

    def _file(self, i: int, name: str) -> Path:
        self._check_observation(i)
        return self.files / f"num_observation_{i}" / name

    def observation(self, i: int) -> Tensor:
        return read_csv(self._file(i, "observation.csv")).reshape(self.x_shape)

    def true_parameters(self, i: int) -> Tensor:
        return read_csv(self._file(i, "true_parameters.csv")).reshape(self.theta_dim)

    def reference_samples(self, i: int) -> Tensor:
        return read_csv(self._file(i, "reference_posterior_samples.csv.bz2"))

    def observation_seed(self, i: int) -> int:
        """The seed of torch's generator with which observation i was drawn."""
        self._check_observation(i)
        return observation_seed(self.files, i)
