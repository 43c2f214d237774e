"""What ``run_bench.py ls`` lists, without importing torch: a catalogue of the built-in methods, tasks and
metrics, written from the registry and shipped as ``catalog.json`` beside this module.

The catalogue carries a fingerprint of the sources that register entries (``methods/``, ``datasets/``, the
shared metric modules). When the installed sources do not match it (an in-tree edit), ``ls`` imports the
registry as before and keeps a fresh catalogue in the user cache for the next call. Plugins are listed from
their entry points' metadata (name, package, version, summary), also without importing them.
Regenerate the shipped file with ``python -m unlearnbench.catalog``.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from unlearnbench import __version__
from unlearnbench.paths import cache_root

SHIPPED = Path(__file__).with_name("catalog.json")
KINDS = ("methods", "tasks", "metrics")
#: Modules of the harness that register entries (the rest of it registers nothing).
_REGISTERING = ("metrics.py", "verification.py")


def _package_dir(name: str) -> Path:
    from importlib.util import find_spec

    spec = find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
    return Path(list(spec.submodule_search_locations)[0])


def fingerprint() -> str:
    """sha256 over the sources that register entries, and the version: equal sources, equal catalogue."""
    harness = _package_dir("unlearnbench")
    files = [harness / name for name in _REGISTERING]
    for package in ("unlearnbench.methods", "unlearnbench.datasets"):
        root = _package_dir(package)
        files += sorted(p for p in root.rglob("*.py") if "assets" not in p.relative_to(root).parts)
    digest = hashlib.sha256(__version__.encode())
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _summary(doc: str | None) -> str:
    """A docstring's first paragraph on one line: whole sentences, never cut."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def build() -> dict[str, Any]:
    """The catalogue of every registered built-in entry (imports the registry: torch and all)."""
    from unlearnbench.registry import BUILT_IN, METHODS, METRICS, TASKS

    rows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for name in METHODS.names():
        if METHODS.origin(name)["package"] != BUILT_IN:
            continue
        cls = METHODS.get(name)
        rows["methods"].append({"name": name, "version": cls.version, "aliases": METHODS.aliases_of(name),
                                "description": _summary(cls.__doc__ or sys.modules[cls.__module__].__doc__)})
    for name in sorted(TASKS.names()):  # registration order depends on which package was imported first
        if TASKS.origin(name)["package"] != BUILT_IN:
            continue
        task = TASKS.get(name)
        rows["tasks"].append({"name": name, "version": task.version,
                              "description": f"protocol {task.protocol}, tiers: {', '.join(task.tiers())}"})
    for name in METRICS.names():
        if METRICS.origin(name)["package"] != BUILT_IN:
            continue
        metric = METRICS.get(name)
        rows["metrics"].append({"name": name, "version": metric.version, "higher_is_better": metric.higher_is_better,
                                "description": metric.implementation})
    return {"fingerprint": fingerprint(), "unlearnbench": __version__, **rows}


def _read(path: Path, key: str) -> dict[str, Any] | None:
    try:
        catalog = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return catalog if catalog.get("fingerprint") == key else None


def load() -> dict[str, Any]:
    """The catalogue for the installed sources: the shipped one, the user cache's, or built now (and cached)."""
    key = fingerprint()
    cached = cache_root() / "catalog.json"
    for path in (SHIPPED, cached):
        catalog = _read(path, key)
        if catalog is not None:
            return catalog
    catalog = build()
    from unlearnbench.io import atomic_write_json

    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cached, catalog)
    return catalog


def plugins(kind: str) -> list[dict[str, Any]]:
    """Entry points of ``unlearnbench.<kind>`` as rows (name, package, version, the package's summary), unimported."""
    from unlearnbench.registry import entry_points

    rows = [{"name": p.entry_point.name, "package": p.package, "package_version": p.version, "description": p.summary}
            for p in entry_points(f"unlearnbench.{kind}")]
    return rows


if __name__ == "__main__":
    from unlearnbench.io import atomic_write_json

    atomic_write_json(SHIPPED, build())
    print(f"wrote {SHIPPED}")
