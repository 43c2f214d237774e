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
    """The prepared artefacts shipped inside the package (``datasets/assets``) for (task, tier)."""
    import unlearnbench.datasets as pkg

    return Path(pkg.__file__).resolve().parent / "assets" / task / tier
