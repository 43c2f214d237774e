"""Regression gate: compare a results folder with a stored baseline, per (task, tier, method, metric).

``run_bench.py check --results DIR --baseline FILE [--update]`` calls :func:`check_main`.

Every metric registered in ``METRICS`` declares its direction (``higher_is_better``) and the gate's
slack (``tolerance``: absolute, or relative to the baseline mean when ``relative``; ``None``: the
metric is informational, e.g. machine-dependent wall-clock, and never fails). A cell is a
*regression* when its mean over seeds is worse than the baseline's by more than the slack and, when
both sides have at least :data:`MIN_SEEDS_FOR_TEST` values, a one-sided Welch t-test says the change
is significant (``p < alpha``). Exact metrics (``tolerance == 0``, e.g. pass counts) are
deterministic, so any worsening fails without a test. A baseline cell with no current values is
*missing*, which fails too: the gate must not pass because a method stopped producing results.

Before comparing, the gate checks that the results are runs of what the baseline holds (:func:`mismatch`):
results of another (task, tier), with seeds the baseline lacks, or without any of the baseline's methods
are not compared cell by cell. The gate fails with one line naming the mismatch and the ``run`` command
that produces matching results. Results with only some of the baseline's seeds or methods are compared
(the absent methods' cells are missing), after a note saying what is absent.

Baseline file (JSON, sorted keys, indent 2, written atomically)::

    {"schema": 1, "alpha": 0.05,
     "cells": {"<task>/<tier>/<method>/<metric>": {"values": [...], "seeds": [...], "mean": ...,
                                                   "higher_is_better": ..., "tolerance": ...,
                                                   "relative": ...}}}
"""
from __future__ import annotations

import json
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearnbench.io import atomic_write_json
from unlearnbench.registry import METRICS
from unlearnbench.results import BadRecordError, load_records

BASELINE_SCHEMA = 1
#: Both sides need at least this many seeds for the Welch test; with fewer, only the tolerance decides.
MIN_SEEDS_FOR_TEST = 3
#: Verdicts that make the gate fail.
FAILING = ("regression", "missing")

Key = tuple[str, str, str, str]  # (task, tier, method, metric)


@dataclass
class Cell:
    """The current values of one (task, tier, method, metric), ordered by seed."""

    seeds: list[Any]
    values: list[float]
    higher_is_better: bool | None  # as the records declare it (used only for unregistered metrics)


@dataclass
class Row:
    """One line of the gate's table."""

    key: Key
    baseline_mean: float | None
    current_mean: float | None
    delta: float | None  # current − baseline (signed, in the metric's own units)
    allowed: float | None  # the slack in the metric's units; None for informational metrics
    p_value: float | None  # one-sided Welch p; None when the test was not run
    verdict: str  # regression | missing | improved | ok | info | new


def _key_str(key: Key) -> str:
    return "/".join(key)


def _parse_key(text: str) -> Key:
    parts = text.split("/")
    if len(parts) != 4:
        raise ValueError(f"baseline key {text!r} is not <task>/<tier>/<method>/<metric>")
    return parts[0], parts[1], parts[2], parts[3]


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)  # exactly rounded: independent of the order of seeds


def _seed_order(seed: Any) -> tuple[int, Any]:
    return (0, seed) if isinstance(seed, (int, float)) else (1, str(seed))


def _run_label(cell: dict[str, Any]) -> Any:
    """The seed a cell's values are listed under: the seed, or ``<forget set>/seed<seed>`` for named forget sets."""
    return cell["seed"] if cell.get("forget_set") is None else f"{cell['forget_set']}/seed{cell['seed']}"


@dataclass
class Runs:
    """What one (task, tier) of a results folder or a baseline holds: its methods and seeds (run labels)."""

    methods: set[str]
    seeds: set[Any]


