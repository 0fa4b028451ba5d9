"""The benchmark command line, end to end on a tiny budget, and its resumption."""

import csv
import json
import re
import shlex
import shutil

import pytest

import fmpe
from fmpe.benchmark.cards import card_folder
from fmpe.cli import main

pytest.importorskip("sbibm")


def rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_benchmark_and_report_end_to_end(tmp_path, capsys):
    results, runs = tmp_path / "results.csv", tmp_path / "runs"
    arguments = ["benchmark", "gaussian_linear", "--budget", "300", "--observations", "1",
                 "--samples", "1000", "--device", "cpu", "--quiet",
                 "--results", str(results), "--runs", str(runs)]  # fmt: skip
    main(arguments)
    printed = capsys.readouterr().out
    assert "gaussian_linear budget     300 observation  1: C2ST" in printed
    (row,) = rows(results)
    assert (row["task"], row["budget"], row["observation"]) == ("gaussian_linear", "300", "1")
    assert 0.5 <= float(row["c2st"]) <= 1.0
    assert float(row["acceptance_rate"]) == 1.0  # a Gaussian prior rejects nothing
    assert "results in" in printed
    assert "CPU" in row["machine"]
    assert (runs / "gaussian_linear_300_fmpe_seed0.fmpe").exists()

    main(["report", "--results", str(results), "--out", str(tmp_path)])
    table = (tmp_path / "results_table.md").read_text()
    assert "| gaussian_linear | 3e+02 |" in table
    assert "over 1 posteriors and sampling" in table
    assert (tmp_path / "results_c2st.png").stat().st_size > 10_000


def test_restarted_benchmark_skips_finished_cells(tmp_path, monkeypatch):
    results, runs = tmp_path / "results.csv", tmp_path / "runs"
    common = ["--budget", "300", "--samples", "500", "--device", "cpu", "--quiet",
              "--results", str(results), "--runs", str(runs)]  # fmt: skip
    main(["benchmark", "two_moons", "--observations", "1", *common])
    first = rows(results)

    # The restart must neither retrain nor rescore observation 1.
    import fmpe.estimators

    def no_training(*args, **kwargs):
        raise AssertionError("the finished posterior must be reloaded, not retrained")

    monkeypatch.setattr(fmpe.estimators.FMPE, "train", no_training)
    main(["benchmark", "two_moons", "--observations", "1-2", *common])
    second = rows(results)
    assert second[0] == first[0]
    assert [r["observation"] for r in second] == ["1", "2"]


def test_sequential_rounds_train_a_posterior_per_observation(tmp_path):
    results, runs = tmp_path / "results.csv", tmp_path / "runs"
    main(["benchmark", "two_moons", "--budget", "300", "--rounds", "2", "--observations",
          "1-2", "--samples", "500", "--device", "cpu", "--quiet", "--results", str(results),
          "--runs", str(runs)])  # fmt: skip
    assert [(r["estimator"], r["observation"]) for r in rows(results)] == [
        ("fmpe@rounds2", "1"),
        ("fmpe@rounds2", "2"),
    ]
    for observation in (1, 2):
        saved = fmpe.load(runs / f"two_moons_300_fmpe@rounds2_seed0_obs{observation}.fmpe")
        assert saved.metadata["rounds"] == 2 and len(saved.metadata["acceptance_rates"]) == 1


def test_posterior_of_another_card_is_refused(tmp_path):
    results, runs = tmp_path / "results.csv", tmp_path / "runs"
    common = ["two_moons", "--budget", "300", "--samples", "500", "--device", "cpu", "--quiet",
              "--results", str(results), "--runs", str(runs)]  # fmt: skip
    main(["benchmark", "--observations", "1", *common])

    import fmpe.benchmark.experiment

    card = fmpe.benchmark.experiment.load_card("two_moons")
    model, train = card.hyperparameters(300)
    record = json.loads((runs / "two_moons_300_fmpe_seed0.card.json").read_text())
    assert record == json.loads(json.dumps({"model": model, "train": train}))

    # The same run with a copy of the cards in which two_moons trains at another rate.
    edited = tmp_path / "cards"
    shutil.copytree(card_folder(), edited)
    with (edited / "two_moons.toml").open("a") as toml:
        toml.write("\n[fmpe.selected.300.train]\nlearning_rate = 5e-4\n")
    with pytest.raises(SystemExit, match=r"train.learning_rate: 0.002 -> 0.0005"):
        main(["benchmark", "--observations", "2", "--cards", str(edited), *common])


