"""The leaderboard (``run_bench.py report --results DIR [--out DIR]``).

Reads every result record under a results folder, ignores failed cells (listing them), and writes
one leaderboard per (task, tier) — one row per method, the mean over seeds per metric with its 95%
interval and the direction each record declares, marks for rows statistically indistinguishable from
the oracle and from the best row, the difference of the mean to the reference rows (the model before
unlearning and the oracle, by their roles, with intervals) for the metrics that declare ``deltas``, the
aggregate distance to the oracle, the number of seeds, the ranking rule (what is bold: by direction, by distance
to the oracle for metrics whose target it is, costs by UNet passes, wall-clock never; rows that break a quality
metric's collapse floor marked and kept from the best on the forgetting metrics) and a header saying how every
number was computed — as Markdown, LaTeX (booktabs), CSV and a self-contained HTML page with the figures of
``unlearnbench.figures`` embedded. The statistics are those of ``unlearnbench.table`` and
``unlearnbench.uncertainty`` (``docs/uncertainty.md``).

Every output is a pure function of the records (no timestamps, no absolute paths, sorted orders,
reproducible PNGs): reporting twice gives byte-identical files.
"""
from __future__ import annotations

import base64
import html
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from tabulate import tabulate

from unlearnbench import figures
from unlearnbench.io import atomic_write_text
from unlearnbench.registry import METHODS, METRICS
from unlearnbench.results import BadRecordError, load_records, record_name
from unlearnbench.table import (
    COLLAPSED, DISTANCE_NOTE, TOWARDS_ORACLE, Collapse, Row, _flatten, base_row, best_rows, build_rows,
    collapse_floors, collapse_notes, collapses, compare, cost_notes, cost_unit, forgetting, heading, informational,
    interval_text, marks, method_rank, metric_columns, num, oracle_distances, percent, references, role, target,
)
from unlearnbench.uncertainty import LEADERBOARD_REPLICATES

FIGURE_KINDS = ("tradeoff", "samples", "forget_curve")
TITLE = "unlearnbench leaderboard"


#: The marks of rows statistically indistinguishable from the oracle / from the best row.
MARKS = {"oracle": "†", "best": "‡"}


def _reference_names() -> tuple[str, str]:
    """The method names of the model before unlearning and of the oracle (by role), or words for them."""
    names = METHODS.names()
    before = next((m for m in names if METHODS.get(m).role == "reference_before"), "the model before unlearning")
    oracle = next((m for m in names if METHODS.get(m).role == "oracle"), "the oracle")
    return before, oracle


def legend() -> str:
    """The leaderboard's legend, naming the reference rows by their roles (before unlearning, the oracle)."""
    before, oracle = _reference_names()
    return ("mean over seeds [95% interval: hierarchical bootstrap over seeds and each cell's bootstrap replicates]; "
            "forget_rate in %; ↑/↓: higher/lower is better, as declared in the records;"
            f"{TOWARDS_ORACLE}: the right value is the {oracle} oracle's (NLL, membership ranks: ranked by the "
            f"distance to it); Δ m vs {before} / vs {oracle}: the row's mean minus the {before} row's / the {oracle} oracle's "
            "mean, paired by seed, with its 95% interval (forget rate in percentage points, pp); bold: the best among "
            f"the unlearning methods ({before} and {oracle} excluded) by the ranking rule stated below; "
            f"{MARKS['oracle']}: statistically indistinguishable from the {oracle} oracle; {MARKS['best']}: "
            f"indistinguishable from the bold row;{COLLAPSED}: the row breaks a collapse floor (below) and takes no "
            "best on the forgetting metrics; distance to oracle: see the test note.")


#: The ranking rule of the metrics whose target is the oracle, as every leaderboard states it.
ORACLE_RULE = ("ranked by the distance to the {oracle} oracle: the bold row is the one whose mean is closest to the "
               "oracle's (smallest |row mean − oracle mean|), not the largest or smallest value")


