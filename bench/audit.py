"""Audit a results folder the way a leaderboard maintainer would before accepting it.

``run_bench.py validate DIR [--json]`` calls :func:`audit_main`. (``unlearnbench.validate`` is another
thing: the checks of a user's input before a run.) A folder is *acceptable* when it has no problem, no
failed cell and no missing cell; warnings (a dirty commit, an older version) do not block it.

What is checked, per record file: it reads as a record (``results.read_record``: JSON, schema, finite
values, named as ``record_name`` names it); its config hash recomputes from its config; its cell agrees
with its config; its task, tier, method and metrics are known to the installed code at a version it
knows; its metric entries agree with the config, the registry and themselves (a fraction in [0, 1], an
interval that is ordered and recomputes from what the record says it was computed from, a rate that
equals its count over its samples). Across files: every (method, seed, forget set) of a (task, tier)
seen for one method is there for every method. What cannot be detected without a signature is in
docs/sharing.md: an edited number that leaves every internal check consistent.
"""
from __future__ import annotations

import json
import math
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from unlearnbench.registry import METHODS, METRICS, TASKS
from unlearnbench.results import BadRecordError, is_record_file, config_hash, read_record
from unlearnbench.uncertainty import percentile_interval, proportion_interval
from unlearnbench.validate import UsageError

#: How far an interval recomputed from a record's replicates may lie from the stored one (replicates are
#: stored rounded to 6 decimals).
_REPLICATE_TOLERANCE = 1e-5
_CELL_KEYS = ("task", "tier", "method", "seed")


@dataclass
class Finding:
    """One thing the audit says about one file (``path`` relative to the audited folder; "" for the folder)."""

    path: str
    message: str


@dataclass
class AuditReport:
    """What ``audit_folder`` found. Problems, failed cells and missing cells make a folder unacceptable."""

    folder: str
    record_files: int = 0
    grids: list[str] = field(default_factory=list)  # "task/tier: N methods x M seeds[ x K forget sets]"
    problems: list[Finding] = field(default_factory=list)
    failed: list[Finding] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)

    @property
    def acceptable(self) -> bool:
        return not (self.problems or self.failed or self.missing)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "acceptable": self.acceptable}

    def text(self) -> str:
        """The short human-readable report: what was read, each non-empty section, the verdict."""
        lines = [f"validate {self.folder}: {self.record_files} record file(s)"]
        lines += [f"  {grid}" for grid in self.grids]
        sections = (("problems", self.problems), ("failed cells", self.failed),
                    ("missing cells", [Finding("", m) for m in self.missing]), ("warnings", self.warnings))
        for title, findings in sections:
            if findings:
                lines.append(f"{title} ({len(findings)}):")
                lines += [f"  {f.path + ': ' if f.path else ''}{f.message}" for f in findings]
        if self.acceptable:
            lines.append(f"acceptable ({len(self.warnings)} warning(s))")
        else:
            lines.append(f"NOT acceptable: {len(self.problems)} problem(s), {len(self.failed)} failed cell(s), "
                         f"{len(self.missing)} missing cell(s)")
        return "\n".join(lines)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _close(a: float, b: float, tolerance: float) -> bool:
    return abs(a - b) <= tolerance * (1 + abs(b))


def _version_check(kind: str, name: str, recorded: Any, installed: int, problems: list[str],
                   older: Counter) -> None:
    """A recorded version newer than the installed code's (or not an integer) is a problem; an older one
    is counted for a warning (the numbers were computed by code this installation no longer runs)."""
    if not isinstance(recorded, int) or isinstance(recorded, bool):
        problems.append(f"{kind} {name}: recorded version {recorded!r} is not an integer")
    elif recorded > installed:
        problems.append(f"{kind} {name} v{recorded} is newer than the installed v{installed} (update unlearnbench)")
    elif recorded < installed:
        older[(kind, name, recorded, installed)] += 1


def _identity_problems(rec: dict[str, Any]) -> list[str]:
    """Hash and cell-vs-config consistency: what a hand edit of the config or the cell breaks."""
    config = rec.get("config")
    if not isinstance(config, dict):
        return ["no config object: the record cannot be traced to its settings"]
    out = []
    if config_hash(config) != rec["config_hash"]:
        out.append("config_hash does not recompute from config (config edited by hand?)")
    cell = rec["cell"]
    for key in (*_CELL_KEYS, "forget_set"):
        if cell.get(key) != config.get(key):
            out.append(f"cell.{key} = {cell.get(key)!r} but config.{key} = {config.get(key)!r} (edited by hand?)")
    return out


