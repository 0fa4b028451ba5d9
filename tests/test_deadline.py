"""Deadlines of long runs: durations, the decision to start a unit, recorded unit durations."""

import pytest

from fmpe.benchmark.deadline import Deadline, median_gap_seconds, parse_duration
from fmpe.benchmark.runner import expected_unit_seconds


@pytest.mark.parametrize(
    ("text", "seconds"), [("90m", 5400), ("2h", 7200), ("1h30m", 5400), ("45s", 45), ("600", 600)]
)
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5", "0m", "2 hours"])
def test_bad_durations_name_what_was_expected(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_a_unit_starts_only_if_it_is_expected_to_fit():
    now = [0.0]
    deadline = Deadline(100.0, clock=lambda: now[0])
    now[0] = 60.0
    assert deadline.allows("small", 30.0)
    assert not deadline.allows("large", 50.0)
    assert deadline.allows("unknown", None)
    now[0] = 100.0
    assert not deadline.allows("unknown too", None)
    assert deadline.left == ["large", "unknown too"]
    assert deadline.summary("fmpe x") == (
        "stopped for the deadline; left: large, unknown too; continue with: fmpe x"
    )
    assert Deadline(None).allows("anything", 1e9)


def test_recorded_durations_give_a_units_expected_seconds():
    def row(estimator, seed, second, train=100.0, task="slcp"):
        return {"task": task, "budget": "1000", "estimator": estimator, "seed": seed,
                "train_seconds": str(train),
                "finished_at": f"2026-01-01T00:00:{second:02d}+00:00"}  # fmt: skip

    rows = [row("fmpe", "0", s) for s in (0, 10, 20, 50)] + [row("npe", "0", 0, train=5.0)]
    assert median_gap_seconds(r["finished_at"] for r in rows[:4]) == 10.0
    assert expected_unit_seconds(rows, "slcp", 1000, "fmpe", 3, trained=False) == 130.0
    assert expected_unit_seconds(rows, "slcp", 1000, "fmpe", 3, trained=True) == 30.0
    # The same estimator's rows under another label stand in where this label has none,
    # before another estimator's; without either, another estimator's.
    assert expected_unit_seconds(rows, "slcp", 1000, "fmpe@defaults", 1, False) == 110.0
    assert expected_unit_seconds(rows, "slcp", 1000, "npe@rounds2", 1, False) == 5.0
    assert expected_unit_seconds(rows, "slcp", 1000, "score", 1, False) == 110.0
    # Another task's rows at the budget stand in where this task has none; none at all: None.
    assert expected_unit_seconds(rows, "two_moons", 1000, "fmpe", 1, False) == 110.0
    assert expected_unit_seconds(rows, "two_moons", 10000, "fmpe", 1, False) is None
    # A label with rows on another task only: the slower of those and this task's kin.
    slow = row("fmpe@defaults", "0", 0, train=500.0, task="two_moons")
    assert expected_unit_seconds([*rows, slow], "slcp", 1000, "fmpe@defaults", 1, False) == 510.0
    fast = row("fmpe@defaults", "0", 0, train=50.0, task="two_moons")
    assert expected_unit_seconds([*rows, fast], "slcp", 1000, "fmpe@defaults", 1, False) == 110.0
    # Sequential rounds train once per observation, so their gaps are not an amortized
    # posterior's scoring: they stand in for no amortized label.
    rounds = [row("fmpe@rounds2", "0", s, train=40.0) for s in (0, 59)]
    assert expected_unit_seconds([*rows, *rounds], "slcp", 1000, "fmpe+poet", 1, False) == 110.0
    assert expected_unit_seconds([*rows, *rounds], "slcp", 1000, "fmpe@rounds2", 1, False) == 99.0
    # The posterior scored last stands for the cell, not the slowest (seed 0 ran slower).
    later = [row("fmpe", "1", s, train=40.0) for s in (55, 57)]
    assert expected_unit_seconds([*rows, *later], "slcp", 1000, "fmpe", 3, False) == 46.0
    # ... once it has two rows: one row gives no scoring time yet.
    assert expected_unit_seconds([*rows, later[0]], "slcp", 1000, "fmpe", 3, False) == 130.0


def test_rows_scored_in_parallel_are_timed_by_their_rounds():
    """Two scoring workers finish rows in pairs, about 50 s an observation; the gaps between
    consecutive rows alternate between a few seconds and a whole round of 100 s."""
    times = [f"2026-01-01T00:0{s // 60}:{s % 60:02d}+00:00" for s in (0, 2, 100, 103, 200, 201)]
    assert median_gap_seconds(times) == 3.0
    assert median_gap_seconds(times, stride=2) == 50.0
    assert median_gap_seconds(times[:2], stride=2) == 2.0  # too few rows for the stride
    rows = [{"task": "slcp", "budget": "1000", "estimator": "fmpe", "seed": "0",
             "train_seconds": "60", "finished_at": t} for t in times]  # fmt: skip
    assert expected_unit_seconds(rows, "slcp", 1000, "fmpe", 10, False, workers=2) == 560.0


def test_a_pause_between_runs_does_not_set_a_units_duration():
    times = [f"2026-01-01T0{h}:{m:02d}:00+00:00" for h, m in ((0, 0), (0, 10), (8, 0))]
    assert median_gap_seconds(times) == 600.0  # not the mean of 10 min and 7 h 50 min


def test_caps_bound_each_unit_so_that_a_few_units_between_pauses_suffice():
    """Three runs of a session each, hours apart, and one unit's own work recorded as 100 s:
    capped, every gap that spans a pause counts as its cap, and a single row is enough."""
    times = [f"2026-01-01T0{h}:{m:02d}:00+00:00" for h, m in ((0, 0), (4, 0), (4, 1), (8, 0))]
    assert median_gap_seconds(times) == 14340.0  # uncapped, two of three gaps are pauses
    assert median_gap_seconds(times, caps=[100.0] * 4) == 100.0  # units 100, 100, 60, 100
    back_to_back = ["2026-01-01T08:00:50+00:00", "2026-01-01T08:01:40+00:00"]  # units of 50 s
    assert median_gap_seconds([*times, *back_to_back], caps=[100.0] * 6) == 60.0
    assert median_gap_seconds(times[:1], caps=[100.0]) == 100.0
    assert median_gap_seconds([None, times[0]], caps=[5.0, 100.0]) == 100.0  # None left out
    with pytest.raises(ValueError, match="3 caps for 4 timestamps; expected one each"):
        median_gap_seconds(times, caps=[100.0] * 3)
