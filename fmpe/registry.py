"""`Registry`: objects of one kind by name. Every extension seam of fmpe is one: networks,
embedding nets, linear layers, estimators, posterior kinds, ODE solvers, iid methods,
couplings, optimizers, tasks and benchmark metrics (docs/extending.md).

>>> AREAS: Registry[Callable[[float], float]] = Registry("shape")
>>> @AREAS.register("square")
... def square(side: float) -> float:
...     return side * side
>>> AREAS.get("square")(3.0)
9.0
>>> AREAS.get("circle")
Traceback (most recent call last):
...
ValueError: unknown shape 'circle'; registered: square
"""

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects of one kind, each under a unique name.

    Args:
        kind: what is registered, in words ("network"); errors name it.
        path: where the registry is imported from ("fmpe.networks.NETWORKS"), so that the
            error for an unknown name says how to register one.
        on_register: called with (name, object) before a new entry is added; it may refuse
            the entry by raising, or register what the entry brings with it.
    """

    def __init__(
        self,
        kind: str,
        path: str | None = None,
        *,
        on_register: Callable[[str, T], None] | None = None,
    ):
        self.kind = kind
        self.path = path
        self.on_register = on_register
        self._entries: dict[str, T] = {}

    @overload
    def register(
        self, name: str, obj: None = None, *, replace: bool = False
    ) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T, *, replace: bool = False) -> T: ...

    def register(
        self, name: str, obj: T | None = None, *, replace: bool = False
    ) -> T | Callable[[T], T]:
        """Registers `obj` as `name` and returns it; without `obj`, a decorator that does.

        A name is registered once: registering it again raises, unless `replace`.
        """
        if obj is None:
            return lambda decorated: self.register(name, decorated, replace=replace)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")
        if name in self._entries and not replace:
            raise ValueError(
                f"the {self.kind} {name!r} is already registered; pass replace=True to replace it"
            )
        if self.on_register is not None:
            self.on_register(name, obj)
        self._entries[name] = obj
        return obj

    def unregister(self, name: str) -> T:
        """Removes the entry `name` and returns it."""
        obj = self.get(name)
        del self._entries[name]
        return obj

    def get(self, name: str) -> T:
        """The object registered as `name`; a ValueError that lists the names if none is."""
        if name not in self._entries:
            hint = f". Register one with {self.path}.register({name!r}, ...)" if self.path else ""
            registered = ", ".join(self.names()) or "none"
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {registered}{hint}")
        return self._entries[name]

    def name_of(self, obj: object) -> str | None:
        """The name under which `obj` itself is registered, if any."""
        return next((name for name, entry in self._entries.items() if entry is obj), None)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        """The names, in the order they were registered."""
        return iter(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