def _registry_problems(rec: dict[str, Any], older: Counter) -> list[str]:
    """Whether the installed code knows the record's task, tier, method and metrics, at their versions."""
    config, cell, out = rec.get("config") or {}, rec["cell"], []
    if cell["task"] not in TASKS:
        out.append(f"unknown task {cell['task']!r} (not in `run_bench.py ls tasks`)")
    else:
        task = TASKS.get(cell["task"])
        if cell["tier"] not in task.tiers():
            out.append(f"task {cell['task']} has no tier {cell['tier']!r}")
        _version_check("task", cell["task"], config.get("task_version"), task.version, out, older)
    if cell["method"] not in METHODS:
        out.append(f"unknown method {cell['method']!r} (not in `run_bench.py ls methods`)")
    else:
        _version_check("method", cell["method"], config.get("method_version"), METHODS.get(cell["method"]).version,
                       out, older)
    metrics = config.get("metrics")
    if not isinstance(metrics, dict):
        return [*out, "config.metrics is not an object of metric name -> version"]
    for name, version in metrics.items():
        if name not in METRICS:
            out.append(f"unknown metric {name!r} (not in `run_bench.py ls metrics`)")
        else:
            _version_check("metric", name, version, METRICS.get(name).version, out, older)
    return out


def _interval_problems(name: str, entry: dict[str, Any]) -> list[str]:
    """An interval must be two finite, ordered numbers that recompute from what its method names: the
    Wilson interval from the copy count, a percentile bootstrap from the stored replicates."""
    interval, method = entry.get("interval"), str(entry.get("interval_method") or "")
    if interval is None:
        return []
    if not (isinstance(interval, list) and len(interval) == 2 and all(_finite(v) for v in interval)):
        return [f"metrics.{name}.interval {interval!r} is not two finite numbers"]
    lo, hi = interval
    if lo > hi:
        return [f"metrics.{name}.interval [{lo}, {hi}] is not ordered"]
    copies, n = (entry.get("extra") or {}).get("copies"), entry.get("n_samples")
    if "Wilson" in method.split(";")[0] and isinstance(copies, int) and isinstance(n, int) and n > 0:
        expected = proportion_interval(copies, n)
        if not all(_close(a, b, 1e-9) for a, b in zip(interval, expected)):
            return [f"metrics.{name}.interval {interval} is not the Wilson interval of {copies} in {n} "
                    f"{list(expected)} (edited by hand?)"]
    elif "percentile bootstrap" in method.split(";")[0] and entry.get("replicates"):
        reps = entry["replicates"]
        if not all(_finite(v) for v in reps):
            return [f"metrics.{name}.replicates hold a non-finite value"]
        expected = percentile_interval(reps)
        if not all(_close(a, b, _REPLICATE_TOLERANCE) for a, b in zip(interval, expected)):
            return [f"metrics.{name}.interval {interval} is not the percentile interval of its replicates "
                    f"{list(expected)} (edited by hand?)"]
    return []


def _metric_problems(rec: dict[str, Any]) -> list[str]:
    """An ok record's metric entries against its config, the registry and themselves."""
    if rec["status"] != "ok":
        return [] if rec.get("error") else ["failed record without an error"]
    declared = (rec.get("config") or {}).get("metrics")
    declared = declared if isinstance(declared, dict) else {}
    metrics, out = rec["metrics"], []
    for name in sorted(set(declared) - set(metrics)):
        out.append(f"metric {name} is in the config but has no entry (removed by hand?)")
    for name in sorted(set(metrics) - set(declared)):
        out.append(f"metric {name} has an entry but is not in the config (added by hand?)")
    for name in sorted(set(metrics) & set(declared)):
        entry, value = metrics[name], metrics[name].get("value")
        if entry.get("version") != declared[name]:
            out.append(f"metrics.{name}.version {entry.get('version')!r} but the config says {declared[name]!r}")
        registered = METRICS.get(name) if name in METRICS else None
        if registered is not None and entry.get("version") == registered.version \
                and entry.get("higher_is_better") != registered.higher_is_better:
            out.append(f"metrics.{name}.higher_is_better is {entry.get('higher_is_better')!r}, the metric's is "
                       f"{registered.higher_is_better}")
        if value is None:
            continue
        if registered is not None and registered.percent and not 0 <= value <= 1:
            out.append(f"metrics.{name}.value {value} is a fraction outside [0, 1]")
        copies, n = (entry.get("extra") or {}).get("copies"), entry.get("n_samples")
        if isinstance(copies, int) and isinstance(n, int) and n > 0 and not _close(value, copies / n, 1e-12):
            out.append(f"metrics.{name}.value {value} is not its {copies} copies / {n} samples (edited by hand?)")
        out += _interval_problems(name, entry)
    return out


