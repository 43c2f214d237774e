"""Where prepared artefacts live: the user cache and the weights shipped with the package."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$UNLEARNBENCH_CACHE``, or ``~/.cache/unlearnbench``."""
    return Path(os.environ.get("UNLEARNBENCH_CACHE", Path.home() / ".cache" / "unlearnbench"))


def cache_dir(task: str, tier: str) -> Path:
    return cache_root() / task / tier


def assets_dir(task: str, tier: str) -> Path:
    """The prepared artefacts shipped inside the package (``datasets/assets``) for (task, tier).

    Found from the package's location without importing it (the harness imports no task)."""
    from importlib.util import find_spec

    spec = find_spec("unlearnbench.datasets")
    assert spec is not None and spec.submodule_search_locations, "the unlearnbench.datasets package is missing"
    return Path(list(spec.submodule_search_locations)[0]).resolve() / "assets" / task / tier
