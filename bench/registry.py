"""One small generic registry, used for methods, tasks and metrics.

Entries are registered by a decorator (methods: the name is the module's file name, set on the
class by the registry) or added lazily as ``"module"`` / ``"module:attr"`` strings that are
imported on first use. Every loaded entry is checked against the registry's base type. Unknown
names fail with a "did you mean ...?" suggestion so typos on the command line are easy to fix.

The built-in entries are discovered, not listed: every module of ``unlearnbench.methods`` is a
method named after its file, and every package of ``unlearnbench.datasets`` registers its tasks
and their metrics when imported. Adding a method is therefore one new file under ``methods/``;
adding a task is one new folder under ``datasets/``.

Other installed packages add entries through entry points (groups ``unlearnbench.methods``,
``unlearnbench.tasks``, ``unlearnbench.metrics``; docs/extending.md), loaded on first use like the
built-in ones. A plugin that fails to import, takes a name already taken or is not of the registry's
type is set aside with a ``PluginError`` naming its package and entry point; everything else still
works, and asking for that name gives the error. Every entry knows its origin (``origin``): the
package and version it came from.
"""
from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import pkgutil
import sys
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message carries suggestions."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class PluginError(ValueError):
    """A plugin entry that cannot be used; the message names its package, entry point and what is wrong."""


BUILT_IN = "unlearnbench"


@functools.lru_cache(maxsize=None)
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def origin_of(obj: Any) -> dict[str, str | None]:
    """Where a registered object comes from: ``{"package": ..., "version": ...}`` of the installed distribution
    that holds its module (``unlearnbench`` for the built-in ones), or its module when no distribution does
    (a test, a notebook)."""
    fn = getattr(obj, "compute", None)  # a Metric is defined where its compute function is
    module = getattr(fn if callable(fn) else obj if isinstance(obj, type) else type(obj), "__module__", "") or ""
    top = module.split(".", 1)[0]
    if top == BUILT_IN:
        from unlearnbench import __version__

        return {"package": BUILT_IN, "version": __version__}
    dists = _distributions().get(top)
    if not dists:
        return {"package": None, "version": None, "module": module}
    return {"package": dists[0], "version": importlib.metadata.version(dists[0])}


class _Lazy:
    """A not-yet-imported entry: ``module`` (the module registers the object itself) or ``module:attr``."""

    def __init__(self, target: str) -> None:
        self.target = target

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        loaded = importlib.import_module(module)
        return getattr(loaded, attr) if attr else None


def entry_points(group: str) -> list["_Plugin"]:
    """The installed entry points of ``group``, by name, each with its package (nothing is imported)."""
    return [_Plugin(e) for e in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name)]


class _Plugin(_Lazy):
    """An entry point of another installed package: ``module:attr`` (the object) or ``module`` (registers itself)."""

    def __init__(self, entry_point: importlib.metadata.EntryPoint) -> None:
        super().__init__(entry_point.value)
        self.entry_point = entry_point
        dist = getattr(entry_point, "dist", None)
        self.package = dist.metadata["Name"] if dist is not None else "an unknown package"
        self.version = dist.version if dist is not None else None
        self.summary = (dist.metadata["Summary"] if dist is not None else "") or f"entry point {entry_point.value}"

    def where(self) -> str:
        return (f"plugin {self.entry_point.name!r} of package {self.package}"
                f"{f' {self.version}' if self.version else ''} (entry point {self.entry_point.group}: "
                f"{self.entry_point.name} = {self.entry_point.value})")


