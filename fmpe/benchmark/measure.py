"""What every benchmark needs to report a number honestly: the machine, and timings."""

import os
import platform
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import torch

from fmpe._version import __version__
from fmpe.posteriors import Posterior


def machine_description(device: torch.device | str = "cpu") -> str:
    """A short name of the hardware a number came from."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA), {os.cpu_count()} CPU cores"
    processor = platform.processor() or platform.machine()
    return f"CPU {processor}, {os.cpu_count()} cores, torch {torch.__version__}"


def timestamp() -> str:
    """Now, in UTC, to the second (ISO 8601)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def provenance(device: torch.device | str = "cpu", machine: str | None = None) -> dict[str, str]:
    """The fields that say where and when a result row was measured: machine (by default
    `machine_description(device)`), fmpe_version and finished_at."""
    return {
        "machine": machine if machine is not None else machine_description(device),
        "fmpe_version": __version__,
        "finished_at": timestamp(),
    }


def timed(function, *args, repeats: int = 1, **kwargs):
    """The result of the last of `repeats` calls of `function`, and the median wall seconds
    of a call."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
    return result, statistics.median(seconds)


def float64_log_prob(posterior: Posterior, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reference log densities (n,) of theta (n, d): a float64 solve at tolerance 1e-9.

    The posterior is converted for the solve and back to float32 after it.
    """
    exact = posterior.double().log_prob(theta.double(), x.double(), rtol=1e-9, atol=1e-9)
    posterior.float()
    return exact


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def markdown_table(rows: Sequence[dict], fields: Sequence[str]) -> list[str]:
    """The lines of a markdown table of `rows`, one column per field (headed by its name with
    spaces for underscores); an empty cell shows as —."""
    lines = ["| " + " | ".join(f.replace("_", " ") for f in fields) + " |"]
    lines.append("|" + "---|" * len(fields))
    lines += ["| " + " | ".join(str(r[f]) or "—" for f in fields) + " |" for r in rows]
    return lines