def test_defaults_train_with_the_base_card_alone(tmp_path):
    results, runs = tmp_path / "results.csv", tmp_path / "runs"
    main(["benchmark", "two_moons", "--budget", "300", "--observations", "1", "--defaults",
          "--samples", "500", "--device", "cpu", "--quiet",
          "--results", str(results), "--runs", str(runs)])  # fmt: skip
    (row,) = rows(results)
    assert row["estimator"] == "fmpe@defaults"
    record = json.loads((runs / "two_moons_300_fmpe@defaults_seed0.card.json").read_text())
    import fmpe.benchmark.experiment

    card = fmpe.benchmark.experiment.load_card("two_moons")
    model, train = card.hyperparameters(300, base_only=True)
    assert record == json.loads(json.dumps({"model": model, "train": train}))
    assert record != json.loads(
        json.dumps(dict(zip(("model", "train"), card.hyperparameters(300))))
    )


def test_corrupted_hyperparameter_record_is_named(tmp_path):
    from fmpe.benchmark.experiment import check_recorded_hyperparameters

    record = tmp_path / "two_moons_300_seed0.card.json"
    record.write_text('{"model": {"hidden_widths": [64')
    with pytest.raises(ValueError, match=r"card.json is not valid JSON .*two_moons_300_seed0\.\*"):
        check_recorded_hyperparameters(record, {"model": {}, "train": {}})


def test_benchmark_needs_a_task_and_a_budget():
    with pytest.raises(SystemExit, match="name one or more TASKs or pass --all"):
        main(["benchmark", "--budget", "100"])
    with pytest.raises(SystemExit, match="name one or more TASKs or pass --all"):
        main(["benchmark", "two_moons", "--all", "--budget", "100"])
    with pytest.raises(SystemExit, match="--budget"):
        main(["benchmark", "two_moons"])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["two_moons", "--budget", "300", "--observations", "3-1"], "range 3-1 is reversed"),
        (["two_moons", "--budget", "999.9"], "'999.9' is not a whole number"),
        (["two_moons", "--budget", "0"], "every number must be positive"),
        (["two_moons", "--budget", "300", "--observations", "11"], r"1-10, not \[11\]"),
        (["two_moon", "--budget", "300"], "unknown task 'two_moon'; known: "),
        (["two_moons", "--budget", "300", "--estimator", "snpe"], "unknown estimator 'snpe'"),
        (["two_moons", "--budget", "300", "--results", "."], "--results . is a folder"),
        (["two_moons", "--budget", "300", "--device", "tpu"], "--device must be auto, cpu"),
        (["two_moons", "--budget", "300", "--samples", "1,2"], "not one positive whole number"),
    ],
)
def test_bad_arguments_end_in_one_line_before_any_work(arguments, message, capsys, monkeypatch):
    import fmpe.benchmark.experiment

    def no_work(*args, **kwargs):
        raise AssertionError("no work may start before every argument is checked")

    monkeypatch.setattr(fmpe.benchmark.experiment.Run, "train", no_work)
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", *arguments])
    assert exit_info.value.code == 2
    printed = capsys.readouterr().err
    assert printed.count("\n") == 1 and "Traceback" not in printed
    assert printed.startswith("fmpe benchmark: error:")
    assert re.search(message, printed), printed


def test_repeated_observations_and_budgets_run_once(tmp_path):
    results = tmp_path / "results.csv"
    main(["benchmark", "gaussian_linear", "--budgets", "300,300", "--observations", "1,1",
          "--samples", "500", "--device", "cpu", "--quiet",
          "--results", str(results), "--runs", str(tmp_path / "runs")])  # fmt: skip
    assert len(rows(results)) == 1