def ranking_rules(group: "Group") -> str:
    """The ranking rule under every table: direction, distance to the oracle, costs by their counted unit,
    wall-clock never, and the collapse floors with the metrics a collapsed row takes no best on."""
    before, oracle = _reference_names()
    ms = group.metrics
    towards = [m for m in ms if target(m) == "oracle"]
    units: dict[str, list[str]] = {}
    for m in ms:
        if cost_unit(m) is not None and not informational(m):
            units.setdefault(cost_unit(m), []).append(m)
    wall = [m for m in ms if informational(m)]
    listed = lambda names: f" ({', '.join(names)})" if names else ""  # noqa: E731
    parts = [f"Ranking (bold), among the unlearning methods: by the metric's direction (↑/↓); metrics marked"
             f"{TOWARDS_ORACLE}{listed(towards)} are " + ORACLE_RULE.format(oracle=oracle)
             + f", and carry no {MARKS['best']} ({MARKS['oracle']} marks the rows indistinguishable from the oracle)"]
    parts += [f"costs are ranked by {unit} ({' + '.join(names)}): the fewest in total is bold in each of those columns"
              for unit, names in units.items()]
    if wall:
        parts.append(f"wall-clock{listed(wall)} is informational and never ranked")
    text = "; ".join(parts) + "."
    base = base_row(group.rows)
    floors = collapse_floors(ms)
    forgets = [m for m in ms if forgetting(m)]
    if not floors:
        return text + " No collapse floor is declared on this table's metrics."
    if base is None:
        return text + f" Collapse floors ({', '.join(floors)}) are not applied: no {before} row."
    shown = []
    for m, ratio in floors.items():
        b = base.mean(m)
        if base.stats[m][2] and np.isfinite(b) and b > 0:
            hib = METRICS.get(m).higher_is_better
            shown.append(f"{m} {'<' if hib else '>'} {ratio:g} × {base.label}'s {num(b, m)} = {num(ratio * b, m)}")
    return text + (f" Collapse: a row whose mean breaks a floor declared on a quality metric relative to the "
                   f"{base.label} row ({'; '.join(shown) or 'none applies: no positive base mean'}) is "
                   f"marked{COLLAPSED} and takes no bold and no {MARKS['best']} on the forgetting "
                   f"metrics{listed(forgets)}; it keeps its place on the quality metrics and costs.")


def test_note() -> str:
    """The statement of the test behind the marks and intervals, shown under every table."""
    return ("Test: a paired hierarchical bootstrap (Efron; docs/uncertainty.md). Each of "
            f"{LEADERBOARD_REPLICATES} replicates draws the seeds two rows share, with replacement, and for each drawn "
            "seed one stored bootstrap replicate of each row's cell (its value when it stores none); the 95% "
            "percentile interval of the mean difference decides: two rows are indistinguishable when it contains 0. "
            "With one shared seed and no replicates nothing varies: such comparisons are listed as not testable, "
            "never marked. Metrics whose target is the oracle are ranked by the distance to it and get no "
            f"{MARKS['best']} mark; costs are not compared. " + DISTANCE_NOTE + ".")


# --------------------------------------------------------------------------------------------- data


@dataclass
class Group:
    task: str
    tier: str
    rows: list[Row]
    metrics: list[str]
    directions: dict[str, bool | None]
    deltas: list[tuple[str, str]]  # (metric, reference method)
    header: list[tuple[str, str]]  # (field, text)
    metric_info: list[str]
    failed: list[dict[str, Any]]
    notes: list[str]
    figures: dict[str, Path | None] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    #: metric -> row index -> {"oracle", "best"}: the rows indistinguishable from them (``table.marks``)
    marks: dict[str, dict[int, set[str]]] = field(default_factory=dict)
    #: row index -> gaps to the oracle and their aggregate (``table.oracle_distances``)
    distances: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: row index -> the collapse floors its mean breaks (``table.collapses``)
    collapsed: dict[int, list[Collapse]] = field(default_factory=dict)

    def footnotes(self) -> list[str]:
        """What goes under the table after the ranking rule: one line per collapsed row, then the costs."""
        return collapse_notes(self.rows, self.collapsed) + cost_notes(self.rows, self.metrics)

    @property
    def slug(self) -> str:
        return _slug(f"{self.task}__{self.tier}")

    @property
    def title(self) -> str:
        return f"{self.task} / tier {self.tier}"


