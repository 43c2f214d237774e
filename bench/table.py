"""The one table builder: rows of records (one per method configuration), their statistics over runs,
and how a number is shown. ``run`` prints its compact table from it; ``report`` builds leaderboards
from it.

Row order comes from the methods' roles and ``order`` (``METHODS``), column order from the metrics'
``order`` (``METRICS``) unless a run asks for its own; which rows are references (the model before
unlearning, the oracle) comes from the roles, never from names.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tabulate import tabulate

from unlearnbench.registry import METHODS, METRICS

RUN_KEYS = ("seed", "forget_set")  # what distinguishes the runs averaged in one row
Item = tuple[dict[str, Any], Path | None]  # a record and the file it came from


def role(method: str) -> str:
    """The method's role (``unlearnbench.method.ROLES``); a method not registered here is an unlearning method."""
    return METHODS.get(method).role if method in METHODS else "unlearning"


def method_rank(method: str) -> tuple[int, str]:
    """Table position of a method: the registry's order, unknown methods after, by name."""
    names = METHODS.names()
    return (names.index(method), "") if method in names else (len(names), method)


def references(methods: Iterable[str]) -> list[str]:
    """The reference rows among ``methods`` (Δ columns compare with them): the model before unlearning,
    then the oracle."""
    present = set(methods)
    return [m for r in ("reference_before", "oracle") for m in METHODS.names() if METHODS.get(m).role == r
            and m in present]


def metric_columns(names: Iterable[str], order: list[str] | None = None) -> list[str]:
    """``names`` in ``order`` (a run's own metric order) or the registry's, unknown names after, sorted."""
    names = set(names)
    ordered = order if order is not None else METRICS.names()
    return [m for m in ordered if m in names] + sorted(names - set(ordered))


def arrow(higher_is_better: bool | None) -> str:
    return "" if higher_is_better is None else (" ↑" if higher_is_better else " ↓")


@dataclass
class Row:
    """One table row: a method (one resolved configuration of it) over its runs."""

    label: str
    method: str
    ok: list[Item]  # sorted by seed
    failed: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # metric -> (mean, std, n)

    def mean(self, metric: str) -> float:
        return self.stats.get(metric, (float("nan"), float("nan"), 0))[0]


def _flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(obj, dict) and obj:
        out: dict[str, str] = {}
        for key in sorted(obj):
            out.update(_flatten(obj[key], f"{prefix}{key}."))
        return out
    value = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, default=str)
    return {prefix.rstrip("."): value}


