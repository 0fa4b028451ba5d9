"""Benchmark results: one CSV row per (task, budget, estimator, observation, seed), kept safe
against crashes and concurrent runs.

Every read and write holds an exclusive lock (`fcntl.flock` on ``<file>.lock``), so two runs
never interleave their writes or both create the header. A row is appended whole and flushed
to disk before the lock is released; a last line that a crash left half-written is cut off
the next time the file is opened, and a row that does not parse is never counted as done.
A row with a metric the file has no column for rewrites the file with the new column (to a
temporary file, then renamed), so it gets a column per metric and estimator.
"""

import csv
import fcntl
import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

KEY = ("task", "budget", "estimator", "observation", "seed")
INTEGER_KEYS = ("budget", "observation", "seed")
TRAILING = (
    "acceptance_rate",
    "trainable_parameters",
    "train_seconds",
    "sample_seconds",
    "evaluations",
    "machine",
    "fmpe_version",
    "finished_at",
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


class ResultsStore:
    """The results CSV at `path`.

    >>> store = ResultsStore("results/sbibm.csv")
    >>> store.add({"task": "two_moons", "budget": 10000, "estimator": "fmpe", ...})
    >>> done = store.completed()        # {(task, budget, estimator, observation, seed): row}
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _repair(self) -> None:
        """Cuts a half-written last line (one without its newline). Holds the lock."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if not data or data.endswith(b"\n"):
                return
            cut = data.rfind(b"\n") + 1
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
        warnings.warn(
            f"{self.path}: removed a half-written last row ({len(data) - cut} bytes) that an "
            "interrupted run left; that cell will run again",
            stacklevel=4,
        )

    def _read(self) -> tuple[list[str], list[dict], int]:
        """The header, the rows that parse, and how many did not. Holds the lock."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return [], [], 0
        with open(self.path, newline="") as f:
            lines = list(csv.reader(f))
        header, body = lines[0], lines[1:]
        rows, broken = [], 0
        for values in body:
            if len(values) != len(header):
                broken += 1
                continue
            row = dict(zip(header, values))
            row.setdefault("estimator", LEGACY_ESTIMATOR)
            try:
                row_key(row)
            except (KeyError, ValueError):
                broken += 1
                continue
            rows.append(row)
        return header, rows, broken

    def rows(self) -> list[dict]:
        """Every complete row (values as strings), in the order written."""
        with self._locked():
            self._repair()
            _, rows, broken = self._read()
        if broken:
            warnings.warn(f"{self.path}: skipped {broken} rows that do not parse", stacklevel=2)
        return rows

    def completed(self) -> dict[Key, dict]:
        """The complete rows by (task, budget, estimator, observation, seed)."""
        return {row_key(row): row for row in self.rows()}

    def add(self, row: dict) -> bool:
        """Writes `row` unless a row with its key is there already; True if it was written."""
        key = row_key(row)
        with self._locked():
            self._repair()
            header, rows, broken = self._read()
            if any(row_key(r) == key for r in rows):
                return False
            if header and set(KEY) <= set(header) and set(row) <= set(header) and not broken:
                with open(self.path, "a", newline="") as f:
                    csv.writer(f).writerow([_text(row.get(column)) for column in header])
                    f.flush()
                    os.fsync(f.fileno())
            else:
                self._rewrite(_columns([*header, *row]), [*rows, row])
        if broken:
            warnings.warn(f"{self.path}: dropped {broken} rows that do not parse", stacklevel=2)
        return True

    def _rewrite(self, columns: list[str], rows: list[dict]) -> None:
        """Replaces the file by `rows` under `columns`, atomically. Holds the lock."""
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_text(row.get(column)) for column in columns])
        partial = self.path.with_name(self.path.name + ".partial")
        with open(partial, "w", newline="") as f:
            f.write(text.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, self.path)


def _columns(names: list[str]) -> list[str]:
    """The key first, the trailing bookkeeping last, everything else (metrics) between."""
    seen = list(dict.fromkeys(names))
    middle = [c for c in seen if c not in KEY and c not in TRAILING]
    return [*KEY, *middle, *[c for c in TRAILING if c in seen]]


def _text(value) -> str:
    return "" if value is None else str(value)