def collect(results: Path, problems: list[BadRecordError] | None = None,
            runs: dict[tuple[str, str], Runs] | None = None) -> tuple[dict[Key, Cell], list[str]]:
    """Group the ``ok`` records under ``results`` (recursively) into cells; also return notes
    (failed records ignored, duplicate seeds resolved) worth printing. Bad record files go to
    ``problems`` (or are warned about, see ``load_records``). ``runs`` receives the methods and seeds
    of every record, failed ones included, per (task, tier)."""
    notes: list[str] = []
    chosen: dict[tuple[str, str, str, Any], dict[str, Any]] = {}
    failed: list[str] = []
    for rec in load_records(results, problems):
        c = rec["cell"]
        run = _run_label(c)
        cell_id = (str(c["task"]), str(c["tier"]), str(c["method"]), run)
        if runs is not None:
            held = runs.setdefault(cell_id[:2], Runs(set(), set()))
            held.methods.add(cell_id[2])
            held.seeds.add(run)
        if rec.get("status") != "ok":
            failed.append(f"{'/'.join(map(str, cell_id[:3]))} seed {cell_id[3]}: {rec.get('error', 'failed')}")
            continue
        if cell_id in chosen:
            older, newer = sorted([chosen[cell_id], rec], key=lambda r: str(r.get("created_at", "")))
            notes.append(f"two ok records for {'/'.join(map(str, cell_id[:3]))} seed {cell_id[3]} "
                         f"(configs {str(older.get('config_hash', '?'))[:12]} and "
                         f"{str(newer.get('config_hash', '?'))[:12]}): using the newer one")
            rec = newer
        chosen[cell_id] = rec
    if failed:
        more = f"; ... ({len(failed) - 5} more)" if len(failed) > 5 else ""
        notes.append(f"{len(failed)} failed record(s) ignored: " + "; ".join(failed[:5]) + more)

    cells: dict[Key, Cell] = {}
    for (task, tier, method, seed) in sorted(chosen, key=lambda k: (*k[:3], _seed_order(k[3]))):
        for name, m in sorted((chosen[(task, tier, method, seed)].get("metrics") or {}).items()):
            value = m.get("value") if isinstance(m, dict) else None
            if value is None:
                continue
            cell = cells.setdefault((task, tier, method, name), Cell([], [], m.get("higher_is_better")))
            cell.seeds.append(seed)
            cell.values.append(float(value))
    return cells, notes


def _rule(metric: str, stored: dict[str, Any] | None, record_hib: bool | None) -> tuple[bool, float | None, bool]:
    """(higher_is_better, tolerance, relative): from the registry, else the baseline's stored values,
    else the records' declared direction with no tolerance (informational)."""
    if metric in METRICS:
        m = METRICS.get(metric)
        return bool(m.higher_is_better), m.tolerance, bool(m.relative)
    if stored is not None:
        return bool(stored.get("higher_is_better")), stored.get("tolerance"), bool(stored.get("relative", False))
    return bool(record_hib), None, False


def build_baseline(cells: dict[Key, Cell], alpha: float) -> dict[str, Any]:
    """The baseline document for ``cells`` (deterministic: no timestamps, seeds in order)."""
    out: dict[str, Any] = {}
    for key, cell in sorted(cells.items()):
        hib, tol, rel = _rule(key[3], None, cell.higher_is_better)
        out[_key_str(key)] = {"values": list(cell.values), "seeds": list(cell.seeds), "mean": _mean(cell.values),
                              "higher_is_better": hib, "tolerance": tol, "relative": rel}
    return {"schema": BASELINE_SCHEMA, "alpha": alpha, "cells": out}


def _welch_p(current: list[float], baseline: list[float], higher_is_better: bool) -> float:
    from scipy import stats

    # H1: the current distribution is worse (lower when higher is better, higher otherwise).
    with warnings.catch_warnings():  # near-constant samples: scipy warns about precision, the p is still usable
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(current, baseline, equal_var=False,
                              alternative="less" if higher_is_better else "greater")
    return float(res.pvalue)


def _var_zero(values: list[float]) -> bool:
    return all(v == values[0] for v in values)


