"""Result records: one JSON file per (task, method, seed, tier) cell, named by a hash of its
fully resolved config, written atomically. See docs/results-schema.md."""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import torch

SCHEMA_VERSION = 1


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a resolved config (first 12 hex digits name the file)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def record_name(cell: dict[str, Any], digest: str) -> str:
    from unlearnbench.paths import file_safe

    forget = f"__forget{file_safe(str(cell['forget_set']))}" if cell.get("forget_set") is not None else ""
    return f"{cell['task']}__{cell['tier']}__{cell['method']}{forget}__seed{cell['seed']}__{digest[:12]}.json"


class BadRecordError(ValueError):
    """A record file that cannot be used: unreadable, truncated, foreign, or edited. ``path`` is the
    file, ``reason`` what is wrong with it (one line)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


#: The file names ``record_name`` produces: ``<task>__<tier>__<method>[__forget<id>]__seed<seed>__<12 hex>.json``.
_RECORD_NAME = re.compile(r".+__.+__.+__seed[^_]+__[0-9a-f]{12}\.json")
_STATUSES = ("ok", "failed")
_CELL_FIELDS = ("task", "tier", "method", "seed")


def _parse(path: Path) -> Any:
    """The JSON in ``path``, or a BadRecordError saying why there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BadRecordError(path, f"cannot read: {err}") from err
    if not text.strip():
        raise BadRecordError(path, "empty file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise BadRecordError(path, f"not valid JSON (truncated?): {err}") from err


def _header_problem(rec: Any) -> str | None:
    """What is wrong with a record's identity fields (schema, cell, hash, status), if anything."""
    if not isinstance(rec, dict):
        return f"not a result record: a JSON {type(rec).__name__}, not an object"
    if "schema_version" not in rec:
        return "not a result record: no schema_version field"
    if rec["schema_version"] != SCHEMA_VERSION:
        return f"schema_version {rec['schema_version']!r}, expected {SCHEMA_VERSION}"
    cell = rec.get("cell")
    if not isinstance(cell, dict):
        return "missing field cell (an object with task, tier, method, seed)"
    missing = [f"cell.{k}" for k in _CELL_FIELDS if cell.get(k) is None]
    if missing:
        return f"missing field {', '.join(missing)}"
    digest = rec.get("config_hash")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{12,}", digest):
        return f"config_hash {digest!r} is not a hex digest"
    if rec.get("status") not in _STATUSES:
        return f"status {rec.get('status')!r}, expected one of {', '.join(_STATUSES)}"
    return None


def _metric_problem(name: str, entry: Any) -> str | None:
    """What is wrong with one metric entry of an ok record: not an object, or a non-numeric or non-finite value."""
    if not isinstance(entry, dict):
        return f"metrics.{name} is not an object"
    value = entry.get("value")
    if value is None:
        return None
    if not isinstance(value, (int, float)):
        return f"metrics.{name}.value {value!r} is not a number"
    try:
        finite = math.isfinite(value)
    except OverflowError:
        finite = False
    return None if finite else f"metrics.{name}.value is {value!r} (non-finite)"


def _metrics_problem(rec: dict[str, Any]) -> str | None:
    """What is wrong with the metrics of an ok record, if anything (failed records need none)."""
    if rec["status"] != "ok":
        return None
    metrics = rec.get("metrics")
    if not isinstance(metrics, dict):
        return "ok record without a metrics object"
    return next(filter(None, (_metric_problem(n, e) for n, e in sorted(metrics.items()))), None)


def _name_problem(path: Path, rec: dict[str, Any]) -> str | None:
    """Whether the file is named as ``record_name`` names its content (a renamed or edited file is not)."""
    expected = record_name(rec["cell"], rec["config_hash"])
    if path.name == expected:
        return None
    match = re.search(r"__([0-9a-f]{12})\.json$", path.name)
    if match and match.group(1) != rec["config_hash"][:12]:
        return (f"file name's hash {match.group(1)} does not match config_hash {rec['config_hash'][:12]} "
                "(renamed or edited?)")
    return f"file name does not match its cell (expected {expected}; renamed or edited?)"


def read_record(path: Path) -> dict[str, Any]:
    """One record file, parsed and checked against the minimum schema (docs/results-schema.md):
    identity fields present, ``status`` ok/failed, finite metric values in ok records, and the file
    named as ``record_name`` names it. Raises BadRecordError naming the file and what is wrong."""
    path = Path(path)
    rec = _parse(path)
    problem = _header_problem(rec) or _metrics_problem(rec) or _name_problem(path, rec)
    if problem is not None:
        raise BadRecordError(path, problem)
    return rec


def is_record_file(path: Path) -> bool:
    """Whether ``path`` should hold a record: a visible ``.json`` in a ``records`` folder, or named like one.
    Other JSON in a results tree (baselines, calibration summaries) is not a record."""
    path = Path(path)
    if path.name.startswith(".") or path.suffix != ".json":
        return False
    return path.parent.name == "records" or _RECORD_NAME.fullmatch(path.name) is not None


def load_records(folder: Path, problems: list[BadRecordError] | None = None) -> list[dict[str, Any]]:
    """Every good record under ``folder`` (recursively, in path order). Each bad record file is appended
    to ``problems`` or, when none is given, reported with ``warnings.warn``: no cell is dropped silently.
    Hidden temporaries of interrupted writes and non-record JSON are skipped."""
    out = []
    for path in sorted(Path(folder).rglob("*.json")):
        if not is_record_file(path):
            continue
        try:
            out.append(read_record(path))
        except BadRecordError as err:
            if problems is None:
                warnings.warn(f"skipped bad record {err}", stacklevel=2)
            else:
                problems.append(err)
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


def quarantine(path: Path, folder: Path) -> Path:
    """Move an unusable record into ``folder`` (kept for inspection, never read as a result)."""
    target = folder / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target


def needs_run(path: Path, overwrite: bool, retry_failed: bool, quarantine_dir: Path, log: Any = print) -> bool:
    """Whether the cell whose record is ``path`` must run: no record, ``overwrite``, a failed record with
    ``retry_failed``, or a record that cannot be read (moved to ``quarantine_dir`` with a message, then redone)."""
    if overwrite or not path.exists():
        return True
    try:
        record = read_record(path)
    except FileNotFoundError:
        return True
    except BadRecordError as err:
        moved = quarantine(path, quarantine_dir)
        log(f"record {path.name} is unusable ({err.reason}); moved to {moved}, the cell runs again")
        return True
    return retry_failed and record.get("status") != "ok"