def _variant(rec: dict[str, Any]) -> str:
    """The hash of a record's config without its run identity (seed, forget set): one variant is one row,
    its runs (seeds, or forget images as in CIFAR-10 / CelebA-HQ, or prompts) averaged."""
    config = {k: v for k, v in (rec.get("config") or {}).items() if k not in RUN_KEYS}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _variant_labels(method: str, configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Row labels: the method name, plus the settings that differ when it ran in several configs."""
    if len(configs) == 1:
        return {key: method for key in configs}
    flat = {key: _flatten({k: v for k, v in cfg.items() if k not in RUN_KEYS}) for key, cfg in configs.items()}
    keys = sorted(set().union(*flat.values()))
    differ = [k for k in keys if len({f.get(k, "—") for f in flat.values()}) > 1]
    own = [k for k in differ if not k.startswith(("user_overrides.", "tuned_overrides."))] or differ
    labels = {}
    for key, f in flat.items():
        text = ", ".join(f"{k}={f.get(k, '—')}" for k in own)
        labels[key] = f"{method} [{text if len(text) <= 60 else 'config ' + key[:8]}]"
    if len(set(labels.values())) < len(labels):
        labels = {key: f"{method} [config {key[:8]}]" for key in configs}
    return labels


def build_rows(items: list[Item], metrics: list[str], failed_rows: bool = True) -> tuple[list[Row], list[str]]:
    """Rows (one per method configuration, in table order) with each metric's mean, population std and
    count over the ok runs; failed records are attached to their row. Also notes on several configurations.

    ``failed_rows``: a configuration whose every run failed gets a row too (the run's table); without it,
    rows and labels come from ok runs only (the leaderboard lists failed runs apart)."""
    ok = [(r, p) for r, p in items if r.get("status") == "ok"]
    failed = sorted((r for r, _ in items if r.get("status") != "ok"),
                    key=lambda r: (method_rank(r["cell"]["method"]), r["cell"]["seed"]))
    by_method: dict[str, dict[str, list[Item]]] = {}
    for rec, path in ok:
        by_method.setdefault(rec["cell"]["method"], {}).setdefault(_variant(rec), []).append((rec, path))
    for rec in failed if failed_rows else ():  # a configuration whose every run failed still gets its row
        by_method.setdefault(rec["cell"]["method"], {}).setdefault(_variant(rec), [])
    rows: list[Row] = []
    notes: list[str] = []
    for method in sorted(by_method, key=method_rank):
        variants = by_method[method]
        configs = {k: (v[0][0] if v else next(r for r in failed if _variant(r) == k)).get("config") or {}
                   for k, v in variants.items()}
        labels = _variant_labels(method, configs)
        for key in sorted(variants, key=lambda k: labels[k]):
            recs = sorted(variants[key], key=lambda rp: (rp[0]["cell"]["seed"], rp[0].get("config_hash", "")))
            mine_failed = [r for r in failed if r["cell"]["method"] == method and _variant(r) == key]
            rows.append(Row(labels[key], method, recs, mine_failed))
        if len(variants) > 1:
            notes.append(f"{method} ran in {len(variants)} configurations: one row each")
    for row in rows:
        for m in metrics:
            vals = [float(rec["metrics"][m]["value"]) for rec, _ in row.ok
                    if rec["metrics"].get(m, {}).get("value") is not None]
            arr = np.asarray(vals, dtype=float)
            row.stats[m] = (float(arr.mean()), float(arr.std(ddof=0)), len(vals)) if vals else \
                (float("nan"), float("nan"), 0)
    return rows, notes


def percent(metric: str) -> bool:
    """Whether ``metric`` is a fraction shown in % (as its registration declares; unknown metrics are not)."""
    return metric in METRICS and METRICS.get(metric).percent


def num(value: float, metric: str, signed: bool = False) -> str:
    """A number as tables show it (percent metrics in %, the metric's decimals, never "-0.0")."""
    d = METRICS.get(metric).digits if metric in METRICS else 2
    x = round(value * (100 if percent(metric) else 1), d) + 0.0  # + 0.0: no "-0.0"
    return f"{x:+.{d}f}" if signed else f"{x:.{d}f}"


def cell(row: Row, metric: str) -> str:
    """mean ± population std (ddof = 0, as the papers report) over the row's runs, or n/a."""
    mean, std, n = row.stats.get(metric, (float("nan"), float("nan"), 0))
    if n == 0:
        return "n/a"
    text = num(mean, metric) + (f" ± {num(std, metric)}" if n > 1 else "")
    return text + ("%" if percent(metric) else "")


# ------------------------------------------------------------------------------ the run's table


def comparison_table(records: list[dict[str, Any]], off_by_default: dict[str, str] | None = None,
                     fmt: str = "github", order: list[str] | None = None) -> tuple[str, list[str]]:
    """(table, footnotes) of one run: one row per method, mean ± std over seeds, ↑/↓ per metric, the
    columns in the run's metric ``order``."""
    ok = [r for r in records if r.get("status") == "ok"]
    metric_names = metric_columns({m for r in ok for m in r["metrics"]}, order)
    rows, notes = build_rows([(r, None) for r in records], metric_names)
    lines = []
    for row in rows:
        for name in metric_names:
            for reason in sorted({r["metrics"][name].get("reason") for r, _ in row.ok if name in r["metrics"]} - {None}):
                notes.append(f"{row.method} {name}: {reason}")
        label = row.label + (f" ({len(row.failed)} failed)" if row.failed else "")
        notes += [f"{row.method} seed {r['cell']['seed']} failed: {r.get('error')}" for r in row.failed]
        lines.append([label, str(len(row.ok))] + [cell(row, m) for m in metric_names])
    headers = ["method", "seeds"] + [f"{n}{arrow(METRICS.get(n).higher_is_better)}" for n in metric_names]
    table = tabulate(lines, headers=headers, tablefmt=fmt, disable_numparse=True)
    if ok:
        for name in metric_names:
            m = ok[0]["metrics"][name]
            count = f", n = {m['n_samples']}" if m.get("n_samples") else ""
            notes.insert(0, f"{name}: {m['implementation']}{count}")
    for name, why in (off_by_default or {}).items():
        if name not in metric_names:
            notes.append(f"{name}: not computed in this tier by default: {why}")
    return table, notes


def markdown_report(title: str, records: list[dict[str, Any]], context: list[str],
                    off_by_default: dict[str, str] | None = None, order: list[str] | None = None) -> str:
    table, notes = comparison_table(records, off_by_default, order=order)
    lines = [f"# {title}", "", *[f"- {c}" for c in context], "", table, "", "Notes:", ""]
    lines += [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"