def test_train_sample_and_diagnose(tmp_path, capsys):
    import numpy as np

    posterior = tmp_path / "post.fmpe"
    main(["train", "gaussian_linear", "--budget", "300", "-o", str(posterior), "--quiet"])
    assert "wrote" in capsys.readouterr().out and posterior.exists()

    samples = tmp_path / "samples.npy"
    main(["sample", str(posterior), "--observation", "2", "-n", "500", "-o", str(samples)])
    drawn = np.load(samples)
    assert drawn.shape == (500, 10)
    from fmpe.tasks import get_task

    truth = get_task("gaussian_linear").true_parameters(2).numpy()
    assert np.abs(drawn.mean(0) - truth).mean() < 0.5  # a rough posterior, near the truth

    observations = tmp_path / "x.csv"
    np.savetxt(observations, np.zeros((3, 10)), delimiter=",")
    table = tmp_path / "samples.csv"
    main(["sample", str(posterior), "--x", str(observations), "-n", "7", "-o", str(table)])
    lines = table.read_text().splitlines()
    assert lines[0].startswith("observation,theta_1,") and len(lines) == 1 + 7 * 3

    out = tmp_path / "diagnostics"
    main(["diagnose", str(posterior), "--observations", "30", "--samples", "50",
          "--lc2st", "2", "--lc2st-pairs", "300", "--out", str(out), "--quiet"])  # fmt: skip
    numbers = json.loads((out / "calibration.json").read_text())
    assert numbers["observations"] == 30 and len(numbers["sbc_ks_pvalues"]) == 10
    assert 0 < numbers["lc2st_pvalues"]["2"] <= 1 and numbers["machine"].startswith("CPU")
    for figure in ("sbc_ranks.png", "coverage.png", "tarp.png", "pp_plot.png", "lc2st_2.png"):
        assert (out / figure).stat().st_size > 10_000


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["train", "two_moons", "--budget", "300", "-o", "post.txt"], "name a .fmpe file"),
        (["train", "nope", "--budget", "300", "-o", "p.fmpe"], "no task card 'nope'"),
        (["train", "two_moons", "-o", "p.fmpe"], "the following arguments are required: --budget"),
        (["sample", "missing.fmpe", "--observation", "1", "-o", "s.npy"], "no posterior file"),
        (["sample", "p.fmpe", "--x", "x.npy", "--observation", "1", "-o", "s.npy"], "not allowed"),
        (["diagnose", "missing.fmpe"], "no posterior file at missing.fmpe"),
        (["report", "--results", "missing.csv"], "no results file at missing.csv"),
        (["sweep", "slcp", "--budget", "1000", "--from-budget", "10000"], "carries a choice up"),
        (
            ["sweep", "slcp", "--budget", "10000", "--from-budget", "1000", "--results", "no.csv"],
            "the search of slcp at 1000 (fmpe) is not finished in no.csv",
        ),
    ],
)
def test_bad_user_commands_end_in_one_line(arguments, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the relative paths (and a lock file) stay out of the checkout
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    printed = capsys.readouterr().err
    assert printed.count("\n") == 1 and message in printed, printed


TIMING = ("train_seconds", "sample_seconds", "finished_at")


def test_a_run_stopped_by_its_deadline_and_continued_gives_the_uninterrupted_rows(
    tmp_path, monkeypatch, capsys
):
    from fmpe.benchmark.deadline import Deadline

    def arguments(folder):
        return ["benchmark", "two_moons", "--budgets", "300,400", "--observations", "1",
                "--samples", "500", "--device", "cpu", "--quiet", "--results",
                str(folder / "results.csv"), "--runs", str(folder / "runs")]  # fmt: skip

    main(arguments(tmp_path / "whole"))
    whole = rows(tmp_path / "whole" / "results.csv")

    left = iter([1.0, -1.0])  # the first posterior may start; the time is up before the second
    monkeypatch.setattr(Deadline, "remaining", lambda self: next(left))
    main([*arguments(tmp_path / "split"), "--stop-after", "1h"])
    (line,) = [s for s in capsys.readouterr().out.splitlines() if s.startswith("stopped")]
    assert len(rows(tmp_path / "split" / "results.csv")) == 1
    continuation = line.split("continue with: ")[1]
    assert line.startswith("stopped for the deadline; left: two_moons at 400 (fmpe);")
    assert continuation.startswith("fmpe benchmark two_moons --budgets 300,400")
    monkeypatch.undo()
    main(shlex.split(continuation)[1:])
    split = rows(tmp_path / "split" / "results.csv")

    def key(row):
        return tuple(row[k] for k in ("task", "budget", "estimator", "observation", "seed"))

    assert len({key(r) for r in split}) == len(split) == len(whole) == 2
    untimed = [{k: v for k, v in r.items() if k not in TIMING} for r in (*whole, *split)]
    assert sorted(untimed[:2], key=str) == sorted(untimed[2:], key=str)


def test_stop_after_takes_durations_only():
    with pytest.raises(SystemExit):
        main(["benchmark", "two_moons", "--budget", "300", "--stop-after", "soon"])


def test_scoring_workers_give_the_rows_of_one_process(tmp_path):
    def arguments(folder, *extra):
        return ["benchmark", "two_moons", "--budget", "300", "--observations", "1-3",
                "--samples", "500", "--device", "cpu", "--quiet", "--results",
                str(folder / "results.csv"), "--runs", str(tmp_path / "runs"), *extra]  # fmt: skip

    main(arguments(tmp_path / "one", "--scoring-workers", "1"))  # the default is 2
    main(arguments(tmp_path / "two", "--scoring-workers", "2"))
    one, two = (rows(tmp_path / folder / "results.csv") for folder in ("one", "two"))
    assert sorted(r["observation"] for r in two) == ["1", "2", "3"]
    by_observation = {r["observation"]: r for r in two}

    # Both runs score the one saved posterior: every column but TIMING's is the same number, and
    # so is train_seconds.
    def compared(row: dict) -> dict:
        return {k: v for k, v in row.items() if k not in TIMING or k == "train_seconds"}

    for row in one:
        assert compared(by_observation[row["observation"]]) == compared(row)