def _cell_text(task: str, tier: str, method: str, seed: Any, forget: Any) -> str:
    return f"{task}/{tier} {method} seed {seed}" + (f" forget set {forget}" if forget is not None else "")


def _grid(report: AuditReport, records: list[dict[str, Any]]) -> None:
    """Per (task, tier): every (method, seed, forget set) combination seen for some method must be there
    for every method; what is not is a missing cell."""
    by_grid: dict[tuple[str, str], set[tuple[Any, Any, Any]]] = {}
    for rec in records:
        cell = rec["cell"]
        by_grid.setdefault((cell["task"], cell["tier"]), set()).add(
            (cell["method"], cell["seed"], cell.get("forget_set")))
    for (task, tier), present in sorted(by_grid.items()):
        methods = sorted({m for m, _, _ in present})
        seeds = sorted({s for _, s, _ in present}, key=lambda s: (not isinstance(s, int), str(s)))
        forgets = sorted({f for _, _, f in present}, key=lambda f: (f is not None, str(f)))
        shape = f"{len(methods)} method(s) x {len(seeds)} seed(s)"
        shape += f" x {len(forgets)} forget set(s)" if forgets != [None] else ""
        report.grids.append(f"{task}/{tier}: {shape} ({', '.join(methods)})")
        report.missing += [_cell_text(task, tier, m, s, f) for m, s, f in product(methods, seeds, forgets)
                           if (m, s, f) not in present]


def _traceability(report: AuditReport, commits: Counter) -> None:
    for commit, count in sorted(commits.items(), key=lambda kv: str(kv[0])):
        if commit is None:
            report.warnings.append(Finding("", f"{count} record(s) carry no git commit: their code cannot be traced"))
        elif str(commit).endswith("-dirty"):
            report.warnings.append(Finding("", f"{count} record(s) carry git_commit {commit}: recorded from a "
                                               "checkout with uncommitted changes, so they cannot be traced to a "
                                               "commit"))


def audit_folder(path: Path) -> AuditReport:
    """Audit every record file under ``path`` (recursively); raises UsageError when it is not a folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(f"validate: {folder} is not a folder")
    report = AuditReport(str(folder))
    files = [p for p in sorted(folder.rglob("*.json")) if is_record_file(p)]
    report.record_files = len(files)
    if not files:
        report.problems.append(Finding("", "no record files (records/*.json) under this folder"))
        return report
    records, commits, older = [], Counter(), Counter()
    copies: dict[str, list[str]] = {}
    for file in files:
        where = file.relative_to(folder).as_posix()
        try:
            rec = read_record(file)
        except BadRecordError as err:
            report.problems.append(Finding(where, err.reason))
            continue
        records.append(rec)
        copies.setdefault(rec["config_hash"], []).append(where)
        commits[rec.get("git_commit")] += 1
        found = _identity_problems(rec) + _registry_problems(rec, older) + _metric_problems(rec)
        report.problems += [Finding(where, message) for message in found]
        if rec["status"] == "failed":
            report.failed.append(Finding(where, str(rec.get("error") or "no error recorded")))
    for (kind, name, recorded, installed), count in sorted(older.items()):
        report.warnings.append(Finding("", f"{count} record(s) of {kind} {name} v{recorded}, older than the installed "
                                           f"v{installed}: rerunning them would give new cells"))
    for digest, wheres in sorted(copies.items()):
        if len(wheres) > 1:
            report.warnings.append(Finding(wheres[0], f"{len(wheres)} copies of one cell ({', '.join(wheres[1:])}); "
                                                      "counted once"))
    _traceability(report, commits)
    _grid(report, records)
    return report


def audit_main(path: Path, as_json: bool = False) -> int:
    """Print the audit of ``path`` (text, or JSON with ``as_json``); 0 when acceptable, 1 otherwise.
    A path that is not a folder is a UsageError (the CLI prints it and exits 2)."""
    report = audit_folder(path)
    print(json.dumps(report.to_json(), indent=2) if as_json else report.text())
    sys.stdout.flush()
    return 0 if report.acceptable else 1
