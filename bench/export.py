"""Results others can read: records exported as Every Eval Ever JSON (``eee``) and as Hugging Face
``.eval_results`` YAML (``hf``). ``run_bench.py export --results DIR --format eee|hf --out DIR`` calls
:func:`export_main`; docs/sharing.md says which spec each format follows and what goes where.

One *evaluation* is what a leaderboard calls one model's result: the ok records of one (task, tier,
method, forget set) in one configuration, averaged over their seeds. Failed cells are never exported
as scores; they are listed on stderr. Output is a pure function of the records (no clock, no random
ids), so exporting the same records twice gives the same files.
"""
from __future__ import annotations

import calendar
import hashlib
import json
import math
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from unlearnbench.io import atomic_write_json, atomic_write_text
from unlearnbench.registry import METRICS
from unlearnbench.results import BadRecordError, config_hash, load_records
from unlearnbench.table import RUN_KEYS
from unlearnbench.uncertainty import LEADERBOARD_REPLICATES, LEADERBOARD_SEED, LEVEL, cell_draws, paired_bootstrap
from unlearnbench.validate import UsageError

FORMATS = ("eee", "hf")
#: The Every Eval Ever schema the ``eee`` files follow (evaleval/every_eval_ever,
#: every_eval_ever/schemas/eval.schema.json; vendored for the tests in tests/data/every_eval_ever/).
EEE_SCHEMA_VERSION = "0.3.0"
#: The EEE datastore layout: ``data/<collection>/<developer>/<model>/<uuid4>.json``.
EEE_COLLECTION = "unlearnbench"
EEE_DEVELOPER = "unlearnbench"


@dataclass
class Evaluation:
    """The ok records of one (task, tier, method, forget set, configuration), sorted by seed."""

    task: str
    tier: str
    method: str
    forget_set: str | None
    variant: str  # sha256 of the config without its run identity (seed, forget set)
    records: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    label: str = ""  # the method, plus ``__config<hash>`` when it ran in several configurations

    @property
    def seeds(self) -> list[Any]:
        return [r["cell"]["seed"] for r in self.records]

    @property
    def config(self) -> dict[str, Any]:
        """The shared configuration (the first record's; the others differ only by seed)."""
        return self.records[0].get("config") or {}

    def slug(self) -> str:
        """One portable file-name component naming the evaluation."""
        forget = f"__forget{_safe(str(self.forget_set))}" if self.forget_set is not None else ""
        return f"{self.task}__{self.tier}__{self.label}{forget}"


@dataclass
class MetricSummary:
    """One metric of one evaluation over its seeds: the mean, each seed's value and, when the records
    carry within-cell intervals, a 95% interval of the mean."""

    name: str
    mean: float
    values: dict[str, float]  # seed -> value
    n_samples: list[int]  # per seed, where the record says
    higher_is_better: bool
    entry: dict[str, Any]  # the first record's metric entry (implementation, reference, version, target)
    interval: tuple[float, float] | None = None
    interval_method: str | None = None
    bootstrap_replicates: int | None = None
    cell_intervals: dict[str, list[float]] = field(default_factory=dict)  # seed -> its record's own interval
    cell_methods: dict[str, str] = field(default_factory=dict)  # seed -> how that interval was computed

    @property
    def std(self) -> float:
        """Population standard deviation over seeds (as the run's table)."""
        return float(np.std(list(self.values.values()), ddof=0))


def _safe(text: str) -> str:
    """``text`` as a portable file-name component (a digest replaces what is not plain)."""
    if re.fullmatch(r"[A-Za-z0-9._+-]{1,64}", text) and not text.startswith("."):
        return text
    prefix = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._")[:40]
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _variant(rec: dict[str, Any]) -> str:
    """The hash of a record's config without its run identity (seed, forget set): one configuration of a
    method, as the leaderboards' rows define it."""
    return config_hash({k: v for k, v in (rec.get("config") or {}).items() if k not in RUN_KEYS})


def _seed_order(seed: Any) -> tuple[int, Any]:
    return (0, seed) if isinstance(seed, int) else (1, str(seed))


