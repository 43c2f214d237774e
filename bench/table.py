"""The comparison table a run prints (tabulate) and writes as Markdown next to its records."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from unlearnbench.metrics import PERCENT_METRICS
from unlearnbench.registry import METRICS

PERCENT = PERCENT_METRICS


def _fmt(values: list[float], name: str) -> str:
    if not values:
        return "n/a"
    arr = np.asarray(values, dtype=float) * (100 if name in PERCENT else 1)
    digits = 1 if name in PERCENT or name.startswith("unet_") or name == "unlearn_seconds" else 2
    text = f"{arr.mean():.{digits}f}"
    if len(arr) > 1:
        text += f" ± {arr.std():.{digits}f}"  # population std, as the papers report
    return text + ("%" if name in PERCENT else "")


def comparison_table(records: list[dict[str, Any]], off_by_default: dict[str, str] | None = None,
                     fmt: str = "github") -> tuple[str, list[str]]:
    """(table, footnotes): one row per method, mean ± std over seeds, ↑/↓ per metric."""
    ok = [r for r in records if r.get("status") == "ok"]
    found = {m for r in ok for m in r["metrics"]}
    metric_names = [m for m in METRICS.names() if m in found] + sorted(found - set(METRICS.names()))
    rows, notes = [], []
    methods = list(dict.fromkeys(r["cell"]["method"] for r in records))
    for method in methods:
        mine = [r for r in ok if r["cell"]["method"] == method]
        failed = [r for r in records if r["cell"]["method"] == method and r.get("status") != "ok"]
        row: dict[str, Any] = {"method": method, "seeds": len(mine)}
        for name in metric_names:
            vals = [r["metrics"][name]["value"] for r in mine if r["metrics"].get(name, {}).get("value") is not None]
            row[name] = _fmt(vals, name)
            reasons = {r["metrics"][name].get("reason") for r in mine if name in r["metrics"]} - {None}
            for reason in reasons:
                notes.append(f"{method} {name}: {reason}")
        if failed:
            row["method"] += f" ({len(failed)} failed)"
            notes += [f"{method} seed {r['cell']['seed']} failed: {r.get('error')}" for r in failed]
        rows.append(row)
    frame = pd.DataFrame(rows)
    headers = ["method", "seeds"] + [f"{n} {'↑' if METRICS.get(n).higher_is_better else '↓'}" for n in metric_names]
    table = tabulate(frame.values.tolist(), headers=headers, tablefmt=fmt, disable_numparse=True)
    if ok:
        first = ok[0]
        for name in metric_names:
            m = first["metrics"][name]
            count = f", n = {m['n_samples']}" if m.get("n_samples") else ""
            notes.insert(0, f"{name}: {m['implementation']}{count}")
    for name, why in (off_by_default or {}).items():
        if name not in metric_names:
            notes.append(f"{name}: not computed in this tier by default: {why}")
    return table, notes


def markdown_report(title: str, records: list[dict[str, Any]], context: list[str],
                    off_by_default: dict[str, str] | None = None) -> str:
    table, notes = comparison_table(records, off_by_default)
    lines = [f"# {title}", "", *[f"- {c}" for c in context], "", table, "", "Notes:", ""]
    lines += [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"
