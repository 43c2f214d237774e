"""One small generic registry, used for methods, tasks and metrics.

Entries are registered by name (with optional aliases) through a decorator; unknown names
fail with a "did you mean ...?" suggestion so typos on the command line are easy to fix.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message carries suggestions."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """A name -> object mapping with aliases, listing and helpful lookup errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` and its ``aliases``."""

        def decorator(obj: T) -> T:
            self.add(name, obj, aliases=aliases)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = ()) -> None:
        """Register ``obj``; a name or alias may be taken only once."""
        if len({name, *aliases}) != 1 + len(aliases):
            raise ValueError(f"{self.kind} {name!r}: repeated name/alias in {aliases}")
        for key in (name, *aliases):
            if key in self._entries or key in self._aliases:
                raise ValueError(f"{self.kind} {key!r} is already registered")
        self._entries[name] = obj
        for alias in aliases:
            self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        """Resolve an alias to the registered name, or fail with suggestions."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        known = sorted([*self._entries, *self._aliases])
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(self.names())}"
        )

    def get(self, name: str) -> T:
        """The object registered under ``name`` or one of its aliases."""
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        """Registered canonical names, in registration order."""
        return list(self._entries)

    def aliases_of(self, name: str) -> list[str]:
        """Aliases that resolve to ``name``."""
        return [a for a, target in self._aliases.items() if target == name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


METHODS: Registry = Registry("method")
TASKS: Registry = Registry("task")
METRICS: Registry = Registry("metric")


def load_all() -> None:
    """Import the modules whose import registers every method, task and metric."""
    import unlearnbench.datasets  # noqa: F401
    import unlearnbench.methods  # noqa: F401
    import unlearnbench.metrics  # noqa: F401
