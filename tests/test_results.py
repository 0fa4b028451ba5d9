"""The results stores (`RowLog`, and `ResultsStore` on it) against forced races, crashes
mid-write and old files."""

import csv
import multiprocessing

import pytest
import torch

from fmpe.benchmark.results import KEY, ResultsStore
from fmpe.benchmark.rowlog import RowLog


def row(observation, task="two_moons", estimator="fmpe", **metrics):
    return {
        "task": task,
        "budget": 10000,
        "estimator": estimator,
        "observation": observation,
        "seed": 0,
        **metrics,
        "train_seconds": 1.5,
        "machine": "CPU x86_64, 2 cores",
        "finished_at": "2026-12-01T00:00:00+00:00",
    }


def lines(path):
    return path.read_text().splitlines()


def _add_many(path, start, count, barrier):
    barrier.wait()  # every process starts adding at the same moment
    store = ResultsStore(path)
    for observation in range(start, start + count):
        store.add(row(observation, c2st=0.5 + observation / 1000))


def test_forced_races_write_one_header_and_every_row_once(tmp_path):
    path = tmp_path / "new.csv"
    processes, per_process = 8, 25
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes)
    workers = [
        context.Process(target=_add_many, args=(path, k * per_process, per_process, barrier))
        for k in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    text = lines(path)
    assert sum(line.startswith("task,") for line in text) == 1
    rows = ResultsStore(path).rows()
    assert sorted(int(r["observation"]) for r in rows) == list(range(processes * per_process))
    assert len(text) == 1 + processes * per_process


def test_racing_runs_of_the_same_cell_keep_one_row(tmp_path):
    path = tmp_path / "same.csv"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(6)
    workers = [context.Process(target=_add_many, args=(path, 0, 5, barrier)) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert len(ResultsStore(path).rows()) == 5


def test_a_row_cut_by_a_crash_is_repaired_not_glued(tmp_path):
    path = tmp_path / "results.csv"
    store = ResultsStore(path)
    for observation in (1, 2):
        store.add(row(observation, c2st=0.55, mmd=0.01))
    whole = path.read_bytes()
    path.write_bytes(whole + b"two_moons,10000,fmpe,3,0,0.61,0.0")  # killed mid-write
    with pytest.warns(UserWarning, match="removed a half-written last row"):
        done = store.completed()
    assert sorted(key[3] for key in done) == [1, 2]  # the broken row is not counted
    assert path.read_bytes() == whole
    store.add(row(3, c2st=0.6, mmd=0.02))
    rows = store.rows()
    assert [r["observation"] for r in rows] == ["1", "2", "3"]
    assert rows[2]["mmd"] == "0.02"


def test_a_row_that_does_not_parse_is_never_counted(tmp_path):
    path = tmp_path / "results.csv"
    ResultsStore(path).add(row(1, c2st=0.5))
    with path.open("a") as f:
        f.write("two_moons,10000,fmpe,seven,0,0.5,,,\n")
    with pytest.warns(UserWarning, match="skipped 1 rows that do not parse"):
        assert len(ResultsStore(path).rows()) == 1


def test_a_new_metric_adds_a_column_and_keeps_every_row(tmp_path):
    path = tmp_path / "results.csv"
    store = ResultsStore(path)
    store.add(row(1, c2st=0.5))
    store.add(row(1, estimator="npe", c2st=0.6, is_efficiency=0.3))
    with path.open(newline="") as f:
        header = next(csv.reader(f))
    assert header[: len(KEY)] == list(KEY)
    assert header.index("c2st") < header.index("is_efficiency") < header.index("train_seconds")
    rows = store.rows()
    assert [(r["estimator"], r["is_efficiency"]) for r in rows] == [("fmpe", ""), ("npe", "0.3")]


def test_files_from_before_the_estimator_column_are_read_as_fmpe(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text(
        "task,budget,observation,seed,c2st,train_seconds,machine,finished_at\n"
        "two_moons,10000,1,0,0.53,20.0,CPU,2026-11-27T10:00:00+00:00\n"
    )
    store = ResultsStore(path)
    assert list(store.completed()) == [("two_moons", 10000, "fmpe", 1, 0)]
    store.add(row(2, c2st=0.54))
    assert [r["estimator"] for r in store.rows()] == ["fmpe", "fmpe"]
    assert lines(path)[0].startswith("task,budget,estimator,observation,seed,c2st")


def test_a_script_log_keeps_its_fields_order_and_every_row_without_a_key(tmp_path):
    path = tmp_path / "solvers.csv"
    fields = ("solver", "machine", "seconds")  # provenance need not be last in a script's own
    log = RowLog(path, fields)
    for seconds in (1.0, 1.0, 2.5):
        assert log.add({"solver": "rk4", "machine": "test", "seconds": seconds})
    with open(path, newline="") as f:
        assert list(csv.reader(f)) == [
            list(fields),
            *[["rk4", "test", s] for s in ("1.0", "1.0", "2.5")],
        ]
    assert path.read_bytes().count(b"\r\n") == 4  # csv's line ends, as in every results file


def test_a_keyed_log_skips_finished_rows_and_repairs_a_torn_line(tmp_path):
    path = tmp_path / "coupling.csv"
    log = RowLog(
        path, ("coupling", "observation", "c2st", "finished_at"), key=("coupling", "observation")
    )
    assert log.add({"coupling": "ot", "observation": 1, "c2st": 0.6})
    assert not log.add({"coupling": "ot", "observation": 1, "c2st": 0.7})
    with open(path, "a") as f:
        f.write("ot,2,0.5")  # a crash before the line's end
    with pytest.warns(UserWarning, match="half-written"):
        assert set(log.completed()) == {("ot", "1")}
    assert log.add({"coupling": "ot", "observation": 2, "c2st": 0.55, "evaluations": 40})
    rows = log.rows()
    assert [r["c2st"] for r in rows] == ["0.6", "0.55"]
    assert list(rows[0]) == ["coupling", "observation", "c2st", "finished_at", "evaluations"]


def test_the_report_gives_the_spread_over_training_seeds():
    from fmpe.benchmark.report import c2st_table, summarize

    rows = [
        {**row(observation, c2st=c2st), "seed": seed}
        for seed, c2st in ((0, 0.60), (1, 0.70), (2, 0.80))
        for observation in (1, 2)
    ]
    summary = summarize(rows)
    assert summary[("two_moons", 10000, "fmpe")]["seeds"] == (pytest.approx(0.1), 3)
    table = c2st_table(summary)
    assert "| two_moons | 1e+04 | 0.700 ± 0.089 (6); seeds ± 0.100 (3) |" in table
    one_seed = summarize([r for r in rows if r["seed"] == 0])
    assert "0.600 ± 0.000 (2) | 0.61 |" in c2st_table(one_seed)


def test_defaults_and_selected_rows_get_tables_of_their_own():
    from fmpe.benchmark.report import c2st_tables, summarize

    rows = [row(1, c2st=0.6), row(1, estimator="fmpe@defaults", c2st=0.7)]
    selected, defaults = c2st_tables(summarize(rows)).split("## Defaults")
    assert "| fmpe C2ST" in selected and "fmpe@defaults" not in selected
    assert "| fmpe@defaults C2ST" in defaults and "0.700 ± 0.000 (1)" in defaults
    assert "Defaults" not in c2st_tables(summarize(rows[:1]))


def test_a_run_names_its_label_and_files_and_refuses_rounds_without_an_observation(tmp_path):
    from fmpe.benchmark import Run

    run = Run("two_moons", 10_000, variant="poet", seed=1)
    assert run.label == "fmpe+poet"
    assert run.stem(tmp_path) == tmp_path / "two_moons_10000_fmpe+poet_seed1"
    rounds = Run("sir", 10_000, defaults=True, rounds=2, observation=3)
    assert rounds.label == "fmpe@defaults@rounds2"
    assert rounds.stem(tmp_path).name == "sir_10000_fmpe@defaults@rounds2_seed0_obs3"
    model, train = Run("two_moons", 10_000).hyperparameters()
    assert "learning_rate" in train and model
    with pytest.raises(ValueError, match="rounds=2 needs an observation"):
        Run("sir", 10_000, rounds=2)
    with pytest.raises(ValueError, match="rounds=1 needs no observation"):
        Run("sir", 10_000, observation=3)


def test_a_run_with_changes_trains_those_settings_under_files_of_its_own(tmp_path):
    from fmpe.benchmark import Run, load_card

    card = load_card("gaussian_linear")
    plain = Run("gaussian_linear", 300)
    changes = {"model": {"network_options": {"hidden_widths": [8]}}, "train": {"max_epochs": 2}}
    changed = Run("gaussian_linear", 300, selected=False, changes=changes)
    model, train = changed.hyperparameters()
    base_model, base_train = card.hyperparameters(300, selected=False)
    assert model["network_options"]["hidden_widths"] == [8] and train["max_epochs"] == 2
    assert {k: v for k, v in train.items() if k != "max_epochs"} == {
        k: v for k, v in base_train.items() if k != "max_epochs"
    }
    assert {k: v for k, v in model.items() if k != "network_options"} == {
        k: v for k, v in base_model.items() if k != "network_options"
    }
    stems = {
        r.stem(tmp_path) for r in (plain, changed, Run("gaussian_linear", 300, selected=False))
    }
    assert len(stems) == 3 and plain.stem(tmp_path).name == "gaussian_linear_300_fmpe_seed0"
    # On simulations drawn once: the network and settings of the changes.
    theta = torch.randn(300, 10)
    posterior = changed.fit(torch.device("cpu"), show_progress=False, simulations=(theta, theta))
    assert posterior.training_record.epochs <= 2
    assert posterior.metadata["task"] == "gaussian_linear"
    with pytest.raises(ValueError, match="budget is 300 simulations, but 299"):
        changed.fit(torch.device("cpu"), simulations=(theta[:299], theta[:299]))
    with pytest.raises(ValueError, match="rounds draw their own simulations"):
        Run("sir", 300, rounds=2, observation=1).fit(
            torch.device("cpu"), simulations=(theta, theta)
        )