def compare_cell(key: Key, stored: dict[str, Any], cell: Cell | None, alpha: float) -> Row:
    """The verdict for one baseline cell."""
    base_values = [float(v) for v in stored.get("values", [])]
    base_mean = _mean(base_values) if base_values else stored.get("mean")
    hib, tol, rel = _rule(key[3], stored, cell.higher_is_better if cell else None)
    if cell is None or not cell.values:
        return Row(key, base_mean, None, None, None, None, "missing")
    cur_mean = _mean(cell.values)
    delta = cur_mean - base_mean if base_mean is not None else None
    if tol is None:
        return Row(key, base_mean, cur_mean, delta, None, None, "info")
    if base_mean is None:  # a stored cell without values: nothing to compare with
        return Row(key, None, cur_mean, None, None, None, "new")
    allowed = tol * abs(base_mean) if rel else tol
    if math.isnan(cur_mean) and not math.isnan(base_mean):  # a metric that became NaN is a regression
        return Row(key, base_mean, cur_mean, delta, allowed, None, "regression")
    worse_by = (base_mean - cur_mean) if hib else (cur_mean - base_mean)
    p: float | None = None
    if worse_by > allowed:
        significant = True
        exact = tol == 0.0  # deterministic counts: any worsening fails, no test
        if not exact and len(cell.values) >= MIN_SEEDS_FOR_TEST and len(base_values) >= MIN_SEEDS_FOR_TEST:
            if _var_zero(cell.values) and _var_zero(base_values):
                significant = True  # both constant: the t statistic is undefined, the shift is certain
            else:
                p = _welch_p(cell.values, base_values, hib)
                significant = p < alpha if not math.isnan(p) else True
        return Row(key, base_mean, cur_mean, delta, allowed, p, "regression" if significant else "ok")
    if -worse_by > allowed:
        return Row(key, base_mean, cur_mean, delta, allowed, None, "improved")
    return Row(key, base_mean, cur_mean, delta, allowed, None, "ok")


def compare(baseline: dict[str, Any], cells: dict[Key, Cell], alpha: float) -> list[Row]:
    """A row for every baseline cell and every new current cell, sorted by key."""
    stored_cells: dict[Key, dict[str, Any]] = {_parse_key(k): v for k, v in baseline.get("cells", {}).items()}
    rows = [compare_cell(key, stored, cells.get(key), alpha) for key, stored in stored_cells.items()]
    for key, cell in cells.items():
        if key not in stored_cells:
            rows.append(Row(key, None, _mean(cell.values), None, None, None, "new"))  # reported, never fails
    return sorted(rows, key=lambda r: r.key)


def _fmt(x: float | None, spec: str = ".6g") -> str:
    return "–" if x is None else format(x, spec)


def format_table(rows: list[Row]) -> str:
    from tabulate import tabulate

    body = [[*r.key, _fmt(r.baseline_mean), _fmt(r.current_mean), _fmt(r.delta, "+.4g"), _fmt(r.allowed, ".4g"),
             _fmt(r.p_value, ".3g"), r.verdict] for r in rows]
    headers = ["task", "tier", "method", "metric", "baseline", "current", "Δ", "allowed", "p", "verdict"]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def summarize(rows: list[Row]) -> tuple[str, bool]:
    counts = {v: sum(r.verdict == v for r in rows) for v in ("regression", "missing", "improved", "ok", "info", "new")}
    failed = any(counts[v] for v in FAILING)
    parts = ", ".join(f"{n} {v}" for v, n in counts.items())
    return f"gate {'FAILED' if failed else 'passed'}: {len(rows)} cells: {parts}", failed


