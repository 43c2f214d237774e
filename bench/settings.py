"""Configuration: what a run is asked for, and every cell's resolved settings with their sources.

One precedence for every value, later layers winning:

1. ``default``   — the method's ``Hparams`` defaults;
2. ``published`` — the method's published values for the task's protocol (``Method.published``);
3. ``tier``      — the tier's loop, its own per-method choices (``Tier.method_overrides``) and, for a
   tuned tier, the choices of ``run_bench.py tune`` shipped as ``tuning.json``;
4. ``user``      — ``--set``: ``loop.NAME`` for every fine-tuning method, then ``METHOD.NAME`` (the
   more specific wins).

Which keys are loop settings and which are hyper-parameters is declared, not guessed: ``LoopConfig``'s
fields are the loop's, ``Method.Hparams``'s fields the method's, and a method may not declare a
hyper-parameter that shadows a loop setting (``setting_scopes`` refuses it).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearnbench.loop import LoopConfig
from unlearnbench.registry import BUILT_IN, METHODS, METRICS, TASKS
from unlearnbench.sampling import SamplerConfig
from unlearnbench.task import Task, Tier
from unlearnbench.validate import UsageError, coerce, did_you_mean, parse_value


@dataclass
class RunOptions:
    """What one ``run`` is asked for (the command line's flags, or a script's arguments)."""

    task: str
    tier: str | None = None
    methods: list[str] | None = None
    seeds: list[int] | None = None
    out: Path | None = None
    data_root: Path | None = None
    #: Forget sets to run instead of the tier's, one cell each (``--forget``; ``+`` joins images forgotten together).
    forget: list[str] | None = None
    base_model: str | None = None
    base_subfolder: str | None = None
    device: str = "auto"
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: list[str] | None = None
    inception_weights: str | None = None
    sscd_weights: str | None = None
    clip_weights: str | None = None
    eval_every: int = 0
    progress: bool = True
    executor: str = "local"  # local | pool | ray (bench/executors.py)
    executor_options: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False  # rerun every cell, replacing its record
    retry_failed: bool = False  # rerun cells whose record says failed


# ------------------------------------------------------------------------------ which key goes where


def _typed_fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


LOOP_SETTINGS: dict[str, Any] = _typed_fields(LoopConfig)
SAMPLER_SETTINGS: dict[str, Any] = _typed_fields(SamplerConfig)


def setting_scopes(method: Any) -> dict[str, tuple[str, Any]]:
    """Every key a method's settings may name -> (``"hparams"`` or ``"loop"``, its type).

    A fine-tuning method takes its hyper-parameters and the loop's settings; a hyper-parameter named
    like a loop setting would make ``--set METHOD.NAME`` ambiguous and is refused.
    """
    own = _typed_fields(method.Hparams)
    clash = sorted(set(own) & set(LOOP_SETTINGS))
    if clash:
        raise TypeError(f"method {method.name!r}: hyper-parameter(s) {clash} shadow loop settings; rename them")
    scopes = {name: ("hparams", hint) for name, hint in own.items()}
    if method.finetunes:
        scopes.update({name: ("loop", hint) for name, hint in LOOP_SETTINGS.items()})
    return scopes


def override_scope(scope: str, item: str) -> str:
    """``loop``, ``sampler``, ``task`` or the canonical name of the method ``scope`` names (aliases allowed)."""
    if scope in ("loop", "sampler", "task"):
        return scope
    if scope in METHODS:
        return METHODS.canonical(scope)
    names = ["loop", "sampler", "task", *METHODS.names(), *(a for n in METHODS.names() for a in METHODS.aliases_of(n))]
    raise UsageError(f"--set {item}: unknown scope {scope!r}; {did_you_mean(scope, names)}"
                     f"scopes: loop, sampler, task or a method ({', '.join(METHODS.names())})")


def setting_fields(scope: str, task: str | None = None) -> tuple[dict[str, Any], str]:
    """The settings ``--set SCOPE.NAME`` may change, name -> type, and a listing of them for messages
    (``task``: the task whose ``Options`` the ``task`` scope names)."""
    if scope == "task":
        options = TASKS.get(task).Options if task else type(None)
        own = _typed_fields(options) if dataclasses.is_dataclass(options) else {}
        return own, f"task {task} options: {', '.join(own) or 'none'}"
    if scope in ("loop", "sampler"):
        own = LOOP_SETTINGS if scope == "loop" else SAMPLER_SETTINGS
        return own, f"{scope} settings: {', '.join(own)}"
    method = METHODS.get(scope)
    scopes = setting_scopes(method)
    hparams = [n for n, (where, _) in scopes.items() if where == "hparams"]
    loop = [n for n, (where, _) in scopes.items() if where == "loop"]
    listing = f"{scope} settings: {', '.join(hparams) or 'none of its own'}"
    if loop:
        listing += f", and the loop's {', '.join(loop)}"
    return {n: hint for n, (_, hint) in scopes.items()}, listing


def parse_setting(item: str, task: str | None = None) -> tuple[str, str, Any]:
    """``"retrack.k=5"`` -> ``("retrack", "k", 5)``, the scope, name and type checked (UsageError);
    ``task.NAME`` names an option of the task ``task``."""
    key, sep, raw = item.partition("=")
    scope, dot, name = key.strip().partition(".")
    if not sep or not dot or not scope or not name or not raw.strip():
        raise UsageError(f"bad --set {item!r}: use SCOPE.NAME=VALUE, e.g. retrack.k=5 or loop.lr=1e-4")
    scope = override_scope(scope, item)
    known, listing = setting_fields(scope, task)
    if name not in known:
        owner = f"task {task}" if scope == "task" else scope
        raise UsageError(f"--set {item}: {owner} has no setting {name!r}; {did_you_mean(name, known)}{listing}")
    return scope, name, coerce(f"{scope}.{name}", parse_value(raw), known[name], raw)


def parse_overrides(items: list[str], task: str | None = None) -> dict[str, dict[str, Any]]:
    """``["retrack.k=5", "loop.lr=1e-4"]`` -> ``{"retrack": {"k": 5}, "loop": {"lr": 1e-4}}``.

    Scopes, names and value types are checked here (``UsageError``, with did-you-mean), so a typo
    fails before any work; value ranges are checked on the resolved settings (``unlearnbench.validate``).
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        scope, name, value = parse_setting(item, task)
        out.setdefault(scope, {})[name] = value
    return out


