"""The benchmark's results: one row per (task, budget, estimator, observation, seed), with a
column per metric, in a `RowLog` (locked, repaired after crashes, no duplicate rows)."""

from pathlib import Path

from fmpe.benchmark.rowlog import PROVENANCE, RowLog

KEY = ("task", "budget", "estimator", "observation", "seed")
TRAILING = (
    "acceptance_rate",
    "trainable_parameters",
    "train_seconds",
    "sample_seconds",
    "evaluations",
    *PROVENANCE,
)
LEGACY_ESTIMATOR = "fmpe"  # rows written before the estimator column existed

Key = tuple[str, int, str, int, int]


def row_key(row: dict) -> Key:
    """(task, budget, estimator, observation, seed) of a row; ValueError if it does not parse."""
    return (
        str(row["task"]),
        int(row["budget"]),
        str(row["estimator"]),
        int(row["observation"]),
        int(row["seed"]),
    )


class ResultsStore(RowLog):
    """The results CSV at `path`: the key first, the metrics, then the bookkeeping columns.

    >>> store = ResultsStore("results/sbibm.csv")
    >>> store.add({"task": "two_moons", "budget": 10000, "estimator": "fmpe", ...})
    >>> done = store.completed()        # {(task, budget, estimator, observation, seed): row}
    """

    def __init__(self, path: str | Path):
        super().__init__(path, fields=KEY, key=KEY, trailing=TRAILING)

    def key_of(self, row: dict) -> Key:
        return row_key(row)

    def completed_row(self, row: dict) -> dict:
        row.setdefault("estimator", LEGACY_ESTIMATOR)
        return row
