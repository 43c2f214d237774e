"""The one table builder: rows of records (one per method configuration), their statistics over runs,
and how a number is shown. ``run`` prints its compact table from it; ``report`` builds leaderboards
from it.

Row order comes from the methods' roles and ``order`` (``METHODS``), column order from the metrics'
``order`` (``METRICS``) unless a run asks for its own; which rows are references (the model before
unlearning, the oracle) comes from the roles, never from names.

Uncertainty: each row's mean has a 95% interval, and rows are compared (with the oracle, with the best
row) by the paired hierarchical bootstrap of ``unlearnbench.uncertainty`` over seeds and each cell's
bootstrap replicates; ``distance_to_oracle`` aggregates the gaps (``docs/uncertainty.md``).
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
from unlearnbench.uncertainty import Cell, cell_draws, distance_to_oracle, indistinguishable, paired_bootstrap

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


#: How a column of a metric whose right value is the oracle's says so (instead of an arrow).
TOWARDS_ORACLE = " ≈ oracle"
#: How a column that is shown but never ranked (wall-clock) says so (instead of an arrow).
INFORMATIONAL = " (info)"


def heading(metric: str, higher_is_better: bool | None) -> str:
    """A column heading: the metric with its direction, ``≈ oracle`` when its target is the oracle's value, or
    ``(info)`` when it is never ranked."""
    if informational(metric):
        return metric + INFORMATIONAL
    return metric + (TOWARDS_ORACLE if target(metric) == "oracle" else arrow(higher_is_better))


@dataclass
class Row:
    """One table row: a method (one resolved configuration of it) over its runs."""

    label: str
    method: str
    ok: list[Item]  # sorted by seed
    failed: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # metric -> (mean, std, n)
    #: metric -> run key (seed, forget set) -> the cell's value and draws (its bootstrap replicates, or its value)
    draws: dict[str, dict[tuple[Any, ...], Cell]] = field(default_factory=dict)

    def mean(self, metric: str) -> float:
        return self.stats.get(metric, (float("nan"), float("nan"), 0))[0]

    def interval(self, metric: str) -> dict[str, Any] | None:
        """The mean over runs with its 95% hierarchical bootstrap interval (``paired_bootstrap``), or None."""
        draws = self.draws.get(metric)
        return paired_bootstrap(draws) if draws else None


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


#: Config scopes a row label names a setting without (``lmbda=0.1``, not ``hparams.lmbda=0.1``).
SHORT_SCOPES = ("hparams", "loop")


def _shown(value: str) -> str:
    """A flattened config value as a label shows it: an empty string as ``""``."""
    return '""' if value == "" else value


def _variant_labels(method: str, configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Row labels: the method name, plus the settings that differ when it ran in several configs."""
    if len(configs) == 1:
        return {key: method for key in configs}
    flat = {key: _flatten({k: v for k, v in cfg.items() if k not in RUN_KEYS}) for key, cfg in configs.items()}
    keys = sorted(set().union(*flat.values()))
    differ = [k for k in keys if len({f.get(k, "—") for f in flat.values()}) > 1]
    bookkeeping = ("user_overrides", "tuned_overrides")  # where a setting came from, not what it is
    own = [k for k in differ if k.split(".", 1)[0] not in bookkeeping] or differ
    short = {k: rest if scope in SHORT_SCOPES and rest else k for k in own for scope, _, rest in [k.partition(".")]}
    if len(set(short.values())) < len(short):  # e.g. hparams.lr and loop.lr: keep the scopes
        short = {k: k for k in own}
    labels = {}
    for key, f in flat.items():
        text = ", ".join(f"{short[k]}={_shown(f.get(k, '—'))}" for k in own)
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
            row.draws[m] = {}
            for rec, _ in row.ok:
                entry = rec["metrics"].get(m) or {}
                draws = cell_draws(entry.get("value"), entry.get("replicates"))
                if draws is not None:
                    row.draws[m].setdefault(run_key(rec), draws)
    return rows, notes


def run_key(rec: dict[str, Any]) -> tuple[Any, ...]:
    """What pairs the cells of two rows: the run's seed and forget set."""
    return tuple(str((rec.get("config") or {}).get(k, rec["cell"].get(k))) for k in RUN_KEYS)


