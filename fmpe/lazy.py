"""Module attributes imported on first use (PEP 562), for names whose modules are slow to
import.

Example:
    >>> __getattr__, __dir__ = lazy_attributes(__name__, globals(), {"FMPE": "fmpe.estimators"})
"""

import importlib
from collections.abc import Callable


def lazy_attributes(
    module: str, namespace: dict, sources: dict[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of `module` (its `namespace`, `globals()`), which import
    each name of `sources` from the module named there on first use."""

    def __getattr__(name: str) -> object:
        if name in sources:
            return getattr(importlib.import_module(sources[name]), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(sources))

    return __getattr__, __dir__
