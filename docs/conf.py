"""Sphinx configuration of fmpe's documentation site.

Build from the repository root, warnings as errors:

    uv run --group docs sphinx-build -W -b html docs docs/_build/html

The tutorials are executed during the build. FMPE_DOCS_FAST=1 shrinks their budgets to the
ones the test suite uses (tests/test_docs.py); FMPE_DOCS_EXECUTE=0 skips running them.
"""

import os
import sys
from pathlib import Path

# The tutorials' networks are small: in the kernels that execute them, one intra-op thread
# is as fast, and on a busy machine far faster than threads that wait for each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import fmpe  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "fmpe"
author = "The fmpe developers"
copyright = "The fmpe developers"
version = release = fmpe.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "plain_docstrings",
]
exclude_patterns = ["_build", "jupyter_execute", ".jupyter_cache"]
# Docstrings put code in single backticks.
default_role = "code"
source_suffix = {".md": "myst-nb"}

# Every tutorial is executed on each build, in its own folder, and an error in any cell
# fails the build. FMPE_DOCS_EXECUTE=0 builds the pages without running them (the test
# suite checks the build that way and runs the tutorials separately).
nb_execution_mode = "off" if os.environ.get("FMPE_DOCS_EXECUTE") == "0" else "force"
if nb_execution_mode == "off":
    # Unexecuted cells lack the kernel's lexer, and pygments trips over their shell escapes.
    suppress_warnings = ["misc.highlighting_failure"]
nb_execution_in_temp = False
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_timeout = 1800
# Progress bars and library warnings go to stderr; the pages show what a cell prints.
nb_output_stderr = "remove"
nb_merge_streams = True
# Markdown that a cell displays (a results table) is read as MyST, tables included.
nb_render_markdown_format = "myst"

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True}
autodoc_typehints = "signature"
# A method that overrides Lightning's shows fmpe's docstring or none, not Lightning's.
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"fmpe {release}"