def compared(metric: str) -> bool:
    """Whether rows are compared on ``metric``: every metric but the costs (the wall-clock and pass counts of a
    method are its price, not an estimate of a distribution)."""
    return metric not in METRICS or METRICS.get(metric).kind != "cost"


def target(metric: str) -> str | None:
    """The metric's declared target (``"oracle"``: no best by direction), None when unregistered."""
    return METRICS.get(metric).target if metric in METRICS else None


def informational(metric: str) -> bool:
    """Whether ``metric`` is shown for information only and never ranked (machine-dependent wall-clock)."""
    return metric in METRICS and METRICS.get(metric).informational


def cost_unit(metric: str) -> str | None:
    """The unit a cost metric is ranked in together with the others of that unit (their sum), or None."""
    return METRICS.get(metric).cost_unit if metric in METRICS and METRICS.get(metric).kind == "cost" else None


def forgetting(metric: str) -> bool:
    """Whether ``metric`` measures forgetting (a registered sample metric not declared ``quality``): a collapsed
    row takes no best on it. Unregistered metrics are not."""
    return metric in METRICS and METRICS.get(metric).kind == "sample" and not METRICS.get(metric).quality


def base_row(rows: list[Row]) -> Row | None:
    """The first row of the role ``reference_before`` (the model before unlearning), if any."""
    return next((r for r in rows if role(r.method) == "reference_before"), None)


@dataclass(frozen=True)
class Collapse:
    """A row's mean beyond the collapse floor a quality metric declares relative to the base model's mean."""

    metric: str
    value: float  # the row's mean
    floor: float  # ratio x base
    ratio: float
    base: float  # the base row's mean
    higher_is_better: bool

    def text(self, base_label: str) -> str:
        side = "below" if self.higher_is_better else "above"
        unit = "%" if percent(self.metric) else ""
        return (f"{self.metric} {num(self.value, self.metric)}{unit} is {side} the floor "
                f"{num(self.floor, self.metric)}{unit} ({self.ratio:g} × {base_label}'s "
                f"{num(self.base, self.metric)}{unit})")


def collapse_floors(metrics: Iterable[str]) -> dict[str, float]:
    """metric -> its declared collapse ratio, for the ``metrics`` that declare one."""
    return {m: METRICS.get(m).collapse for m in metrics if m in METRICS and METRICS.get(m).collapse is not None}


def collapses(rows: list[Row], metrics: Iterable[str]) -> dict[int, list[Collapse]]:
    """Row index -> the collapse floors its mean breaks (``Metric.collapse``: a ratio to the base row's mean, in
    the metric's direction); rows that break none are absent, and so is the base row itself. Without a base row
    (role ``reference_before``) or with a base mean <= 0 for a metric, that floor is not applied."""
    base = base_row(rows)
    out: dict[int, list[Collapse]] = {}
    if base is None:
        return out
    for m, ratio in collapse_floors(metrics).items():
        b = base.mean(m)
        if not base.stats.get(m, (0, 0, 0))[2] or not np.isfinite(b) or b <= 0:
            continue
        hib = METRICS.get(m).higher_is_better
        floor = ratio * b
        for i, row in enumerate(rows):
            if row is base or not row.stats.get(m, (0, 0, 0))[2]:
                continue
            v = row.mean(m)
            if (v < floor) if hib else (v > floor):
                out.setdefault(i, []).append(Collapse(m, v, floor, ratio, b, hib))
    return out