def _non_finite(obj: Any, where: str) -> list[str]:
    """The places (``where`` + key path) of NaN or infinite numbers inside a parsed JSON value."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [f"{where} = {obj}"]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _non_finite(v, f"{where}[{i}]")]
    return []


def _write_baseline(results: Path, baseline: Path, cells: dict[Key, Cell], bad: list[BadRecordError],
                    alpha: float) -> int:
    """Write the baseline for ``cells``, unless a record file is bad or a value is not finite (exit 2)."""
    if bad:
        print(f"check --update: {len(bad)} bad record file(s) under {results} (listed above); refusing to write "
              f"{baseline} without their cells: fix or remove them", file=sys.stderr)
        return 2
    if not cells:
        print(f"check --update: no ok results under {results}; refusing to write an empty baseline",
              file=sys.stderr)
        return 2
    doc = build_baseline(cells, alpha)
    non_finite = _non_finite(doc["cells"], "")
    if non_finite:
        print(f"check --update: non-finite values would go into {baseline}; refusing to write it: "
              + "; ".join(non_finite), file=sys.stderr)
        return 2
    atomic_write_json(baseline, doc)
    print(f"baseline {baseline} written: {len(cells)} cells from {results}")
    return 0


def _read_baseline(baseline: Path) -> dict[str, Any] | str:
    """The baseline document, or why it cannot be used (not JSON, wrong schema, NaN/Infinity values:
    ``json`` accepts those, and one would compare as neither worse nor better)."""
    if not baseline.is_file():
        return f"no baseline {baseline} (write one with --update)"
    try:
        doc = json.loads(baseline.read_text())
    except json.JSONDecodeError as err:
        return f"baseline {baseline} is not JSON: {err}"
    if not isinstance(doc, dict) or doc.get("schema") != BASELINE_SCHEMA or not isinstance(doc.get("cells"), dict):
        return f"{baseline} is not a schema-{BASELINE_SCHEMA} baseline"
    non_finite = _non_finite(doc, "")
    if non_finite:
        return f"baseline {baseline} holds non-finite values: " + "; ".join(non_finite)
    return doc


def baseline_runs(baseline: dict[str, Any]) -> dict[tuple[str, str], Runs]:
    """The methods and seeds the baseline holds, per (task, tier)."""
    runs: dict[tuple[str, str], Runs] = {}
    for text, stored in baseline.get("cells", {}).items():
        task, tier, method, _ = _parse_key(text)
        held = runs.setdefault((task, tier), Runs(set(), set()))
        held.methods.add(method)
        held.seeds.update(s for s in stored.get("seeds", []) if s is not None)
    return runs


def _split_runs(labels: set[Any]) -> tuple[list[Any], list[str]]:
    """Run labels as (seeds, forget sets): ``10000/seed0`` is seed 0 of forget set 10000."""
    seeds: set[Any] = set()
    forget: set[str] = set()
    for label in labels:
        if isinstance(label, str) and "/seed" in label:
            name, seed = label.rsplit("/seed", 1)
            forget.add(name)
            label = int(seed) if seed.isdigit() else seed
        seeds.add(label)
    return sorted(seeds, key=_seed_order), sorted(forget)


def seeds_text(seeds: list[Any] | set[Any]) -> str:
    """Seeds as ``--seeds`` takes them: runs of consecutive integers as ranges (``0-2,5``)."""
    ints = sorted(s for s in seeds if isinstance(s, int) and not isinstance(s, bool))
    parts: list[str] = []
    i = 0
    while i < len(ints):
        j = i
        while j + 1 < len(ints) and ints[j + 1] == ints[j] + 1:
            j += 1
        parts.append(str(ints[i]) if i == j else f"{ints[i]}-{ints[j]}")
        i = j + 1
    parts += sorted(str(s) for s in seeds if not (isinstance(s, int) and not isinstance(s, bool)))
    return ",".join(parts)


def _runs_text(labels: set[Any]) -> str:
    seeds, forget = _split_runs(labels)
    return f"seeds {seeds_text(seeds) or 'none'}" + (f" of forget sets {', '.join(forget)}" if forget else "")


def _defaults(task: str, tier: str) -> tuple[list[str], list[str], list[str]] | None:
    """What ``run --task TASK --tier TIER`` runs without options: (methods, metrics, forget sets); None when the
    task or tier is not registered here."""
    try:
        from unlearnbench.registry import TASKS
        from unlearnbench.settings import resolve_methods, resolve_metrics

        task_obj = TASKS.get(task)
        tier_obj = task_obj.tier(tier)
        methods = resolve_methods(task_obj, None, log=lambda _: None)
        metrics = resolve_metrics(tier_obj, None, 0, task_obj)
        return methods, metrics, [str(f) for f in tier_obj.forget_sets or ()]
    except Exception:  # an unknown or broken task: the command names everything explicitly
        return None


def matching_command(task: str, tier: str, baseline: dict[str, Any]) -> str:
    """The ``run`` command whose results the baseline's (task, tier) cells compare with."""
    keys = [_parse_key(k) for k in baseline.get("cells", {})]
    methods = sorted({k[2] for k in keys if k[:2] == (task, tier)})
    metrics = sorted({k[3] for k in keys if k[:2] == (task, tier)})
    seeds, forget = _split_runs(baseline_runs(baseline).get((task, tier), Runs(set(), set())).seeds)
    defaults = _defaults(task, tier)
    parts = ["python run_bench.py run", f"--task {task}", f"--tier {tier}"]
    if defaults is None or set(methods) != set(defaults[0]):
        order = {m: i for i, m in enumerate(defaults[0] if defaults else [])}
        parts.append("--methods " + ",".join(sorted(methods, key=lambda m: (order.get(m, len(order)), m))))
    if defaults is None or not set(metrics) <= set(defaults[1]):
        order = {m: i for i, m in enumerate(defaults[1] if defaults else [])}
        parts.append("--metrics " + ",".join(sorted(metrics, key=lambda m: (order.get(m, len(order)), m))))
    if forget and (defaults is None or forget != sorted(defaults[2])):
        parts.append("--forget " + ",".join(forget))
    if seeds:
        parts.append(f"--seeds {seeds_text(seeds)}")
    return " ".join([*parts, "--out DIR"])