def group_records(records: Iterable[dict[str, Any]]) -> list[Evaluation]:
    """The evaluations of ``records`` (copies of one cell count once), in (task, tier, method, forget set)
    order; an evaluation whose every cell failed has no ok records but keeps its failed ones."""
    groups: dict[tuple[Any, ...], Evaluation] = {}
    seen: set[str] = set()
    for rec in records:
        if rec["config_hash"] in seen:
            continue
        seen.add(rec["config_hash"])
        cell = rec["cell"]
        key = (cell["task"], cell["tier"], cell["method"], cell.get("forget_set"), _variant(rec))
        ev = groups.setdefault(key, Evaluation(*key))
        (ev.records if rec["status"] == "ok" else ev.failed).append(rec)
    configs: dict[tuple[Any, ...], set[str]] = {}
    for (task, tier, method, forget, variant) in groups:
        configs.setdefault((task, tier, method, forget), set()).add(variant)
    for (task, tier, method, forget, variant), ev in groups.items():
        several = len(configs[(task, tier, method, forget)]) > 1
        ev.label = f"{method}__config{variant[:8]}" if several else method
        ev.records.sort(key=lambda r: _seed_order(r["cell"]["seed"]))
    return [groups[k] for k in sorted(groups, key=lambda k: tuple(str(x) for x in k))]


def _metric_names(ev: Evaluation) -> list[str]:
    """The evaluation's metrics (its config's and any other a record holds) in leaderboard column order."""
    names = set(ev.config.get("metrics") or {}) | {n for rec in ev.records for n in rec.get("metrics") or {}}
    return sorted(names, key=lambda n: (METRICS.get(n).order if n in METRICS else math.inf, n))


def summarize(ev: Evaluation, metric: str) -> MetricSummary | None:
    """``metric`` over the evaluation's seeds; None when no seed has a value (the metric was unavailable).
    The interval: one seed, its record's own; several, the leaderboards' hierarchical bootstrap over the
    seeds and each cell's replicates (docs/uncertainty.md); none unless every seed's record has one."""
    entries = [(r["cell"]["seed"], r["metrics"].get(metric)) for r in ev.records]
    entries = [(s, e) for s, e in entries if isinstance(e, dict) and e.get("value") is not None]
    if not entries:
        return None
    first = entries[0][1]
    summary = MetricSummary(
        name=metric, mean=float(np.mean([e["value"] for _, e in entries])),
        values={str(s): float(e["value"]) for s, e in entries},
        n_samples=[int(e["n_samples"]) for _, e in entries if isinstance(e.get("n_samples"), int)],
        higher_is_better=bool(first.get("higher_is_better")), entry=first)
    if all(e.get("interval") is not None for _, e in entries):
        summary.cell_intervals = {str(s): [float(v) for v in e["interval"]] for s, e in entries}
        summary.cell_methods = {str(s): str(e.get("interval_method")) for s, e in entries}
        if len(entries) == 1:
            summary.interval = (float(first["interval"][0]), float(first["interval"][1]))
            summary.interval_method = first.get("interval_method") or "95% interval within the cell"
        else:
            draws = {str(s): cell_draws(e["value"], e.get("replicates")) for s, e in entries}
            boot = paired_bootstrap(draws)
            if boot is not None and boot["interval"] is not None:
                summary.interval = (float(boot["interval"][0]), float(boot["interval"][1]))
                summary.interval_method = (
                    f"{round(100 * LEVEL)}% hierarchical bootstrap of the mean over {len(entries)} seeds: seeds "
                    f"resampled, then one of each cell's bootstrap replicates ({LEADERBOARD_REPLICATES} replicates, "
                    f"seed {LEADERBOARD_SEED}; unlearnbench docs/uncertainty.md)")
                summary.bootstrap_replicates = LEADERBOARD_REPLICATES
    return summary


def _distinct(values: Iterable[Any]) -> str:
    return ", ".join(sorted({str(v) for v in values if v is not None and v != ""})) or "unknown"