def best_rows(rows: list[Row], metric: str, candidates: Iterable[int], metrics: Iterable[str],
              higher_is_better: bool | None = None, collapsed: Iterable[int] = (),
              value: Any = None) -> set[int]:
    """The indices among ``candidates`` holding the best value of ``metric`` under the leaderboard's rules
    (``docs/uncertainty.md``); empty when it is not ranked:

    - informational metrics (wall-clock) are never ranked;
    - metrics whose target is the oracle: the smallest |value - the oracle row's value|;
    - costs of one ``cost_unit`` (UNet passes): the smallest sum over the unit's metrics among ``metrics``;
    - otherwise by ``higher_is_better`` (the registry's when None);
    - on forgetting metrics the ``collapsed`` rows are not candidates.

    ``value(row, metric)``: the number compared (default the row's mean; leaderboards pass the displayed one)."""
    value = value or (lambda row, m: row.mean(m))
    has = lambda i, m: rows[i].stats.get(m, (0, 0, 0))[2] > 0  # noqa: E731
    cands = [i for i in candidates if has(i, metric)]
    if forgetting(metric):
        fallen = set(collapsed)
        cands = [i for i in cands if i not in fallen]
    if informational(metric) or not cands:
        return set()
    scores: dict[int, float]
    unit = cost_unit(metric)
    if target(metric) == "oracle":
        oracle = oracle_row(rows)
        if oracle is None or not oracle.stats.get(metric, (0, 0, 0))[2]:
            return set()
        ref = value(oracle, metric)
        scores = {i: abs(value(rows[i], metric) - ref) for i in cands}
    elif unit is not None:
        group = [m for m in metrics if cost_unit(m) == unit and not informational(m)]
        scores = {i: sum(value(rows[i], m) for m in group) for i in cands if all(has(i, m) for m in group)}
    else:
        hib = higher_is_better if higher_is_better is not None else (
            METRICS.get(metric).higher_is_better if metric in METRICS else None)
        if hib is None:
            return set()
        scores = {i: -value(rows[i], metric) if hib else value(rows[i], metric) for i in cands}
    scores = {i: round(v, 9) for i, v in scores.items() if np.isfinite(v)}
    if not scores:
        return set()
    low = min(scores.values())
    return {i for i, v in scores.items() if v == low}


def compare(row: Row, other: Row, metric: str) -> dict[str, Any] | None:
    """``row`` minus ``other`` on ``metric``, paired by run, with its hierarchical bootstrap interval."""
    a, b = row.draws.get(metric), other.draws.get(metric)
    return paired_bootstrap(a, b) if a and b else None


def oracle_row(rows: list[Row]) -> Row | None:
    """The first row of the oracle role (the retrain oracle), if any."""
    return next((r for r in rows if role(r.method) == "oracle"), None)


def spreads(rows: list[Row], metrics: Iterable[str]) -> dict[str, float]:
    """Per metric, the population std of the row means across rows: the scale of ``distance_to_oracle``."""
    out = {}
    for m in metrics:
        means = [r.mean(m) for r in rows if r.stats.get(m, (0, 0, 0))[2]]
        if len(means) > 1:
            out[m] = float(np.std(means))
    return out


def oracle_distances(rows: list[Row], metrics: list[str]) -> dict[int, dict[str, Any]]:
    """Per row index (the oracle's own row excluded): ``{"gaps": metric -> compare(row, oracle), "distance":
    the aggregate}``; empty without an oracle row."""
    oracle = oracle_row(rows)
    if oracle is None:
        return {}
    names = [m for m in metrics if compared(m)]
    scale = spreads(rows, names)
    out = {}
    for i, row in enumerate(rows):
        if row is oracle:
            continue
        gaps = {m: compare(row, oracle, m) for m in names}
        out[i] = {"gaps": gaps, "distance": distance_to_oracle(
            {m: g["estimate"] for m, g in gaps.items() if g is not None}, scale)}
    return out


def marks(rows: list[Row], metrics: list[str], candidates: list[int],
          collapsed: Iterable[int] = ()) -> tuple[dict[str, dict[int, set[str]]], list[str]]:
    """The rows indistinguishable (by ``paired_bootstrap``) from the oracle ("oracle") and from the best of
    ``candidates`` by the metric's direction ("best"; skipped for metrics whose target is the oracle, whose best is
    the closest to it): metric -> row index -> marks; and notes naming what was not testable. On forgetting
    metrics the ``collapsed`` rows are neither the best nor marked as indistinguishable from it."""
    oracle = oracle_row(rows)
    collapsed = set(collapsed)
    out: dict[str, dict[int, set[str]]] = {}
    untestable: dict[str, list[str]] = {}
    for m in (m for m in metrics if compared(m)):
        out[m] = {}
        best = None
        if target(m) != "oracle":
            found = best_rows(rows, m, candidates, metrics, collapsed=collapsed)
            best = min(found) if found else None
        for i, row in enumerate(rows):
            for kind, ref in (("oracle", oracle), ("best", rows[best] if best is not None else None)):
                if ref is None or ref is row or not row.stats.get(m, (0, 0, 0))[2]:
                    continue
                if kind == "best" and (i not in candidates or (forgetting(m) and i in collapsed)):
                    continue
                verdict = indistinguishable(compare(row, ref, m))
                if verdict is None:
                    untestable.setdefault(m, []).append(f"{row.label} vs {ref.label}")
                elif verdict:
                    out[m].setdefault(i, set()).add(kind)
    notes = [f"{m}: not testable (one shared seed and no bootstrap replicates) for {', '.join(pairs)}"
             for m, pairs in untestable.items()]
    return out, notes