def replace_fields(dc: Any, updates: dict[str, Any], what: str) -> Any:
    """``dataclasses.replace`` that names unknown fields (and keeps tuples tuples)."""
    names = {f.name for f in dataclasses.fields(dc)}
    unknown = set(updates) - names
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {sorted(unknown)}; known: {sorted(names)}")
    updates = {k: tuple(v) if isinstance(getattr(dc, k), tuple) else v for k, v in updates.items()}
    return dataclasses.replace(dc, **updates)


# ------------------------------------------------------------------------------ resolution


def resolve_methods(task: Task, asked: list[str] | None, log: Any = print) -> list[str]:
    """Canonical method names in table order; a method the task cannot run is an error when asked for,
    skipped (with a note) otherwise."""
    if asked:
        names = [METHODS.canonical(m) for m in asked]
        for name in (n for n in names if task.unsupported(n)):
            raise UsageError(f"method {name!r} does not run on task {task.name!r}: {task.unsupported(name)}")
        return names
    for name in (m for m in METHODS.names() if task.unsupported(m)):
        log(f"skipping {name} on {task.name}: {task.unsupported(name)}")
    return [m for m in METHODS.names() if not task.unsupported(m)]


def resolve_metrics(tier: Tier, asked: list[str] | None, eval_every: int, task: Task | None = None) -> list[str]:
    """The metrics a run scores, in the order asked (``--metrics``, else the tier's own list).

    A metric asked for on a task that does not offer what it needs (``Metric.task_needs``) is a ``UsageError``."""
    names = [METRICS.canonical(m) for m in asked or [m for m in tier.metrics if m not in tier.off_by_default]]
    for name in names:
        metric = METRICS.get(name)
        missing = [need for need in metric.task_needs if task is not None and need not in task.offers]
        if missing:
            raise UsageError(f"metric {name!r} is undefined on task {task.name!r}: it needs {', '.join(missing)}, "
                             f"which this task does not offer ({task.offers_note or 'see docs/verification.md'})")
        if metric.check is not None:
            try:
                metric.check(tier.eval)
            except ValueError as err:
                raise UsageError(f"metric {name!r} cannot run with tier {tier.name!r}'s settings: {err}") from None
    if eval_every and "deletion_step" not in names:
        names.append("deletion_step")
    return names


@dataclass
class Settings:
    """A method's resolved loop and hyper-parameters, and where each value came from."""

    loop: LoopConfig
    hparams: Any
    sources: dict[str, str]  # "loop.lr" / "hparams.k" -> "default" | "published (...)" | "tier ..." | "user (--set ...)"
    tier_overrides: dict[str, Any]
    user: dict[str, Any]  # the --set values that apply to this method, by their --set key


