"""Reads fmpe's docstrings as the plain text they are written as.

fmpe's docstrings use Google sections and backticks for code, and otherwise plain text in
which `*` and `|` mean themselves: shapes such as (n, *x_shape), θ*, |h|². reStructuredText
would read those as emphasis and substitutions, so they are escaped before napoleon converts
the sections. Code in backticks, literal blocks (after `::`) and doctest blocks are kept as
they are.
"""

import re

from sphinx.application import Sphinx

# Inline literals (``code``), interpreted text (`code`) and roles (:func:`name`).
_CODE = re.compile(r"(``.+?``|(?::[\w:.-]+:)?`[^`]+`)")
_MARKUP = re.compile(r"([*|])")


def escape_line(line: str) -> str:
    """`*` and `|` outside code escaped: 'x (n, *x_shape)' -> 'x (n, \\*x_shape)'."""
    parts = _CODE.split(line)
    # split with one group alternates text and code: even indices are text.
    return "".join(_MARKUP.sub(r"\\\1", p) if i % 2 == 0 else p for i, p in enumerate(parts))


def escape_docstring(lines: list[str]) -> None:
    """Escapes, in place, every line outside literal and doctest blocks."""
    literal_indent = None  # the indentation of the line that opened a literal block
    in_doctest = False
    for i, line in enumerate(lines):
        text = line.lstrip()
        indent = len(line) - len(text)
        if literal_indent is not None:
            if not text or indent > literal_indent:
                continue
            literal_indent = None
        if text.startswith(">>>"):
            in_doctest = True
        if in_doctest:
            in_doctest = bool(text)
            continue
        lines[i] = escape_line(line)
        if text.endswith("::"):
            literal_indent = indent


def _process(app, what, name, obj, options, lines: list[str]) -> None:
    escape_docstring(lines)


def setup(app: Sphinx) -> dict:
    # Before sphinx.ext.napoleon (priority 500), which turns the sections into fields.
    app.connect("autodoc-process-docstring", _process, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