class Registry(Generic[T]):
    """A name -> object mapping with aliases, lazy entries, a base-type check and helpful lookup errors.

    ``base`` is ``"module:attr"`` of the class every entry must be (or subclass); ``discover`` adds
    the built-in (lazy) entries the first time the registry is read; ``sort_key`` orders ``names()``.
    """

    def __init__(self, kind: str, base: str, discover: Callable[["Registry[T]"], None],
                 sort_key: Callable[[str, T], Any] | None = None, group: str | None = None) -> None:
        self.kind = kind
        self._base = base
        self._discover = discover
        self._sort_key = sort_key
        self.group = group  # the entry-point group other packages register under
        self._entries: dict[str, T | _Lazy] = {}
        self._aliases: dict[str, str] = {}
        self._discovered = False
        self._plugins: dict[str, _Plugin] = {}  # name -> its entry point, for the origin and error messages
        self.broken: dict[str, str] = {}  # plugin name -> why it was set aside

    # ------------------------------------------------------------------ adding

    def register(self, obj: Any = None, *, aliases: tuple[str, ...] = (), name: str | None = None) -> Any:
        """Class decorator: register ``obj`` under its module's file name (methods), with ``aliases``.

        Usable bare (``@METHODS.register``); the class gets that name as its ``name`` attribute, so
        the name is written nowhere else. ``name`` is for a class defined outside a file of its own
        (a script's ``__main__``, a notebook).
        """

        def decorator(cls: Any) -> Any:
            own = name or cls.__module__.rsplit(".", 1)[-1]
            if own.startswith("_"):
                raise ValueError(f"{cls.__qualname__} is defined in {cls.__module__}, which names no {self.kind}: "
                                 f"put it in a file of its own or pass register(name=...)")
            cls.name = own
            self.add(own, cls, aliases=aliases)
            return cls

        return decorator(obj) if obj is not None else decorator

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = ()) -> None:
        """Register ``obj``; a name or alias may be taken only once (a lazy entry is replaced by its object)."""
        if len({name, *aliases}) != 1 + len(aliases):
            raise ValueError(f"{self.kind} {name!r}: repeated name/alias in {aliases}")
        self._check_base(name, obj)
        pending = isinstance(self._entries.get(name), _Lazy)
        for key in (name, *aliases):
            if (key in self._entries and not (key == name and pending)) or key in self._aliases:
                raise ValueError(f"{self.kind} {key!r} is already registered")
        self._entries[name] = obj
        for alias in aliases:
            self._aliases[alias] = name

    def add_lazy(self, name: str, target: str) -> None:
        """Register ``name`` as ``"module"`` (which registers it on import) or ``"module:attr"``, imported on use."""
        if name in self._entries or name in self._aliases:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = _Lazy(target)

    def _check_base(self, name: str, obj: Any) -> None:
        module, _, attr = self._base.partition(":")
        base = getattr(importlib.import_module(module), attr)
        ok = issubclass(obj, base) if isinstance(obj, type) else isinstance(obj, base)
        if not ok:
            raise TypeError(f"{self.kind} {name!r} must be a {base.__module__}.{base.__qualname__}, got {obj!r}")

    # ------------------------------------------------------------------ reading

    def _ensure(self) -> None:
        if not self._discovered:
            self._discovered = True
            self._discover(self)
            self._discover_plugins()

    def _discover_plugins(self) -> None:
        """Add the entry points of the registry's group as lazy entries; a name taken already is set aside."""
        if self.group is None:
            return
        for plugin in entry_points(self.group):
            entry_point = plugin.entry_point
            if entry_point.name in self._entries or entry_point.name in self._aliases:
                owner = self._plugins.get(entry_point.name)
                self._set_aside(entry_point.name, plugin, f"the name is already registered by "
                                f"{owner.package if owner else BUILT_IN}; rename the entry point")
                continue
            self._entries[entry_point.name] = plugin
            self._plugins[entry_point.name] = plugin

    def _set_aside(self, name: str, plugin: _Plugin, why: str) -> None:
        message = f"{plugin.where()}: {why}"
        self.broken[name] = message
        print(f"warning: {self.kind} {message}; the rest of the suite works without it", file=sys.stderr)

    def _load_plugin(self, name: str, plugin: _Plugin) -> None:
        """Import a plugin entry; on any failure remove it (and whatever it half-registered) and record why."""
        before = set(self._entries)
        try:
            obj = plugin.load()
            if isinstance(self._entries.get(name), _Lazy):
                if obj is None:
                    raise TypeError(f"importing {plugin.target} registered no {self.kind} named {name!r}")
                if isinstance(obj, type) and self.kind == "task":
                    obj = obj()  # a Task class: the registry holds instances
                own = getattr(obj, "name", None)
                if own in ("", None) and not isinstance(obj, str):
                    obj.name = name
                elif own != name:
                    raise TypeError(f"the entry point is named {name!r} but the {self.kind} calls itself {own!r}")
                self.add(name, obj)
        except Exception as err:  # a broken plugin must not break the suite: set it aside, say why
            half = [k for k in self._entries if k not in before and origin_of(self._entries[k])["package"] != BUILT_IN]
            for key in [name, *half]:
                self.remove(key)
            self._set_aside(name, plugin, f"{type(err).__name__}: {err}")

    def _resolve(self, name: str) -> T:
        entry = self._entries[name]
        if isinstance(entry, _Plugin):
            self._load_plugin(name, entry)
            if name in self.broken:
                raise PluginError(f"{self.kind} {self.broken[name]}")
        elif isinstance(entry, _Lazy):
            obj = entry.load()
            if isinstance(self._entries[name], _Lazy):  # a "module:attr" entry, or a module that did not register
                if obj is None:
                    raise TypeError(f"{self.kind} {name!r}: importing {entry.target} registered nothing")
                self.add(name, obj)
        return self._entries[name]  # type: ignore[return-value]

    def load_all(self) -> None:
        """Import every lazy entry (for aliases and ordering); broken plugins are set aside, not raised."""
        self._ensure()
        for name in list(self._entries):
            if name in self._entries and isinstance(self._entries[name], _Plugin):
                self._load_plugin(name, self._entries[name])  # type: ignore[arg-type]
            elif name in self._entries:
                self._resolve(name)

    def origin(self, name: str) -> dict[str, str | None]:
        """The package (and version) that registered ``name``: ``unlearnbench`` for the built-in entries."""
        name = self.canonical(name)
        plugin = self._plugins.get(name)
        if plugin is not None:
            return {"package": plugin.package, "version": plugin.version}
        return origin_of(self._resolve(name))

    def canonical(self, name: str) -> str:
        """Resolve an alias to the registered name, or fail with suggestions."""
        self._ensure()
        if name in self._entries:
            return name
        if name not in self._aliases:
            self.load_all()  # aliases are declared by the entries themselves
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        if name in self.broken:
            raise PluginError(f"{self.kind} {self.broken[name]}")
        known = sorted([*self._entries, *self._aliases])
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(self.names())}"
        )

    def get(self, name: str) -> T:
        """The object registered under ``name`` or one of its aliases."""
        return self._resolve(self.canonical(name))

    def names(self) -> list[str]:
        """Registered canonical names, in the registry's order (tables list rows and columns in it)."""
        self.load_all()
        names = list(self._entries)
        if self._sort_key is not None:
            names.sort(key=lambda n: self._sort_key(n, self._entries[n]))  # type: ignore[arg-type,misc]
        return names

    def aliases_of(self, name: str) -> list[str]:
        """Aliases that resolve to ``name``."""
        self.load_all()
        return [a for a, target in self._aliases.items() if target == name]

    def __contains__(self, name: object) -> bool:
        self.load_all()
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.load_all()
        return len(self._entries)

    def remove(self, name: str) -> None:
        """Forget ``name`` and its aliases (tests that register a temporary entry clean up with this)."""
        self._entries.pop(name, None)
        self._plugins.pop(name, None)
        for alias in [a for a, target in self._aliases.items() if target == name]:
            del self._aliases[alias]


