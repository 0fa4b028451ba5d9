"""The benchmark command line, end to end on a tiny budget, and its resumption."""

import csv
import json
from dataclasses import replace

import pytest

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
    table = (tmp_path / "sbibm_table.md").read_text()
    assert "| gaussian_linear | 3e+02 |" in table
    assert "over 1 posteriors and sampling" in table
    assert (tmp_path / "sbibm_c2st.png").stat().st_size > 10_000


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


def test_posterior_of_another_card_is_refused(tmp_path, monkeypatch):
    results, runs = tmp_path / "results.csv", tmp_path / "runs"
    common = ["two_moons", "--budget", "300", "--samples", "500", "--device", "cpu", "--quiet",
              "--results", str(results), "--runs", str(runs)]  # fmt: skip
    main(["benchmark", "--observations", "1", *common])

    import fmpe.benchmark.runner

    card = fmpe.benchmark.runner.load_card("two_moons")
    model, train = card.hyperparameters(300)
    record = json.loads((runs / "two_moons_300_fmpe_seed0.card.json").read_text())
    assert record == json.loads(json.dumps({"model": model, "train": train}))

    own = card.estimators["fmpe"]
    edited = replace(own, budgets={**own.budgets, 300: {"train": {"learning_rate": 5e-4}}})
    edited_card = replace(card, estimators={**card.estimators, "fmpe": edited})
    monkeypatch.setattr(fmpe.benchmark.runner, "load_card", lambda name: edited_card)
    with pytest.raises(SystemExit, match=r"train.learning_rate: 0.002 -> 0.0005"):
        main(["benchmark", "--observations", "2", *common])


def test_corrupted_hyperparameter_record_is_named(tmp_path):
    from fmpe.benchmark.runner import check_recorded_hyperparameters

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
