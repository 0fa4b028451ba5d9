"""A CSV of measured rows that survives crashes and concurrent runs: every benchmark's store.

    log = RowLog("results/solvers.csv", fields=FIELDS, key=("solver", "observation"))
    if ("rk4", "3") not in log.completed():     # keys as the file holds them: strings
        log.add({"solver": "rk4", "observation": 3, ...})
    rows = log.rows()                           # dicts of strings, in the order written

Every read and write holds an exclusive lock (`fcntl.flock` on ``<file>.lock``), so two runs
never interleave their writes or both write the header. A row is appended whole and flushed
to disk before the lock is released; a last line that a crash left half-written is cut off
the next time the file is opened, and a row that does not parse is never counted as done.
With a `key`, a row whose key is in the file already is not written again. A row with a
column the file lacks rewrites the file with that column (to a temporary file, then renamed).
"""

import csv
import fcntl
import io
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

PROVENANCE = ("machine", "fmpe_version", "finished_at")
"""The columns `fmpe.benchmark.provenance` stamps; they stay last in every file."""


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on the file `path` (created if missing), waiting for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class RowLog:
    """The rows of the CSV at `path`.

    Args:
        path: the CSV; created with its header by the first `add`.
        fields: the first columns of a file, in order; a row may add others, which go
            after them, before the `trailing` columns that `fields` leaves out.
        key: the fields that identify a row; without one, every row added is written.
        trailing: the columns kept last, in this order, where the file has them.
    """

    def __init__(
        self,
        path: str | Path,
        fields: Sequence[str] = (),
        key: Sequence[str] = (),
        trailing: Sequence[str] = PROVENANCE,
    ):
        self.path = Path(path)
        self.fields = tuple(fields)
        self.key = tuple(key)
        self.trailing = tuple(trailing)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def key_of(self, row: dict) -> tuple:
        """The key of `row`, as strings; KeyError or ValueError if it has none."""
        return tuple(str(row[field]) for field in self.key)

    def completed_row(self, row: dict) -> dict:
        """`row` as read, before its key is checked; a subclass fills in columns that older
        files lack."""
        return row

    def rows(self) -> list[dict]:
        """Every complete row (values as strings), in the order written."""
        with exclusive_lock(self.lock_path):
            self._repair()
            _, rows, broken = self._read()
        if broken:
            warnings.warn(f"{self.path}: skipped {broken} rows that do not parse", stacklevel=2)
        return rows

    def completed(self) -> dict[tuple, dict]:
        """The complete rows by their key."""
        return {self.key_of(row): row for row in self.rows()}

    def add(self, row: dict) -> bool:
        """Writes `row` unless a row with its key is there already; True if it was written."""
        key = self.key_of(row)
        with exclusive_lock(self.lock_path):
            self._repair()
            header, rows, broken = self._read()
            if self.key and any(self.key_of(r) == key for r in rows):
                return False
            if header and set(self.fields) | set(row) <= set(header) and not broken:
                with open(self.path, "a", newline="") as f:
                    csv.writer(f).writerow([_text(row.get(column)) for column in header])
                    f.flush()
                    os.fsync(f.fileno())
            else:
                self._rewrite(self._columns([*self.fields, *header, *row]), [*rows, row])
        if broken:
            warnings.warn(f"{self.path}: dropped {broken} rows that do not parse", stacklevel=2)
        return True

    def _columns(self, names: list[str]) -> list[str]:
        """`fields` first, then the other columns of `names`, then the trailing ones."""
        extra = [c for c in dict.fromkeys(names) if c not in self.fields]
        middle = [c for c in extra if c not in self.trailing]
        return [*self.fields, *middle, *(c for c in self.trailing if c in extra)]

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
            "interrupted run left; that row will be measured again",
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
            row = self.completed_row(dict(zip(header, values)))
            try:
                self.key_of(row)
            except (KeyError, ValueError):
                broken += 1
                continue
            rows.append(row)
        return header, rows, broken

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


def _text(value) -> str:
    return "" if value is None else str(value)