def _epoch(created_at: Any) -> int | None:
    """A record's ``created_at`` (``YYYY-MM-DDTHH:MM:SSZ``) as Unix seconds, None when absent or malformed."""
    try:
        return calendar.timegm(time.strptime(str(created_at), "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return None


def _times(ev: Evaluation) -> tuple[str | None, str | None, int | None]:
    """The first and last ``created_at`` of the evaluation's cells, and the last as Unix seconds."""
    stamps = sorted(str(r["created_at"]) for r in ev.records if _epoch(r.get("created_at")) is not None)
    return (stamps[0], stamps[-1], _epoch(stamps[-1])) if stamps else (None, None, None)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def failed_cells(evaluations: list[Evaluation]) -> list[dict[str, Any]]:
    """The failed records of ``evaluations`` (never exported as scores)."""
    return [r for ev in evaluations for r in ev.failed]


def _warn_failed(evaluations: list[Evaluation], log: Callable[[str], None]) -> None:
    for rec in failed_cells(evaluations):
        cell = rec["cell"]
        forget = f" forget set {cell['forget_set']}" if cell.get("forget_set") is not None else ""
        log(f"warning: not exported, failed cell {cell['task']}/{cell['tier']} {cell['method']} seed "
            f"{cell['seed']}{forget}: {rec.get('error') or 'no error recorded'}")


# ---------------------------------------------------------------------------------------------- eee


def _eee_metric_config(s: MetricSummary) -> dict[str, Any]:
    """``metric_config``: direction from the record, bounds where the suite knows them (a fraction is in
    [0, 1], a cost is non-negative); other metrics declare none rather than a guess."""
    metric = METRICS.get(s.name) if s.name in METRICS else None
    config: dict[str, Any] = {
        "evaluation_description": str(s.entry.get("implementation") or ""),
        "metric_id": f"unlearnbench.{s.name}", "metric_name": s.name, "lower_is_better": not s.higher_is_better,
        "metric_parameters": {"version": s.entry.get("version")},
    }
    if metric is not None and metric.percent:
        config.update(score_type="continuous", min_score=0.0, max_score=1.0, metric_unit="proportion")
    elif metric is not None and metric.kind == "cost":
        config.update(score_type="continuous", min_score=0.0, max_score="Infinity")
    details = {"reference": s.entry.get("reference")}
    if s.entry.get("target") == "oracle":
        details["target"] = ("oracle: the right value is the retrain oracle's, not an extreme; lower_is_better "
                             "is the direction the record declares")
    config["additional_details"] = {k: str(v) for k, v in details.items() if v is not None}
    return config


def _eee_score(s: MetricSummary) -> dict[str, Any]:
    details = {"aggregation": f"mean over {len(s.values)} seed(s)", "seeds": ", ".join(s.values),
               "values_by_seed": _json(s.values)}
    if len(s.values) > 1:
        details["std_over_seeds"] = repr(s.std)
    if s.n_samples:
        details["n_samples_by_seed"] = _json(s.n_samples)
    if s.cell_intervals:
        details["intervals_by_seed"] = _json(s.cell_intervals)
        details["interval_method_by_seed"] = _json(s.cell_methods)
    extra = s.entry.get("extra")
    if extra and len(s.values) == 1:
        details["extra"] = _json(extra)
    score: dict[str, Any] = {"score": s.mean, "details": details}
    uncertainty: dict[str, Any] = {}
    if s.n_samples and len(s.n_samples) == len(s.values):
        uncertainty["num_samples"] = int(sum(s.n_samples))
    if s.interval is not None:
        uncertainty["confidence_interval"] = {"lower": s.interval[0], "upper": s.interval[1],
                                              "confidence_level": LEVEL, "method": s.interval_method}
        if s.bootstrap_replicates:
            uncertainty["num_bootstrap_samples"] = s.bootstrap_replicates
    if uncertainty:
        score["uncertainty"] = uncertainty
    return score


def _string_map(values: dict[str, Any]) -> dict[str, str]:
    """EEE ``additional_details``: strings only (JSON for structures), absent values left out."""
    return {k: v if isinstance(v, str) else _json(v) for k, v in values.items() if v is not None}


def evaluation_id(ev: Evaluation) -> str:
    """A stable id: the evaluation's identity and its configuration's hash (not a clock)."""
    forget = f"/forget-{ev.forget_set}" if ev.forget_set is not None else ""
    return f"unlearnbench/{ev.task}/{ev.tier}/{ev.method}{forget}/{ev.variant[:12]}"


def eee_document(ev: Evaluation) -> dict[str, Any]:
    """The Every Eval Ever (schema 0.3.0) document of one evaluation with at least one ok record."""
    config, first = ev.config, ev.records[0]
    began, last, last_epoch = _times(ev)
    commits = [r.get("git_commit") for r in ev.records]
    dirty = sorted({c for c in commits if isinstance(c, str) and c.endswith("-dirty")})
    software = {k: _distinct(r.get("software", {}).get(k) for r in ev.records)
                for k in sorted({k for r in ev.records for k in (r.get("software") or {})})}
    sampler = config.get("sampler") or {}
    data_source = first.get("data_source")
    summaries = [s for s in (summarize(ev, m) for m in _metric_names(ev)) if s is not None]
    unavailable = {m: _distinct(r["metrics"][m].get("reason") for r in ev.records
                                if isinstance(r["metrics"].get(m), dict))
                   for m in _metric_names(ev) if m not in {s.name for s in summaries}}
    source_data = {"dataset_name": ev.task, "source_type": "other", "additional_details": _string_map({
        "task_version": config.get("task_version"), "tier": ev.tier, "protocol": config.get("protocol"),
        "forget_set": ev.forget_set, "data_source": data_source, "task_options": config.get("task_options")})}
    generation = {"additional_details": _string_map({
        "sampler": sampler.get("kind"), "sampler_steps": sampler.get("steps"),
        "num_samples": sampler.get("num_samples"), "sampler_batch_size": sampler.get("batch_size"),
        "tier_eval": config.get("tier_eval")})}
    results = [{
        "evaluation_result_id": f"{ev.task}.{ev.tier}.{s.name}",
        "evaluation_name": f"unlearnbench.{ev.task}.{ev.tier}",
        "source_data": source_data,
        **({"evaluation_timestamp": began} if began else {}),
        "metric_config": _eee_metric_config(s),
        "score_details": _eee_score(s),
        "generation_config": generation,
    } for s in summaries]
    base = config.get("base_model") or {}
    return {
        "schema_version": EEE_SCHEMA_VERSION,
        "evaluation_id": evaluation_id(ev),
        **({"evaluation_timestamp": began} if began else {}),
        # the newest record's time (its finish; its start in records older than started_at): not the export's time
        "retrieved_timestamp": str(last_epoch if last_epoch is not None else 0),
        "source_metadata": {
            "source_name": "unlearnbench", "source_type": "evaluation_run",
            "source_organization_name": "unlearnbench", "evaluator_relationship": "first_party",
            "additional_details": _string_map({
                "record_schema_version": _distinct(r.get("schema_version") for r in ev.records),
                "config_hashes": ", ".join(r["config_hash"] for r in ev.records),
                "last_cell_recorded": last,
                "failed_seeds": ", ".join(str(r["cell"]["seed"]) for r in ev.failed) or None,
                "metrics_without_a_value": unavailable or None,
                "traceability": (f"not traceable to a commit: recorded from a checkout with uncommitted "
                                 f"changes ({', '.join(dirty)})") if dirty else None,
            }),
        },
        "eval_library": {
            "name": "unlearnbench", "version": software.get("unlearnbench", "unknown"),
            "additional_details": _string_map({"git_commit": _distinct(commits), **{
                k: v for k, v in software.items() if k != "unlearnbench"}}),
        },
        "model_info": {
            "name": f"{ev.method} unlearning of the {ev.task}/{ev.tier} base model",
            "id": f"{EEE_DEVELOPER}/{ev.slug()}",
            "additional_details": {
                "deployment_type": "self_deployed", "model_availability": "unknown",
                **_string_map({"method": ev.method, "method_version": config.get("method_version"),
                               "config_variant": ev.variant[:12], "hparams": config.get("hparams"),
                               "loop": config.get("loop"), "user_overrides": config.get("user_overrides") or None,
                               "tuned_overrides": config.get("tuned_overrides") or None,
                               "base_model": base.get("source"), "base_model_sha256": base.get("sha256"),
                               "base_model_identity": base if not base.get("source") else None}),
            },
        },
        "evaluation_results": results,
    }


def eee_path(out: Path, ev: Evaluation) -> Path:
    """``out/data/<collection>/<developer>/<model>/<uuid4>.json`` (the EEE datastore layout); the uuid is
    derived from the evaluation id, so a re-export replaces its file instead of adding one."""
    digest = hashlib.sha256(evaluation_id(ev).encode()).digest()[:16]
    name = uuid.UUID(bytes=digest, version=4)
    return out / "data" / EEE_COLLECTION / EEE_DEVELOPER / ev.slug() / f"{name}.json"


def export_eee(records: list[dict[str, Any]], out: Path, log: Callable[[str], None] | None = None) -> list[Path]:
    """Write one EEE JSON file per evaluation with an ok record; failed cells are listed (``log``,
    default stderr), never exported as scores. Returns the files written."""
    log = log or _stderr
    evaluations = group_records(records)
    _warn_failed(evaluations, log)
    written = []
    for ev in evaluations:
        if ev.records:
            path = eee_path(Path(out), ev)
            atomic_write_json(path, eee_document(ev))
            written.append(path)
    return written


# ----------------------------------------------------------------------------------------------- hf


def hf_entries(ev: Evaluation, dataset_prefix: str = "unlearnbench") -> list[dict[str, Any]]:
    """The ``.eval_results`` entries of one evaluation: one per metric, ``dataset.id`` the task's
    (``<prefix>/<task>``), ``task_id`` ``<tier>.<metric>``; what the format has no field for (direction,
    seeds, interval, commit) goes into ``notes``."""
    _, last, _ = _times(ev)
    commit = _distinct(r.get("git_commit") for r in ev.records)
    entries = []
    for s in (summarize(ev, m) for m in _metric_names(ev)):
        if s is None:
            continue
        notes = [f"unlearnbench {_distinct(r.get('software', {}).get('unlearnbench') for r in ev.records)} "
                 f"(commit {commit}), {ev.method} v{ev.config.get('method_version')}",
                 f"{'higher' if s.higher_is_better else 'lower'} is better"
                 + (" (right value: the retrain oracle's)" if s.entry.get("target") == "oracle" else ""),
                 f"mean over seeds {', '.join(s.values)}"
                 + (f" (std {s.std:.6g})" if len(s.values) > 1 else "")]
        if ev.forget_set is not None:
            notes.append(f"forget set {ev.forget_set}")
        if s.interval is not None:
            notes.append(f"95% interval [{s.interval[0]:.6g}, {s.interval[1]:.6g}]")
        if s.n_samples:
            notes.append(f"samples per seed {', '.join(map(str, s.n_samples))}")
        entry: dict[str, Any] = {"dataset": {"id": f"{dataset_prefix}/{ev.task}", "task_id": f"{ev.tier}.{s.name}"},
                                 "value": s.mean}
        if last:
            entry["date"] = last[:10]
        entry["notes"] = "; ".join(notes)
        entries.append(entry)
    return entries


def hf_path(out: Path, ev: Evaluation) -> Path:
    """``out/<method>/.eval_results/<task>__<tier>[__forget<id>].yaml``: each method folder holds what its
    model repository's ``.eval_results/`` would."""
    forget = f"__forget{_safe(str(ev.forget_set))}" if ev.forget_set is not None else ""
    return out / ev.label / ".eval_results" / f"{ev.task}__{ev.tier}{forget}.yaml"


def export_hf(records: list[dict[str, Any]], out: Path, log: Callable[[str], None] | None = None) -> list[Path]:
    """Write one Hugging Face ``.eval_results`` YAML file per evaluation with an ok record; failed cells
    are listed (``log``, default stderr). Returns the files written."""
    import yaml

    log = log or _stderr
    evaluations = group_records(records)
    _warn_failed(evaluations, log)
    written = []
    for ev in evaluations:
        entries = hf_entries(ev) if ev.records else []
        if entries:
            path = hf_path(Path(out), ev)
            atomic_write_text(path, yaml.safe_dump(entries, sort_keys=False, allow_unicode=True))
            written.append(path)
    return written


# --------------------------------------------------------------------------------------------- main


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def export_main(results: Path, fmt: str, out: Path) -> list[Path]:
    """Read every record under ``results`` and export it as ``fmt``; bad record files are listed on stderr
    and left out (``run_bench.py validate`` says everything wrong with a folder). Raises UsageError for a
    missing folder, an unknown format, or a folder without records."""
    results, out = Path(results), Path(out)
    if fmt not in FORMATS:
        raise UsageError(f"export --format {fmt!r}: use one of {', '.join(FORMATS)}")
    if not results.is_dir():
        raise UsageError(f"export --results {results}: no such folder")
    bad: list[BadRecordError] = []
    records = load_records(results, bad)
    for err in bad:
        _stderr(f"warning: not exported, bad record {err.path}: {err.reason}")
    if not records:
        raise UsageError(f"export --results {results}: no usable records under it")
    written = (export_eee if fmt == "eee" else export_hf)(records, out)
    if not written:
        _stderr(f"warning: nothing exported from {results}: no cell finished ok")
    return written
