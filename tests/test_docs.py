"""The documentation's executable parts: every tutorial runs at the small budgets of
FMPE_DOCS_FAST=1 without a cell raising, and CITATION.cff is valid CFF."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.md"))
# The command-line tools of this environment (fmpe, cffconvert), also when pytest was started
# without activating it.
BIN = Path(sys.executable).parent


def test_tutorials_are_found():
    assert len(TUTORIALS) >= 5, f"expected the tutorials in docs/tutorials, found {TUTORIALS}"


def _notebook(path: Path):
    """The tutorial as a notebook, checked to be one that reads FMPE_DOCS_FAST."""
    import jupytext

    assert "FMPE_DOCS_FAST" in path.read_text(), f"{path.name} must read FMPE_DOCS_FAST"
    notebook = jupytext.read(path, fmt="md:myst")
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells, f"{path.name} has no code cells: is its jupytext header missing?"
    return notebook


def _execute(path: Path) -> None:
    """Runs every cell of the tutorial in a fresh kernel, in the tutorial's folder (as the
    site build does); a cell that raises ends it with nbclient's CellExecutionError, which
    holds the cell and its traceback."""
    import nbclient

    client = nbclient.NotebookClient(
        _notebook(path),
        kernel_name="python3",
        timeout=600,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()


# `fmpe benchmark` twice and `fmpe report` in subprocesses, about 2 minutes: slow, since
# tests/test_cli.py runs the same commands in the default run.
SLOW_TUTORIALS = {"04_benchmark"}


# One test per tutorial, so that pytest-xdist spreads them over the cores with the other tests.
@pytest.mark.parametrize(
    "path",
    [
        pytest.param(path, marks=pytest.mark.slow) if path.stem in SLOW_TUTORIALS else path
        for path in TUTORIALS
    ],
    ids=lambda path: path.stem,
)
def test_tutorial_executes(path, monkeypatch):
    pytest.importorskip("jupytext")
    pytest.importorskip("nbclient")
    monkeypatch.setenv("FMPE_DOCS_FAST", "1")
    # Tiny networks on a shared 2-core machine: a second intra-op thread only waits.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    _execute(path)


def _cffconvert() -> str:
    command = shutil.which("cffconvert", path=str(BIN)) or shutil.which("cffconvert")
    if command is None:
        pytest.skip("cffconvert is not installed (it is in the dev group)")
    return command


def _validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_cffconvert(), "--validate", "-i", str(path)], capture_output=True, text=True
    )


def test_citation_file_validates():
    result = _validate(ROOT / "CITATION.cff")
    assert result.returncode == 0, result.stdout + result.stderr


def test_citation_check_rejects_an_invalid_file(tmp_path):
    # The check above must be able to fail: a CFF without its required title is invalid.
    text = (ROOT / "CITATION.cff").read_text()
    lines = [line for line in text.splitlines() if not line.startswith("title:")]
    broken = tmp_path / "CITATION.cff"
    broken.write_text("\n".join(lines) + "\n")
    result = _validate(broken)
    assert result.returncode != 0, result.stdout


def test_citation_version_is_the_package_version():
    # Read from the source rather than imported: importing fmpe loads torch and Lightning.
    source = (ROOT / "fmpe" / "_version.py").read_text()
    version = re.search(r'^__version__ = "(.+)"$', source, re.MULTILINE).group(1)
    assert f"\nversion: {version}\n" in (ROOT / "CITATION.cff").read_text()


def _build_site(out: Path, **env: str) -> subprocess.CompletedProcess:
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    command = [str(BIN / "sphinx-build"), "-W", "-q", "-b", "html", str(ROOT / "docs"), str(out)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=ROOT)


def test_site_builds_with_warnings_as_errors(tmp_path):
    # The pages, the API reference and every cross-reference, without running the tutorials
    # (test_tutorial_executes runs them).
    result = _build_site(tmp_path / "html", FMPE_DOCS_EXECUTE="0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "html" / "api" / "fmpe.html").exists()


@pytest.mark.slow
def test_site_builds_with_executed_tutorials(tmp_path):
    result = _build_site(tmp_path / "html", FMPE_DOCS_FAST="1")
    assert result.returncode == 0, result.stdout + result.stderr
    page = (tmp_path / "html" / "tutorials" / "01_first_posterior.html").read_text()
    assert "<img" in page, "the first tutorial's pair plot is missing from its page"
