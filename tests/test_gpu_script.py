"""benchmarks/gpu.py in its --smoke mode: tiny sizes on the CPU, so that the GPU script runs
first time when a GPU is at hand."""

import csv
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu.py"


def test_the_gpu_script_runs_every_section_in_smoke_mode(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--smoke", "--results", str(tmp_path)])

    with (tmp_path / "gpu.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_setting = {(r["section"], r["setting"]): r for r in rows}
    failed = [r for r in rows if r["detail"].startswith("failed")]
    assert not failed, failed
    eager = by_setting[("training step (default network, batch 512)", "eager")]
    assert float(eager["value"]) > 0 and eager["unit"] == "ms"
    assert by_setting[("training step (default network, batch 512)", "CUDA graph")]["detail"] == (
        "skipped: needs CUDA"
    )
    trained = by_setting[("two_moons, FMPE.train", "1000 simulations, defaults")]
    assert 0.5 <= float(trained["c2st"]) <= 1.0
    sampled = [r for r in rows if r["section"] == "two_moons posterior, one call"]
    assert len(sampled) == 3 and all(float(r["value"]) > 0 for r in sampled)
    assert all(int(r["evaluations"]) > 0 for r in sampled)
    assert any(r["section"].startswith("sbibm") and r["c2st"] for r in rows)
    assert all(r["machine"].endswith("(--smoke)") for r in rows)
    table = (tmp_path / "gpu.md").read_text()
    assert table.count("\n| ") == len(rows) + 1  # the heading and one line per row