#: How a collapsed row's label is marked (``collapses``).
COLLAPSED = " (collapsed)"


def collapse_notes(rows: list[Row], found: dict[int, list[Collapse]]) -> list[str]:
    """One footnote per collapsed row: each floor it breaks, with the row's mean, the floor and the base mean."""
    base = base_row(rows)
    label = base.label if base is not None else "the base model"
    return [f"{rows[i].label}{COLLAPSED}: " + "; ".join(c.text(label) for c in found[i]) for i in sorted(found)]


def machine(device: Any, load: str | None = None) -> str | None:
    """A record's ``device`` as a reader wants it: the device, the CPU, the torch threads, and the machine's load
    (``load``, else the record's own ``load`` or ``loadavg`` when it holds one)."""
    if not isinstance(device, dict) or not device:
        return None
    kind = " ".join(str(x) for x in (device.get("type"), device.get("name")) if x) or "unknown device"
    parts = [f"CPU {device['cpu']}" if device.get("cpu") else None,
             f"{device['torch_threads']} torch threads" if device.get("torch_threads") is not None else None]
    load = load if load is not None else device_load(device)
    if load is not None:
        parts.append(f"load {load}")
    return f"{kind} ({', '.join(p for p in parts if p)})" if any(parts) else kind


def device_load(device: Any) -> Any:
    """The machine's load a record's ``device`` holds (``load`` or ``loadavg``), or None."""
    return device.get("load", device.get("loadavg")) if isinstance(device, dict) else None


def machines(devices: Iterable[Any]) -> list[str]:
    """Records' machines, each once, with the range of loads its records were measured under."""
    found: dict[str, tuple[dict[str, Any], list[float]]] = {}  # the machine without its load -> (device, loads)
    for device in devices:
        unloaded = {k: v for k, v in device.items() if k not in ("load", "loadavg")} if isinstance(device, dict) else None
        key = machine(unloaded)
        if key is None:
            continue
        loads = found.setdefault(key, (unloaded, []))[1]
        if isinstance(device_load(device), (int, float)):
            loads.append(float(device_load(device)))
    out = []
    for key, (device, loads) in sorted(found.items()):
        span = None if not loads else f"{min(loads):g}" if min(loads) == max(loads) else f"{min(loads):g}–{max(loads):g}"
        out.append(machine(device, span) or key)
    return out


def _oracle_training(info: Any) -> str | None:
    """Where an oracle's cost comes from: the training of its prepared weights (a record's ``notes.oracle``)."""
    if not isinstance(info, dict) or not info:
        return None
    where = info.get("location") or "the prepared artefact"
    how = ", ".join(p for p in (
        f"{info['steps']} steps of batch {info['batch_size']}" if info.get("steps") and info.get("batch_size")
        else None,
        f"on {info['device']}" if info.get("device") else "on an unrecorded device",
        f"torch {info['torch']}" if info.get("torch") else None,
        f"prepared {info['prepared_at']}" if info.get("prepared_at") else None,
        f"{float(info['seconds']):.1f} s" if isinstance(info.get("seconds"), (int, float)) else None) if p)
    return f"{where}: {how}"


def cost_notes(rows: list[Row], metrics: Iterable[str]) -> list[str]:
    """What the cost columns are: wall-clock (informational, with the machines and loads it was measured on),
    the machine-free cost that ranks (``cost_unit``: UNet passes), and where each oracle row's cost comes from."""
    metrics = list(metrics)
    notes = []
    wall = [m for m in metrics if informational(m)]
    if wall:
        recs = [rec for row in rows if role(row.method) != "oracle" for rec, _ in row.ok]
        where = machines(rec.get("device") for rec in recs)
        loaded = any(device_load(rec.get("device")) is not None for rec in recs)
        notes.append(f"{', '.join(wall)}: wall-clock, informational only and never ranked: it depends on the machine "
                     f"and on its load; measured on {'; '.join(where) or 'an unrecorded machine'}"
                     + ("" if loaded else "; the records hold no measure of the machine's load"))
    units: dict[str, list[str]] = {}
    for m in metrics:
        unit = cost_unit(m)
        if unit is not None and not informational(m):
            units.setdefault(unit, []).append(m)
    for unit, names in units.items():
        notes.append(f"cost rank: {unit} ({' + '.join(names)}), counted, independent of the machine; the fewest in "
                     "total is the cheapest")
    costs = [m for m in metrics if m in METRICS and METRICS.get(m).kind == "cost"]
    for row in rows:
        if role(row.method) != "oracle" or not costs:
            continue
        where = sorted({_oracle_training((rec.get("notes") or {}).get("oracle")) for rec, _ in row.ok} - {None})
        notes.append(f"{row.label}: its costs are not those of an unlearning run but of the training of its "
                     f"prepared weights, the same in each of its records ("
                     + ("; ".join(where) if where else "the records do not say where it ran") + ")")
    return notes