def _submodules(package: str, packages_only: bool) -> list[str]:
    pkg = importlib.import_module(package)
    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                  if not m.name.startswith("_") and (m.ispkg or not packages_only))


def _discover_methods(registry: Registry) -> None:
    """Every module of ``unlearnbench.methods`` is one method, named after its file."""
    for name in _submodules("unlearnbench.methods", packages_only=False):
        if name not in registry._entries:  # a method module imported directly has registered itself already
            registry.add_lazy(name, f"unlearnbench.methods.{name}")


def import_task_packages() -> None:
    """Import every package of ``unlearnbench.datasets``: each registers its tasks and their metrics."""
    for name in _submodules("unlearnbench.datasets", packages_only=True):
        importlib.import_module(f"unlearnbench.datasets.{name}")


def _discover_metrics(registry: Registry) -> None:
    importlib.import_module("unlearnbench.metrics")  # the metrics every task shares
    importlib.import_module("unlearnbench.verification")  # membership inference and relearning attacks
    import_task_packages()


def _method_order(name: str, cls: Any) -> tuple[int, int, str]:
    """Rows: the model before unlearning, then the unlearning methods (by ``order``), the oracle last."""
    from unlearnbench.method import ROLES

    return ROLES.index(cls.role), cls.order, name


def _metric_order(name: str, metric: Any) -> tuple[int, str]:
    return metric.order, name


METHODS: Registry = Registry("method", "unlearnbench.method:Method", _discover_methods, _method_order,
                             group="unlearnbench.methods")
TASKS: Registry = Registry("task", "unlearnbench.task:Task", lambda _: import_task_packages(), group="unlearnbench.tasks")
METRICS: Registry = Registry("metric", "unlearnbench.metrics:Metric", _discover_metrics, _metric_order,
                             group="unlearnbench.metrics")


def load_all() -> None:
    """Import every method, task and metric (what a command that lists or runs them all needs)."""
    for registry in (METHODS, TASKS, METRICS):
        registry.load_all()
