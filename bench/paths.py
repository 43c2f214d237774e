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


def file_safe(name: str, limit: int = 48) -> str:
    """``name`` as one file-name component: itself when short and plain (``10000``, ``p03``, ``a.png+b.png``),
    else a readable prefix and a digest of the whole (a forget set of folder paths, or of many images)."""
    import hashlib
    import re

    if re.fullmatch(r"[A-Za-z0-9._+-]+", name) and len(name) <= limit and not name.startswith("."):
        return name
    prefix = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._")[: limit - 13]
    return f"{prefix}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
