"""Result records: one JSON file per (task, method, seed, tier) cell, named by a hash of its
fully resolved config, written atomically. See docs/results-schema.md."""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

SCHEMA_VERSION = 1


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a resolved config (first 12 hex digits name the file)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def record_name(cell: dict[str, Any], digest: str) -> str:
    forget = f"__forget{cell['forget_set']}" if cell.get("forget_set") is not None else ""
    return f"{cell['task']}__{cell['tier']}__{cell['method']}{forget}__seed{cell['seed']}__{digest[:12]}.json"


def load_records(folder: Path) -> list[dict[str, Any]]:
    """All records under ``folder`` (ignoring partial temporary files)."""
    out = []
    for path in sorted(Path(folder).rglob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            rec = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("schema_version") == SCHEMA_VERSION and "cell" in rec:
            out.append(rec)
    return out


def software_versions() -> dict[str, str]:
    import diffusers
    import faiss
    import numpy
    import scipy
    import torch_fidelity
    import transformers

    import unlearnbench

    return {
        "python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "torch_fidelity": torch_fidelity.__version__, "faiss": faiss.__version__, "numpy": numpy.__version__,
        "scipy": scipy.__version__, "transformers": transformers.__version__, "unlearnbench": unlearnbench.__version__,
    }


def git_commit() -> str | None:
    """The checkout's commit (with ``-dirty`` when it has uncommitted changes), if any."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "cpu": platform.processor() or platform.machine(),
                            "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    return info