def _base_line(identity: Any, info: dict[str, Any]) -> str:
    """The base model as a reader wants it: where it came from, the sha256 of its weights and of all its files."""
    weights = f"weights sha256 {str(info.get('sha256'))[:12]}"
    if not isinstance(identity, dict):  # records of schema-1 suites before content identities
        return f"{identity} ({weights})"
    where = identity.get("source") or identity.get("hub_id") or identity.get("name") or "given"
    content = identity.get("sha256") or identity.get("revision")
    return f"{where} ({weights}; content {str(content)[:12]})"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def _load(results: Path) -> tuple[list[tuple[dict[str, Any], Path | None]], list[BadRecordError]]:
    """Every good record under ``results`` (``load_records``), each with the file it came from, and
    the bad record files (each also listed on stderr); copies of one cell (the same ``config_hash``
    in several places) count once."""
    by_name: dict[str, list[Path]] = {}
    for path in sorted(results.rglob("*.json")):
        by_name.setdefault(path.name, []).append(path)
    bad: list[BadRecordError] = []
    records = load_records(results, bad)
    for err in bad:
        print(f"report: skipped bad record {err.path}: {err.reason}", file=sys.stderr)
    out, seen = [], set()
    for rec in records:
        key = rec.get("config_hash") or json.dumps([rec["cell"], rec.get("created_at")], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        paths = by_name.get(record_name(rec["cell"], rec["config_hash"]), []) if rec.get("config_hash") else []
        out.append((rec, paths[0] if paths else None))
    return out, bad


def _named_for(err: BadRecordError, group: Group) -> bool:
    return err.path.name.startswith(f"{group.task}__{group.tier}__")


def _note_skipped(groups: list[Group], bad: list[BadRecordError], results: Path) -> None:
    """Add to each group a note naming the bad record files that may hold its cells: those named for
    its (task, tier), and every one named for no group shown (so each bad file is in some note)."""
    homeless = [err for err in bad if not any(_named_for(err, g) for g in groups)]
    for group in groups:
        mine = [err for err in bad if _named_for(err, group)] + homeless
        if mine:
            listed = "; ".join(f"{err.path.relative_to(results).as_posix()}: {err.reason}" for err in mine)
            group.notes.append(f"{len(mine)} record file(s) skipped as unusable (their cells are missing "
                               f"from this table): {listed}")


def _distinct(values: Iterable[Any]) -> str:
    return ", ".join(sorted({str(v) for v in values if v is not None and v != ""})) or "n/a"


def _build_group(task: str, tier: str, items: list[tuple[dict[str, Any], Path | None]]) -> Group:
    ok = [(r, p) for r, p in items if r.get("status") == "ok"]
    failed = sorted((r for r, _ in items if r.get("status") != "ok"),
                    key=lambda r: (method_rank(r["cell"]["method"]), r["cell"]["seed"]))
    # metrics in the registry's order, with the direction the records declare; rows by the one table builder
    metrics = metric_columns({m for rec, _ in ok for m in rec.get("metrics", {})})
    rows, notes = build_rows(ok + [(r, None) for r in failed], metrics, failed_rows=False)
    directions: dict[str, bool | None] = {}
    metric_info: list[str] = []
    for m in metrics:
        entries = [rec["metrics"][m] for rec, _ in ok if m in rec.get("metrics", {})]
        declared = {e["higher_is_better"] for e in entries if e.get("higher_is_better") is not None}
        directions[m] = declared.pop() if len(declared) == 1 else None
        if len(declared) > 1 or not entries or all(e.get("higher_is_better") is None for e in entries):
            notes.append(f"{m}: the records disagree on (or do not declare) its direction; no ↑/↓ shown")
        n = _distinct(e.get("n_samples") for e in entries)
        metric_info.append(f"{heading(m, directions[m])} v{_distinct(e.get('version') for e in entries)}"
                           f"{'' if n == 'n/a' else f', n = {n}'}: {_distinct(e.get('implementation') for e in entries)}")
        if len({str(e.get('version')) for e in entries}) > 1:
            notes.append(f"{m}: records were computed with different metric versions; rows may not be comparable")
        unavailable: dict[str, list[str]] = {}
        for row in rows:
            for rec, _ in row.ok:
                e = rec["metrics"].get(m)
                if e is not None and e.get("value") is None:
                    unavailable.setdefault(str(e.get("reason") or "no value"), []).append(
                        f"{row.label} seed {rec['cell']['seed']}")
        for reason in sorted(unavailable):
            notes.append(f"{m} unavailable for {', '.join(unavailable[reason])}: {reason}")

    deltas: list[tuple[str, str]] = []
    all_refs = references(METHODS.names())
    for ref in all_refs:
        refs = [r for r in rows if r.method == ref]
        if not refs:
            notes.append(f"no {ref} row: the Δ vs {ref} columns are left out")
            continue
        if len(refs) > 1:
            notes.append(f"several {ref} rows: Δ vs {ref} compares with {refs[0].label}")
    present = [ref for ref in all_refs if any(r.method == ref for r in rows)]
    for m in (m for m in metrics if m in METRICS and METRICS.get(m).deltas):  # as each metric declares
        if any(r.stats[m][2] for r in rows):
            deltas += [(m, ref) for ref in present]

    header = _header(task, ok, rows)
    unlearning = [i for i, r in enumerate(rows) if role(r.method) == "unlearning"]
    fallen = collapses(rows, metrics)
    found, untestable = marks(rows, metrics, unlearning, collapsed=fallen)
    return Group(task, tier, rows, metrics, directions, deltas, header, metric_info, failed, notes + untestable,
                 marks=found, distances=oracle_distances(rows, metrics), collapsed=fallen)


def _header(task: str, ok: list[tuple[dict[str, Any], Path | None]], rows: list[Row]) -> list[tuple[str, str]]:
    recs = [r for r, _ in ok]
    cfgs = [r.get("config") or {} for r in recs]
    src = [r.get("data_source") or {} for r in recs]
    data = _distinct(f"{s.get('kind')} ({s.get('retain_size')} retain, {s.get('forget_copies')} forget copies)"
                     for s in src)
    sampler = _distinct(f"{c['sampler'].get('kind')}, {c['sampler'].get('steps')} steps, "
                        f"{c['sampler'].get('num_samples')} samples" for c in cfgs if c.get("sampler"))
    base = _distinct(_base_line(c.get("base_model"), r.get("base_model") or {}) for c, r in zip(cfgs, recs))
    methods = []
    for row in rows:
        cfg = row.ok[0][0].get("config") or {}
        parts = [", ".join(f"{k}={v}" for k, v in _flatten(cfg.get("hparams") or {}).items() if k)]
        loop = cfg.get("loop")
        if loop:
            parts.append(f"lr {loop.get('lr')}, {loop.get('steps')} steps, batch {loop.get('batch_size')}")
        detail = "; ".join(p for p in parts if p)
        version = _distinct(r.get("config", {}).get("method_version") for r, _ in row.ok)
        methods.append(f"{row.label} v{version}" + (f" ({detail})" if detail else ""))
    software = sorted({k for r in recs for k in (r.get("software") or {}) if k != "unlearnbench"})
    return [
        ("task", f"{task} v{_distinct(c.get('task_version') for c in cfgs)} "
                 f"(protocol {_distinct(c.get('protocol') for c in cfgs)})"),
        ("data source", data),
        ("sampler", sampler),
        ("base model", base),
        ("methods", "; ".join(methods) or "n/a"),
        ("suite", f"unlearnbench {_distinct((r.get('software') or {}).get('unlearnbench') for r in recs)}"),
        ("git commits", _distinct(r.get("git_commit") for r in recs)),
        ("software", "; ".join(f"{k} {_distinct((r.get('software') or {}).get(k) for r in recs)}" for k in software)
         or "n/a"),
        ("devices", _distinct(" ".join(str(x) for x in ((r.get("device") or {}).get("type"),
                                                       (r.get("device") or {}).get("name")) if x) for r in recs)),
        ("records", f"{len(recs)} ok"),
    ]


# ------------------------------------------------------------------------------------------ numbers


def _delta(row: Row, ref: Row | None, metric: str) -> float:
    return row.mean(metric) - ref.mean(metric) if ref is not None else float("nan")


def _deltacell(row: Row, ref: Row | None, metric: str) -> str:
    """The difference to a reference row, paired by seed, with its 95% interval (the unpaired difference of
    the means when the rows share no seed)."""
    if ref is row:
        return "—"
    unit = " pp" if percent(metric) else ""
    diff = compare(row, ref, metric) if ref is not None else None
    if diff is None:
        d = _delta(row, ref, metric)
        return "n/a" if np.isnan(d) else num(d, metric, signed=True) + unit
    text = num(diff["estimate"], metric, signed=True) + unit
    if diff["interval"] is not None:
        lo, hi = diff["interval"]
        text += f" [{num(lo, metric, signed=True)}, {num(hi, metric, signed=True)}]"
    return text


def _distancecell(group: Group, i: int) -> str:
    entry = group.distances.get(i)
    if entry is None:
        return "—"
    return "n/a" if entry["distance"] is None else f"{entry['distance']:.2f}"


def _ref(group: Group, method: str) -> Row | None:
    return next((r for r in group.rows if r.method == method), None)


def _best(group: Group) -> dict[str, set[int]]:
    """metric -> indices of the rows holding the best displayed value among unlearning methods, by the ranking rule
    (``table.best_rows``: direction, distance to the oracle, counted cost; wall-clock never; collapsed rows take no
    best on the forgetting metrics)."""
    out: dict[str, set[int]] = {}
    shown = lambda row, m: float(num(row.mean(m), m))  # noqa: E731  (ties as the reader sees them)
    for m in group.metrics:
        hib = group.directions.get(m)
        cands = [i for i, r in enumerate(group.rows) if role(r.method) == "unlearning" and r.stats[m][2]]
        if len(cands) < 2 or (hib is None and target(m) != "oracle" and cost_unit(m) is None):
            continue
        best = best_rows(group.rows, m, cands, group.metrics, higher_is_better=hib, collapsed=group.collapsed,
                         value=shown)
        if best:
            out[m] = best
    return out


def _columns(group: Group) -> list[str]:
    return (["method", "seeds"] + [heading(m, group.directions[m]) for m in group.metrics]
            + [f"Δ {m} vs {ref}" for m, ref in group.deltas] + (["distance to oracle ↓"] if group.distances else []))


def _display(group: Group) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(text cells, bold mask) with the columns of ``_columns``."""
    best = _best(group)
    refs = {ref: _ref(group, ref) for ref in references(METHODS.names())}
    cells, bold = [], []
    for i, row in enumerate(group.rows):
        seeds = str(len(row.ok)) + (f" (+{len(row.failed)} failed)" if row.failed else "")
        distance = [_distancecell(group, i)] if group.distances else []
        label = row.label + (COLLAPSED if i in group.collapsed else "")
        cells.append([label, seeds] + [_marked(group, row, i, m) for m in group.metrics]
                     + [_deltacell(row, refs[ref], m) for m, ref in group.deltas] + distance)
        bold.append([False, False] + [i in best.get(m, set()) for m in group.metrics]
                    + [False] * (len(group.deltas) + len(distance)))
    cols = _columns(group)
    return pd.DataFrame(cells, columns=range(len(cols))), pd.DataFrame(bold, columns=range(len(cols)))


def _marked(group: Group, row: Row, i: int, metric: str) -> str:
    """The row's mean [interval] with its marks (``MARKS``)."""
    found = group.marks.get(metric, {}).get(i, set())
    return interval_text(row, metric) + "".join(MARKS[k] for k in ("oracle", "best") if k in found)


def _numeric(group: Group) -> pd.DataFrame:
    """The machine-readable leaderboard: numbers in the records' units (forget_rate as a fraction)."""
    refs = {ref: _ref(group, ref) for ref in references(METHODS.names())}
    out = []
    for row in group.rows:
        cfg = row.ok[0][0].get("config") or {}
        rec: dict[str, Any] = {"task": group.task, "task_version": cfg.get("task_version"), "tier": group.tier,
                               "method": row.method, "row": row.label, "method_version": cfg.get("method_version"),
                               "seeds": len(row.ok), "failed_seeds": len(row.failed)}
        i = group.rows.index(row)
        rec["collapsed"] = i in group.collapsed
        rec["collapsed_by"] = ";".join(c.metric for c in group.collapsed.get(i, []))
        gaps = group.distances.get(i, {}).get("gaps", {})
        for m in group.metrics:
            mean, std, n = row.stats[m]
            rec[f"{m}_mean"], rec[f"{m}_std"], rec[f"{m}_n"] = mean, std, n
            est = row.interval(m)
            rec[f"{m}_lo"], rec[f"{m}_hi"] = est["interval"] if est and est["interval"] else (np.nan, np.nan)
            rec[f"{m}_higher_is_better"] = group.directions[m]
            if m in group.marks:
                found = group.marks[m].get(i, set())
                rec[f"{m}_indistinguishable_from_oracle"] = "oracle" in found
                rec[f"{m}_indistinguishable_from_best"] = "best" in found
            gap = gaps.get(m)
            if gap is not None:
                rec[f"{m}_gap_oracle"] = gap["estimate"]
                rec[f"{m}_gap_oracle_lo"], rec[f"{m}_gap_oracle_hi"] = gap["interval"] or (np.nan, np.nan)
        for m, ref in group.deltas:
            rec[f"{m}_delta_{ref}"] = _delta(row, refs[ref], m)
        if group.distances:
            own = 0.0 if role(row.method) == "oracle" else None
            rec["distance_to_oracle"] = group.distances.get(i, {}).get("distance", own)
        out.append(rec)
    frame = pd.DataFrame(out)
    for col in frame.columns:
        if col in ("task_version", "method_version", "seeds", "failed_seeds") or col.endswith("_n"):
            frame[col] = frame[col].astype("Int64")
        elif col == "collapsed" or col.endswith(("_higher_is_better", "_indistinguishable_from_oracle",
                                                 "_indistinguishable_from_best")):
            frame[col] = frame[col].astype("boolean")
    return frame


# ------------------------------------------------------------------------------------------ renderers


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(groups: list[Group], out: Path) -> str:
    lines = [f"# {TITLE}", ""]
    for g in groups:
        cells, bold = _display(g)
        body = [[_md_escape(f"**{c}**" if b else c) for c, b in zip(row, brow)]
                for row, brow in zip(cells.values.tolist(), bold.values.tolist())]
        lines += [f"## {g.title}", ""]
        lines += [f"- {k}: {v}" for k, v in g.header]
        lines += ["- metrics:", *[f"  - {m}" for m in g.metric_info], ""]
        if body:
            lines += [tabulate(body, headers=[_md_escape(c) for c in _columns(g)], tablefmt="github",
                               disable_numparse=True), "", legend(), "", test_note(), "", ranking_rules(g), ""]
            lines += [f"- {n}" for n in g.footnotes()] + ([""] if g.footnotes() else [])
        else:
            lines += ["No successful cells.", ""]
        shown = [(k, p) for k, p in g.figures.items() if p is not None]
        if shown or g.skipped:
            lines += ["### Figures", ""]
            lines += [f"![{k}]({p.relative_to(out).as_posix()})" for k, p in shown]
            lines += [""] + [f"- not drawn: {s}" for s in g.skipped] + ([""] if g.skipped else [])
        lines += ["### Failed cells (ignored)", ""]
        lines += [f"- {_failed(r)}" for r in g.failed] or ["- none"]
        lines += [""]
        if g.notes:
            lines += ["### Notes", "", *[f"- {n}" for n in dict.fromkeys(g.notes)], ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _failed(rec: dict[str, Any]) -> str:
    c = rec["cell"]
    error = " ".join(str(rec.get("error") or "no error recorded").split())
    return f"{c['method']} seed {c['seed']}: {error}"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_UNICODE = {"±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "Δ": r"$\Delta$", "—": "--",
                  "−": "$-$", "†": r"$^\dagger$", "‡": r"$^\ddagger$", "≈": r"$\approx$", "×": r"$\times$",
                  "<": "$<$", ">": "$>$", "|": r"$|$", "–": "--"}


def _tex(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    return "".join(_LATEX_UNICODE.get(ch, ch) for ch in out)


def render_latex(groups: list[Group]) -> str:
    lines = [f"% {TITLE} (generated by `run_bench.py report`; needs \\usepackage{{booktabs}})", ""]
    for g in groups:
        cells, bold = _display(g)
        cols = _columns(g)
        lines += [f"% {g.title}"] + [f"% {k}: {v}" for k, v in g.header]
        lines += ["% metrics:"] + [f"%   {m}" for m in g.metric_info]
        lines += [f"% failed cells (ignored): {_failed(r)}" for r in g.failed]
        lines += [f"% {test_note()}"]
        lines += [r"\begin{table}[htbp]", r"\centering", r"\small",
                  rf"\caption{{{_tex(f'{g.task}, tier {g.tier}: ' + legend())}}}",
                  rf"\label{{tab:unlearnbench-{_slug(g.task + '-' + g.tier).replace('_', '-')}}}",
                  r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}", r"\toprule",
                  " & ".join(_tex(c) for c in cols) + r" \\", r"\midrule"]
        for row, brow in zip(cells.values.tolist(), bold.values.tolist()):
            lines.append(" & ".join(rf"\textbf{{{_tex(c)}}}" if b else _tex(c) for c, b in zip(row, brow)) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip", r"{\footnotesize\raggedright"]
        lines += [_tex(t) + r"\par" for t in [ranking_rules(g), *g.footnotes()]]
        lines += ["}", r"\end{table}", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def render_csv(groups: list[Group]) -> str:
    frames = [_numeric(g) for g in groups if g.rows]
    if not frames:
        return "task,tier,method,row,seeds\n"
    frame = pd.concat(frames, ignore_index=True, sort=False)
    return frame.to_csv(index=False, lineterminator="\n")


_CSS = """
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; margin: 24px; color: #111;
       background: #fff; line-height: 1.4; }
h1 { font-size: 24px; margin: 0 0 12px; }
h2 { font-size: 19px; margin: 28px 0 8px; border-bottom: 2px solid #333; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; font-size: 13px; margin: 0 0 12px; }
dl.meta dt { font-weight: bold; color: #333; }
dl.meta dd { margin: 0; }
.scroll { overflow-x: auto; }
table.leaderboard { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums;
                    border-top: 2px solid #111; border-bottom: 2px solid #111; }
table.leaderboard th, table.leaderboard td { padding: 4px 10px; text-align: right; white-space: nowrap; }
table.leaderboard th:first-child, table.leaderboard td:first-child { text-align: left; }
table.leaderboard thead th { border-bottom: 1px solid #111; background: #f2f2f2; white-space: normal;
                             min-width: 4.5em; max-width: 9em; vertical-align: bottom; }
table.leaderboard tbody tr:nth-child(even) { background: #fafafa; }
table.leaderboard td.best { font-weight: bold; }
table.leaderboard tr.reference td { color: #333; font-style: italic; }
table.leaderboard tr.collapsed th, table.leaderboard tr.collapsed td { color: #8a1c00; }
p.legend, ul.metrics, ul.notes { font-size: 12px; color: #333; }
figure { margin: 12px 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 12px; color: #444; }
p.skipped { font-size: 12px; color: #8a4b00; }
"""

_SCRIPT = """
(function () {
  function check() {
    var imgs = Array.prototype.slice.call(document.images);
    var ok = imgs.every(function (im) { return im.complete && im.naturalWidth > 0; });
    var body = document.body;
    body.dataset.images = String(imgs.length);
    body.dataset.imagesOk = ok ? "true" : "false";
    var table = document.getElementById("leaderboard");
    if (table) {
      var r = table.getBoundingClientRect();
      body.dataset.tableRect = [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]
        .map(Math.round).join(",");
    }
    console.log("unlearnbench-report: " + imgs.length + " images, all decoded: " + ok);
  }
  if (document.readyState === "complete") { check(); } else { window.addEventListener("load", check); }
})();
"""

_CAPTIONS = {
    "tradeoff": "Forget rate against sample quality: seed means, error bars = 95% interval of the mean "
                "(hierarchical bootstrap over seeds and each cell's replicates); dashed line: the Pareto front "
                "(non-dominated rows by their means, each metric in its declared direction).",
    "samples": "Generated samples of each row's first seed: its first 64 samples (random: no selection) and, beside "
               "them in red, the samples detected as copies of the forget image among all its samples (the forget "
               "rate's copies, each framed, with their count; at most 64 shown).",
    "forget_curve": "Forget rate against unlearning step (mean over seeds, band = population std over seeds); "
                    "dashed: {references}.",
}


def render_html(groups: list[Group]) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{e(TITLE)}</title>",
             f"<style>{_CSS}</style>", "</head>", "<body>", f"<h1>{e(TITLE)}</h1>"]
    n_tables = 0
    for g in groups:
        cells, bold = _display(g)
        parts.append(f'<section class="group" data-task="{e(g.task)}" data-tier="{e(g.tier)}">')
        parts.append(f"<h2>{e(g.title)}</h2>")
        parts.append('<dl class="meta">' + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in g.header) + "</dl>")
        if g.rows:
            n_tables += 1
            table_id = "leaderboard" if n_tables == 1 else f"leaderboard-{n_tables}"
            parts.append(f'<div class="scroll"><table id="{table_id}" class="leaderboard">')
            parts.append("<thead><tr>" + "".join(f'<th scope="col">{e(c)}</th>' for c in _columns(g))
                         + "</tr></thead><tbody>")
            for i, (row, crow, brow) in enumerate(zip(g.rows, cells.values.tolist(), bold.values.tolist())):
                names = (["reference"] if role(row.method) != "unlearning" else []) + (
                    ["collapsed"] if i in g.collapsed else [])
                cls = f' class="{" ".join(names)}"' if names else ""
                if i in g.collapsed:
                    cls += f' data-collapsed="{e(" ".join(c.metric for c in g.collapsed[i]))}"'
                tds = [f'<th scope="row">{e(crow[0])}</th>'] + [
                    ('<td class="best">' if b else "<td>") + f"{e(c)}</td>" for c, b in zip(crow[1:], brow[1:])]
                parts.append(f'<tr{cls} data-method="{e(row.method)}">' + "".join(tds) + "</tr>")
            parts.append("</tbody></table></div>")
            parts.append(f'<p class="legend">{e(legend())}</p>')
            parts.append(f'<p class="legend test">{e(test_note())}</p>')
            parts.append(f'<p class="legend rules">{e(ranking_rules(g))}</p>')
            if g.footnotes():
                parts.append('<ul class="notes footnotes">' + "".join(f"<li>{e(n)}</li>" for n in g.footnotes())
                             + "</ul>")
        else:
            parts.append("<p>No successful cells.</p>")
        parts.append('<h3>Metrics</h3><ul class="metrics">' + "".join(f"<li>{e(m)}</li>" for m in g.metric_info)
                     + "</ul>")
        parts.append("<h3>Figures</h3>")
        shown_refs = " / ".join(references(METHODS.names()))
        for kind, path in g.figures.items():
            if path is None:
                continue
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{e(kind)}: {e(g.title)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{e(_CAPTIONS[kind].format(references=shown_refs))}</figcaption></figure>")
        parts += [f'<p class="skipped">Not drawn: {e(s)}</p>' for s in g.skipped]
        parts.append('<h3>Failed cells (ignored)</h3><ul class="notes">'
                     + ("".join(f"<li>{e(_failed(r))}</li>" for r in g.failed) or "<li>none</li>") + "</ul>")
        if g.notes:
            parts.append('<h3>Notes</h3><ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in dict.fromkeys(g.notes))
                         + "</ul>")
        parts.append("</section>")
    parts += [f"<script>{_SCRIPT}</script>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------ figures


def _bar(row: Row, metric: str) -> tuple[float, float, float] | None:
    """(mean, lower, upper) of the trade-off plot: the row's mean and its 95% interval (the mean alone when
    nothing varies)."""
    est = row.interval(metric) if row.stats[metric][2] else None
    if est is None:
        return None
    lo, hi = est["interval"] or (est["estimate"], est["estimate"])
    return est["estimate"], lo, hi


def _copies(rec: dict[str, Any], path: Path | None) -> figures.Copies:
    """A record's detected copies of the forget image among all its samples: the record's ``sample_copies``
    (``grid``: the PNG of the copies, relative to the results folder; ``count``; ``n_samples``) when it has one, else
    the PNG saved next to its sample grid (``samples/<record>-copies.png``) with the forget rate's count
    (``metrics.forget_rate.extra.copies`` of ``n_samples``)."""
    root = path.parent.parent if path is not None else None
    saved = rec.get("sample_copies")
    if isinstance(saved, dict):
        grid = saved.get("grid")
        return figures.Copies(root / grid if grid and root is not None else None, saved.get("count"),
                              saved.get("n_samples"))
    fr = (rec.get("metrics") or {}).get("forget_rate") or {}
    count = (fr.get("extra") or {}).get("copies")
    grid = rec.get("sample_grid")
    png = None
    if grid and root is not None:
        named = root / grid
        png = named.with_name(named.stem + figures.COPIES_SUFFIX + named.suffix)
    return figures.Copies(png if png is not None and png.is_file() else None,
                          int(count) if isinstance(count, (int, float)) else None, fr.get("n_samples"))


def _draw(group: Group, fig_dir: Path) -> None:
    stats = {r.label: {m: _bar(r, m) for m in group.metrics} for r in group.rows}
    base = fig_dir / group.slug
    skipped: list[str] = []
    group.figures["tradeoff"] = figures.tradeoff_figure(
        stats, group.directions, Path(f"{base}__tradeoff.png"), title=group.title, skipped=skipped,
        references=[r.label for r in group.rows if role(r.method) != "unlearning"])
    grids: dict[str, Path | None] = {}
    copies: dict[str, figures.Copies] = {}
    for row in group.rows:
        rec, path = row.ok[0]
        grid = rec.get("sample_grid")
        label = f"{row.label} (seed {rec['cell']['seed']})"
        grids[label] = path.parent.parent / grid if grid and path else None
        copies[label] = _copies(rec, path)
    group.figures["samples"] = figures.samples_figure(grids, Path(f"{base}__samples.png"), title=group.title,
                                                      skipped=skipped, copies=copies)
    curves = {r.label: [list((rec.get("training") or {}).get("evaluations") or []) for rec, _ in r.ok]
              for r in group.rows}
    refs = {ref: _ref(group, ref) for ref in references(METHODS.names())}
    levels = {ref: row.mean("forget_rate") for ref, row in refs.items()
              if row is not None and "forget_rate" in row.stats and row.stats["forget_rate"][2]}
    group.figures["forget_curve"] = figures.forget_curve_figure(
        curves, Path(f"{base}__forget_curve.png"), references=levels, title=group.title, skipped=skipped,
        higher_is_better=group.directions.get("forget_rate"))
    group.skipped = skipped


# ------------------------------------------------------------------------------------------ entry


def _groups(results: Path) -> tuple[list[Group], list[BadRecordError]]:
    """The leaderboards of every (task, tier) with records under ``results``, and the bad record files."""
    items, bad = _load(results)
    keys = sorted({(r["cell"]["task"], r["cell"]["tier"]) for r, _ in items})
    groups = [_build_group(task, tier, [(r, p) for r, p in items
                                        if (r["cell"]["task"], r["cell"]["tier"]) == (task, tier)])
              for task, tier in keys]
    _note_skipped(groups, bad, results)
    return groups, bad


def build_groups(results: Path) -> list[Group]:
    """The leaderboards of every (task, tier) with records under ``results``."""
    return _groups(Path(results))[0]


def report_main(results: Path, out: Path | None = None) -> list[Path]:
    """Write ``leaderboard.{md,tex,csv,html}`` and ``figures/*.png`` for the records under
    ``results`` to ``out`` (default ``results/leaderboard``); returns the written paths."""
    results = Path(results)
    if not results.is_dir():
        raise FileNotFoundError(f"results folder {results} does not exist")
    groups, bad = _groups(results)
    if not groups:
        skipped = f" ({len(bad)} bad record file(s) skipped, listed above)" if bad else ""
        raise FileNotFoundError(f"no result records (schema version 1) under {results}{skipped}")
    out = Path(out) if out is not None else results / "leaderboard"
    fig_dir = out / "figures"
    for g in groups:
        if g.rows:
            _draw(g, fig_dir)
    drawn = {p for g in groups for p in g.figures.values() if p is not None}
    if fig_dir.is_dir():  # figures of an earlier report whose (task, tier) or kind is gone
        for stale in fig_dir.glob("*.png"):
            if stale not in drawn and stale.stem.rsplit("__", 1)[-1] in FIGURE_KINDS:
                stale.unlink()
    written = []
    for name, text in (("leaderboard.md", render_markdown(groups, out)), ("leaderboard.tex", render_latex(groups)),
                       ("leaderboard.csv", render_csv(groups)), ("leaderboard.html", render_html(groups))):
        atomic_write_text(out / name, text)
        written.append(out / name)
    return written + sorted(drawn)