def interval_text(row: Row, metric: str) -> str:
    """mean [95% interval] over the row's runs (hierarchical bootstrap), the mean alone when nothing varies,
    or n/a."""
    est = row.interval(metric)
    if est is None:
        return "n/a"
    unit = "%" if percent(metric) else ""
    text = num(est["estimate"], metric) + unit
    if est["interval"] is not None:
        lo, hi = est["interval"]
        text += f" [{num(lo, metric)}, {num(hi, metric)}]"
    return text


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

#: How ``distance_to_oracle`` aggregates, as tables state it.
DISTANCE_NOTE = ("distance to oracle: mean over the compared metrics (costs excluded) of |row mean − oracle mean| "
                 "(paired by seed) / the std of that metric's row means across all rows; a convention for "
                 "ranking (docs/uncertainty.md), 0 = the oracle's numbers")


def comparison_table(records: list[dict[str, Any]], off_by_default: dict[str, str] | None = None,
                     fmt: str = "github", order: list[str] | None = None) -> tuple[str, list[str]]:
    """(table, footnotes) of one run: one row per method, mean ± std over seeds, ↑/↓ per metric, the
    columns in the run's metric ``order``."""
    ok = [r for r in records if r.get("status") == "ok"]
    metric_names = metric_columns({m for r in ok for m in r["metrics"]}, order)
    rows, notes = build_rows([(r, None) for r in records], metric_names)
    distances = oracle_distances(rows, metric_names)
    fallen = collapses(rows, metric_names)
    lines = []
    for i, row in enumerate(rows):
        for name in metric_names:
            for reason in sorted({r["metrics"][name].get("reason") for r, _ in row.ok if name in r["metrics"]} - {None}):
                notes.append(f"{row.method} {name}: {reason}")
        label = row.label + (COLLAPSED if i in fallen else "") + (f" ({len(row.failed)} failed)" if row.failed else "")
        notes += [f"{row.method} seed {r['cell']['seed']} failed: {r.get('error')}" for r in row.failed]
        distance = [] if not distances else [
            "—" if i not in distances or distances[i]["distance"] is None else f"{distances[i]['distance']:.2f}"]
        lines.append([label, str(len(row.ok))] + [cell(row, m) for m in metric_names] + distance)
    headers = ["method", "seeds"] + [heading(n, METRICS.get(n).higher_is_better) for n in metric_names]
    if distances:
        headers.append("distance to oracle ↓")
        notes.append(DISTANCE_NOTE)
    notes += collapse_notes(rows, fallen) + cost_notes(rows, metric_names)
    table = tabulate(lines, headers=headers, tablefmt=fmt, disable_numparse=True)
    if ok:
        for name in metric_names:
            m = ok[0]["metrics"][name]
            count = f", n = {m['n_samples']}" if m.get("n_samples") else ""
            notes.insert(0, f"{name}: {m['implementation']}{count}")
    skipped: dict[str, list[str]] = {}
    for name, why in (off_by_default or {}).items():
        if name not in metric_names:
            skipped.setdefault(why, []).append(name)
    notes += [f"{', '.join(names)}: not computed in this tier by default: {why}" for why, names in skipped.items()]
    return table, notes


def markdown_report(title: str, records: list[dict[str, Any]], context: list[str],
                    off_by_default: dict[str, str] | None = None, order: list[str] | None = None) -> str:
    table, notes = comparison_table(records, off_by_default, order=order)
    lines = [f"# {title}", "", *[f"- {c}" for c in context], "", table, "", "Notes:", ""]
    lines += [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"