def tier_choices(task: Task, tier: Tier, method: str) -> dict[str, tuple[Any, str]]:
    """The tier's per-method settings for ``method``: its own, then (winning) its tuned ones, each with its origin."""
    from unlearnbench.tuning import tuned_overrides

    own = f"tier {tier.name} (the tier's own choice)"
    chosen = {key: (value, own) for key, value in tier.method_overrides.get(method, {}).items()}
    if tier.tuned:
        tuned = f"tier {tier.name} (tuned: datasets/assets/{task.name}/{tier.name}/tuning.json)"
        values = tuned_overrides(task.name, tier.name).get(method, {})
        chosen.update({key: (value, tuned) for key, value in values.items()})
    return chosen


def resolve_settings(method: Any, task: Task, tier: Tier, overrides: dict[str, dict[str, Any]]) -> Settings:
    """``method``'s settings on ``tier`` of ``task`` with ``overrides`` (``--set``), by the module's precedence."""
    name, protocol = method.name, task.protocol
    scopes = setting_scopes(method)
    replace_fields(tier.unlearning, overrides.get("loop", {}), "loop")  # loop.NAME must name a loop setting
    sources = {f"hparams.{f.name}": "default" for f in dataclasses.fields(method.Hparams)
               if f.default is not dataclasses.MISSING}
    published = f"published ({protocol})" if method.published_for is None else \
        f"published for {method.published_for}, transferred to {protocol}"
    sources.update({f"hparams.{k}": published for k in method.published.get(protocol, {})})
    if method.finetunes:
        sources.update({f"loop.{k}": f"tier {tier.name}" for k in LOOP_SETTINGS})
    chosen = tier_choices(task, tier, name)
    user_loop = overrides.get("loop", {}) if method.finetunes else {}
    layers = [  # (key, value, where it comes from), later layers win
        *((key, value, origin) for key, (value, origin) in chosen.items()),
        *((key, value, f"user (--set loop.{key})") for key, value in user_loop.items()),
        *((key, value, f"user (--set {name}.{key})") for key, value in overrides.get(name, {}).items()),
    ]
    updates: dict[str, dict[str, Any]] = {"loop": {}, "hparams": {}}
    for key, value, origin in layers:
        if key not in scopes:
            raise ValueError(f"{name}: unknown setting {key!r} ({origin}); known: {sorted(scopes)}")
        scope = scopes[key][0]
        updates[scope][key] = value
        sources[f"{scope}.{key}"] = origin
    loop = replace_fields(tier.unlearning, updates["loop"], "loop")
    hparams = method.hparams(protocol, updates["hparams"])
    user = {**{f"loop.{k}": v for k, v in user_loop.items()},
            **{f"{name}.{k}": v for k, v in overrides.get(name, {}).items()}}
    return Settings(loop, hparams, dict(sorted(sources.items())), {k: v for k, (v, _) in chosen.items()}, user)


def cell_config(task: Task, tier: Tier, method: Any, settings: Settings, cell: dict[str, Any], sampler: SamplerConfig,
                metric_names: list[str], eval_every: int, base_id: dict[str, Any]) -> dict[str, Any]:
    """Everything that determines one cell's numbers: hashed into its identity (``results.config_hash``)."""
    forget_set = cell.get("forget_set")
    options = task.option_values()
    method_origin, task_origin = METHODS.origin(method.name), TASKS.origin(cell["task"])
    metric_origins = {m: o for m in metric_names if (o := METRICS.origin(m))["package"] != BUILT_IN}
    return {
        "task": cell["task"], "task_version": task.version, "protocol": str(task.protocol),
        **({"task_options": options} if options else {}),
        "data_source": getattr(task, "source", None), "tier": tier.name, "method": method.name,
        "method_version": method.version, "hparams": dataclasses.asdict(settings.hparams),
        "loop": dataclasses.asdict(settings.loop) if method.finetunes else None,
        "tuned_overrides": settings.tier_overrides, "user_overrides": settings.user,
        "seed": cell["seed"], "sampler": dataclasses.asdict(sampler),
        "metrics": {m: METRICS.get(m).version for m in metric_names},
        "eval_every": eval_every, "base_model": base_id,
        **({"forget_set": forget_set} if forget_set is not None else {}),
        **({"tier_eval": tier.eval} if tier.eval else {}),
        # where a plugin's code came from (docs/extending.md): a new release of it is a new cell
        **({"method_origin": method_origin} if method_origin["package"] != BUILT_IN else {}),
        **({"task_origin": task_origin} if task_origin["package"] != BUILT_IN else {}),
        **({"metric_origins": metric_origins} if metric_origins else {}),
    }