def _pairs_text(pairs: set[tuple[str, str]]) -> str:
    return ", ".join("/".join(p) for p in sorted(pairs))


def mismatch(baseline: dict[str, Any], runs: dict[tuple[str, str], Runs]) -> tuple[str | None, list[str]]:
    """Whether the results (``runs``, from ``collect``) are runs of what the baseline holds.

    Returns (the one line that fails the gate before any comparison, or None; notes to print before the
    table). Failing: a (task, tier) of the baseline absent from the results, results with seeds the baseline
    lacks, or none of the baseline's methods. Noted: results with only some of the baseline's seeds or methods.
    """
    base = baseline_runs(baseline)
    if not base:
        return None, []
    absent = sorted(set(base) - set(runs))
    if absent:
        commands = " and ".join(matching_command(task, tier, baseline) for task, tier in absent)
        if not runs:
            return (f"no records in the results folder, the baseline is {_pairs_text(set(base))}; matching results "
                    f"come from: {commands}"), []
        kind = "task" if {t for t, _ in absent} - {t for t, _ in runs} else "tier"
        return (f"{kind} mismatch: results are {_pairs_text(set(runs))}, the baseline is {_pairs_text(set(base))}; "
                f"matching results come from: {commands}"), []
    notes: list[str] = []
    for (task, tier), held in sorted(base.items()):
        got = runs[(task, tier)]
        where = f"{task}/{tier}"
        command = matching_command(task, tier, baseline)
        extra_seeds = got.seeds - held.seeds
        if extra_seeds:
            kind = "forget-set" if set(_split_runs(extra_seeds)[1]) - set(_split_runs(held.seeds)[1]) else "seed"
            return (f"{kind} mismatch: results of {where} have {_runs_text(got.seeds)}, the baseline "
                    f"{_runs_text(held.seeds)}; matching results come from: {command}"), []
        if not got.methods & held.methods:
            return (f"method mismatch: results of {where} hold {', '.join(sorted(got.methods))}, the baseline "
                    f"{', '.join(sorted(held.methods))}; matching results come from: {command}"), []
        lacking = held.seeds - got.seeds
        if lacking:
            notes.append(f"results of {where} lack {_runs_text(lacking)} of the baseline's {_runs_text(held.seeds)}: "
                         f"compared on the seeds present; matching results come from: {command}")
        absent_methods = held.methods - got.methods
        if absent_methods:
            notes.append(f"results of {where} lack method(s) {', '.join(sorted(absent_methods))} of the baseline "
                         f"(their cells are missing); matching results come from: {command}")
    return None, notes


def check_main(results: Path, baseline: Path, update: bool = False, alpha: float = 0.05) -> int:
    """Compare ``results`` with ``baseline`` (or rewrite the baseline with ``update``); the exit code:
    0 pass, 1 a regression or a missing cell, 2 unusable input (including any bad record file under
    ``results``: the comparison is still printed, but the results are incomplete)."""
    results, baseline = Path(results), Path(baseline)
    if not results.is_dir():
        print(f"check: results folder {results} does not exist", file=sys.stderr)
        return 2
    bad: list[BadRecordError] = []
    runs: dict[tuple[str, str], Runs] = {}
    cells, notes = collect(results, bad, runs)
    for err in bad:
        print(f"warning: bad record {err.path}: {err.reason}", file=sys.stderr)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if update:
        return _write_baseline(results, baseline, cells, bad, alpha)

    doc = _read_baseline(baseline)
    if isinstance(doc, str):
        print(f"check: {doc}", file=sys.stderr)
        return 2
    try:
        failure, mismatch_notes = mismatch(doc, runs)
        rows = compare(doc, cells, alpha)
    except ValueError as err:
        print(f"check: {err}", file=sys.stderr)
        return 2
    if failure is not None:  # not runs of what the baseline holds: no cell-by-cell table
        print(f"gate FAILED: {failure} (baseline {baseline})")
        return 2 if bad else 1
    for note in mismatch_notes:
        print(f"note: {note}", file=sys.stderr)

    print(format_table(rows))
    line, failed = summarize(rows)
    print()
    print(f"{line} (baseline {baseline}, alpha {alpha:g})")
    if bad:
        print(f"check: {len(bad)} bad record file(s) under {results} (listed above): the results are "
              f"incomplete, any cell they held is missing", file=sys.stderr)
        return 2
    return 1 if failed else 0
