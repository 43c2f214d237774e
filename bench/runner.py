"""Plan and run the cells of a benchmark: resolve configs, unlearn, sample, score, record."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torchvision.utils import save_image

from unlearnbench.artifacts import RETRAIN, Artifacts, prepare
from unlearnbench.errors import EnvironmentFailure
from unlearnbench.paths import cache_dir
from unlearnbench.io import atomic_write_json, file_lock, remove_orphan_temporaries
from unlearnbench.loop import DivergenceError, LoopConfig, assert_finite_weights
from unlearnbench.method import UnlearnJob
from unlearnbench.metrics import EvalContext, MetricValue
from unlearnbench.registry import METHODS, METRICS, TASKS, load_all
from unlearnbench.results import (
    SCHEMA_VERSION, BadRecordError, config_hash, device_info, git_commit, read_record, record_name, software_versions,
)
from unlearnbench.sampling import SamplerConfig
from unlearnbench.task import Task, TaskData, Tier
from unlearnbench.validate import DataFileError, UsageError, validate_hparams, validate_loop, validate_sampler


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["retrack.k=5", "loop.lr=1e-4"]`` -> ``{"retrack": {"k": 5}, "loop": {"lr": 1e-4}}``.

    Scopes, names and value types are checked here (``UsageError``, with did-you-mean), so a typo
    fails before any work; value ranges are checked on the resolved settings (``unlearnbench.validate``).
    """
    from unlearnbench.validate import parse_setting

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        scope, name, value = parse_setting(item)
        out.setdefault(scope, {})[name] = value
    return out


@dataclass
class RunOptions:
    task: str
    tier: str | None = None
    methods: list[str] | None = None
    seeds: list[int] | None = None
    out: Path | None = None
    data_root: Path | None = None
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


def resolve_device(name: str) -> torch.device:
    """The device ``--device`` names (``auto``: CUDA if present); one that is unknown or absent here is a
    ``UsageError`` listing the devices this machine has."""
    from unlearnbench.validate import UsageError, did_you_mean

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = _available_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r} is not a device; {did_you_mean(name, available)}"
                         f"available here: {', '.join(available)}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda" and torch.cuda.is_available() and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                         f"available here: {', '.join(available)}")
    backend = getattr(torch.backends, device.type, None) if device.type == "mps" else getattr(torch, device.type, None)
    if not (backend is not None and hasattr(backend, "is_available") and backend.is_available()):
        raise UsageError(f"--device {name}: no {device.type} device on this machine; available here: "
                         f"{', '.join(available)}")
    return device


def _available_devices() -> list[str]:
    """What ``--device`` may name on this machine."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def _with(dc: Any, updates: dict[str, Any], what: str) -> Any:
    names = {f.name for f in dataclasses.fields(dc)}
    unknown = set(updates) - names
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {sorted(unknown)}; known: {sorted(names)}")
    updates = {k: tuple(v) if isinstance(getattr(dc, k), tuple) else v for k, v in updates.items()}
    return dataclasses.replace(dc, **updates)


@dataclass
class CellPlan:
    cell: dict[str, Any]
    config: dict[str, Any]
    digest: str
    loop: LoopConfig
    hparams: Any
    path: Path
    sources: dict[str, str] = field(default_factory=dict)  # setting -> where its value came from


@dataclass
class Settings:
    """A method's resolved loop and hyper-parameters, and where each value came from."""

    loop: LoopConfig
    hparams: Any
    sources: dict[str, str]  # "loop.lr" / "hparams.k" -> "default" | "published (...)" | "tier ..." | "user (--set ...)"
    tier_overrides: dict[str, Any]
    user: dict[str, Any]  # the --set values that apply to this method, by their --set key


def resolve_settings(method: Any, tier: Tier, protocol: str, overrides: dict[str, dict[str, Any]]) -> Settings:
    """One precedence for every setting: defaults < published < tier (its loop and tuned choices) < user.

    Within the user's ``--set``, ``METHOD.NAME`` beats ``loop.NAME`` (the more specific wins). Loop
    fields are ``LoopConfig``'s; every other name is the method's hyper-parameter.
    """
    loop_fields = {f.name for f in dataclasses.fields(LoopConfig)}
    name = method.name
    _with(tier.unlearning, overrides.get("loop", {}), "loop")  # loop.NAME must name a loop setting
    sources = {f"hparams.{f.name}": "default" for f in dataclasses.fields(method.Hparams)
               if f.default is not dataclasses.MISSING}
    sources.update({f"hparams.{k}": f"published ({protocol})" for k in method.published.get(protocol, {})})
    sources.update({f"loop.{k}": f"tier {tier.name}" for k in loop_fields})
    layers = [  # (values, where they come from), later layers win
        (tier.method_overrides.get(name, {}), f"tier {tier.name} ({tier.method_overrides_source})"),
        (overrides.get("loop", {}), "user (--set loop.KEY)"),
        (overrides.get(name, {}), f"user (--set {name}.KEY)"),
    ]
    updates: dict[str, dict[str, Any]] = {"loop": {}, "hparams": {}}
    for values, origin in layers:
        for key, value in values.items():
            scope = "loop" if key in loop_fields else "hparams"
            updates[scope][key] = value
            sources[f"{scope}.{key}"] = origin.replace("KEY", key)
    loop = _with(tier.unlearning, updates["loop"], "loop")
    hparams = method.hparams(protocol, updates["hparams"])
    user = {f"{name}.{k}": v for k, v in overrides.get(name, {}).items()}
    if method.finetunes:
        user = {**{f"loop.{k}": v for k, v in overrides.get("loop", {}).items()}, **user}
    else:  # no loop: its settings neither apply nor count
        sources = {k: v for k, v in sources.items() if not k.startswith("loop.")}
    return Settings(loop, hparams, dict(sorted(sources.items())), dict(tier.method_overrides.get(name, {})), user)


class Benchmark:
    """One (task, tier) run: plans cells, reuses finished ones, runs the rest."""

    def __init__(self, opts: RunOptions, log: Callable[[str], None] = print) -> None:
        load_all()
        self.opts = opts
        self.log = log
        self.task: Task = TASKS.get(opts.task)
        self.task_name = TASKS.canonical(opts.task)
        self.tier: Tier = self.task.tier(opts.tier or self.task.default_tier)
        self.methods = self._resolve_methods(opts.methods)
        self.seeds = list(opts.seeds if opts.seeds is not None else self.tier.seeds)
        self.sampler: SamplerConfig = _with(self.tier.sampler, opts.overrides.get("sampler", {}), "sampler")
        validate_sampler(self.sampler)
        self.metric_names = [METRICS.canonical(m) for m in (opts.metrics or self._default_metrics())]
        if opts.eval_every and "deletion_step" not in self.metric_names:
            self.metric_names.append("deletion_step")
        self.device = resolve_device(opts.device)
        self.out = Path(opts.out or Path("runs") / f"{self.task_name}-{self.tier.name}")
        self.forget_sets = list(self.task.forget_sets(self.tier, opts.data_root))
        self.artifacts = self.artifacts_for(None)
        self._data: dict[str | None, TaskData] = {}
        self._base: tuple[Any, dict[str, Any]] | None = None
        self._base_id: dict[str, Any] | None = None

    def _resolve_methods(self, asked: list[str] | None) -> list[str]:
        """Canonical method names; a method the task cannot run is an error when asked for, skipped otherwise."""
        unsupported = self.task.unsupported_methods
        if asked:
            names = [METHODS.canonical(m) for m in asked]
            for name in names:
                if name in unsupported:
                    raise ValueError(f"method {name!r} does not run on task {self.task_name!r}: {unsupported[name]}")
            return names
        skipped = [m for m in METHODS.names() if m in unsupported]
        for name in skipped:
            self.log(f"skipping {name} on {self.task_name}: {unsupported[name]}")
        return [m for m in METHODS.names() if m not in unsupported]

    def _default_metrics(self) -> list[str]:
        return [m for m in self.tier.metrics if m not in self.tier.off_by_default]

    def artifacts_for(self, forget_set: str | None) -> Artifacts:
        return Artifacts(self.task, self.tier, self.opts.base_model, self.opts.base_subfolder, forget_set)

    def data_for(self, forget_set: str | None) -> TaskData:
        """The task's data for one forget set (loaded once per process)."""
        if forget_set not in self._data:
            self._data[forget_set] = self.task.load(self.opts.data_root, forget_set)
        return self._data[forget_set]

    @property
    def data(self) -> TaskData:
        return self.data_for(self.forget_sets[0])

    def plan(self) -> list[CellPlan]:
        """Every cell's resolved config; needs the base model's identity, not its training."""
        base_id = self._base_identity()
        plans = []
        for method_name in self.methods:
            method = METHODS.get(method_name)
            settings = resolve_settings(method, self.tier, self.task.protocol, self.opts.overrides)
            if method.finetunes:
                validate_loop(settings.loop)
            validate_hparams(method_name, settings.hparams, None)
            for forget_set, seed in ((f, s) for f in self.forget_sets for s in self.seeds):
                cell = {"task": self.task_name, "tier": self.tier.name, "method": method_name, "seed": seed}
                if forget_set is not None:
                    cell["forget_set"] = forget_set
                config = {
                    "task": self.task_name, "task_version": self.task.version, "protocol": self.task.protocol,
                    "data_source": self.task.source if hasattr(self.task, "source") else None,
                    "tier": self.tier.name, "method": method_name, "method_version": method.version,
                    "hparams": dataclasses.asdict(settings.hparams),
                    "loop": dataclasses.asdict(settings.loop) if method.finetunes else None,
                    "tuned_overrides": settings.tier_overrides, "user_overrides": settings.user,
                    "seed": seed, "sampler": dataclasses.asdict(self.sampler),
                    "metrics": {m: METRICS.get(m).version for m in self.metric_names},
                    "eval_every": self.opts.eval_every, "base_model": base_id,
                    **({"forget_set": forget_set} if forget_set is not None else {}),
                    **({"tier_eval": self.tier.eval} if self.tier.eval else {}),
                }
                digest = config_hash(config)
                plans.append(CellPlan(cell, config, digest, settings.loop, settings.hparams,
                                      self.out / "records" / record_name(cell, digest), settings.sources))
        return plans

    def _base_identity(self) -> dict[str, Any]:
        """The base model's identity in every cell's config: its content, not its path."""
        from unlearnbench.artifacts import BASE, model_identity

        if self._base_id is None:
            source = self.opts.base_model or self.tier.base_model
            if source:
                subfolder = self.opts.base_subfolder if self.opts.base_model else self.tier.base_subfolder
                given = "--base-model" if self.opts.base_model else f"tier {self.tier.name}"
                self._base_id = {"given_by": given, "name": Path(str(source)).name if Path(str(source)).exists()
                                 else str(source), **model_identity(str(source), subfolder, self.task.loads_own_base)}
            else:
                identity = self.artifacts.identity(BASE)
                if identity["sha256"] == "not prepared yet":  # a dry run's plan: not kept, run() prepares it
                    return identity
                self._base_id = identity
        return self._base_id

    def needed_artifacts(self) -> tuple[str, ...]:
        """Prepared artefacts this run uses: the oracle only if retrain runs, the classifier only if scored."""
        from unlearnbench.artifacts import BASE, CLASSIFIER, RETRAIN

        needed = [] if self.task.loads_own_base else [BASE]
        if "retrain" in self.methods:
            needed.append(RETRAIN)
        if {"is_clf", "fid_clf"} & set(self.metric_names):
            needed.append(CLASSIFIER)
        return tuple(needed)

    def ensure_prepared(self) -> None:
        needed = self.needed_artifacts()
        for forget_set in self.forget_sets:
            artifacts = self.artifacts_for(forget_set)
            # base and classifier are shared by all forget sets (prepared once); the oracle is per forget set
            missing = [k for k in artifacts.missing(needed) if forget_set == self.forget_sets[0] or k == RETRAIN]
            if missing:
                self.log(f"preparing {', '.join(missing)} for {self.task_name}/{self.tier.name}"
                         f"{'' if forget_set is None else f' (forget set {forget_set})'} "
                         f"(cached in {cache_dir(self.task_name, self.tier.name)}) ...")
                prepare(self.task, self.tier, self.data_for(forget_set), self.device, only=tuple(missing),
                        progress=self.opts.progress, log=self.log, data_root=self.opts.data_root)

    def run(self) -> list[dict[str, Any]]:
        """Run every missing cell; return all records of this plan (finished ones reused).

        Each cell is claimed with a lock before it runs, so runners sharing a results folder
        compute it once: a cell another runner holds is waited for at the end and then reused.
        """
        records = self.out / "records"
        plans = self.plan()
        if self._base_missing():  # its content is part of every cell's identity: prepare it, then plan again
            self._check_data(plans)
            self._prepare_base()
            plans = self.plan()
        for tmp in remove_orphan_temporaries(records):
            self.log(f"removed {tmp.name}, left by a writer that was killed mid-write")
        with contextlib.ExitStack() as held:
            todo, busy = [], []
            for plan in plans:
                if not self._needs_run(plan):
                    continue
                if not held.enter_context(file_lock(self._claim_file(plan), wait=False)):
                    busy.append(plan)
                elif self._needs_run(plan):  # not finished by another runner since the first look
                    todo.append(plan)
            if todo:
                self._check_data(todo)
            self.log(f"{self.task_name}/{self.tier.name}: {len(plans)} cells, "
                     f"{len(plans) - len(todo) - len(busy)} already done"
                     + (f", {len(busy)} being computed by another runner" if busy else "")
                     + f", results in {self.out}")
            self._dispatch(todo)
            if busy:
                self.log(f"waiting for {len(busy)} cell(s) another runner on {self.out} is computing ...")
            for plan in busy:
                with file_lock(self._claim_file(plan), wait=True):
                    if self._needs_run(plan):  # the other runner stopped before finishing it
                        self._dispatch([plan])
        return [read_record(p.path) for p in plans]

    def _check_data(self, plans: list[CellPlan]) -> None:
        """Before any training: load the data this process uses (a local run), so a corrupt file or a
        ReTrack k above the retain-set size is a usage error, not a failed cell. Data that needs the
        base model (Stable Diffusion) and data of remote workers load in their cells."""
        if self.opts.executor != "local" or self.opts.executor_options or self.task.loads_own_base:
            return
        try:
            retain_size = len(self.data.retain)
        except (UsageError, FileNotFoundError):
            raise
        except ValueError as err:
            raise UsageError(str(err)) from err
        for plan in {p.cell["method"]: p for p in plans}.values():
            validate_hparams(plan.cell["method"], plan.hparams, retain_size)

    def _base_missing(self) -> bool:
        from unlearnbench.artifacts import BASE

        return BASE in self.needed_artifacts() and bool(self.artifacts.missing((BASE,)))

    def _prepare_base(self) -> None:
        from unlearnbench.artifacts import BASE

        self._base_id = None
        self.log(f"preparing base for {self.task_name}/{self.tier.name} "
                 f"(cached in {cache_dir(self.task_name, self.tier.name)}) ...")
        prepare(self.task, self.tier, self.data, self.device, only=(BASE,), progress=self.opts.progress,
                log=self.log, data_root=self.opts.data_root)

    def _dispatch(self, todo: list[CellPlan]) -> None:
        if not todo:
            return
        self.ensure_prepared()  # shared work happens once, before any fan-out
        if self.opts.executor == "local" and not self.opts.executor_options:
            for plan in todo:
                self.execute(plan)
        else:
            from unlearnbench.executors import get_executor

            get_executor(self.opts.executor, **self.opts.executor_options).run(self.opts, [p.digest for p in todo])

    def _claim_file(self, plan: CellPlan) -> Path:
        return self.out / ".claims" / f"{plan.digest[:24]}.lock"

    def base_model(self) -> tuple[Any, dict[str, Any]]:
        """The model every cell unlearns (loaded once per process): the task's own loader or a diffusers UNet."""
        if self._base is None:
            own = self.task.load_base(self.tier, self.opts.base_model, self.opts.base_subfolder, self.device)
            self._base = own if own is not None else self.artifacts.base_model()
        return self._base

    def execute(self, plan: CellPlan) -> None:
        """Run one cell and write its record atomically (what every executor calls, in any process)."""
        atomic_write_json(plan.path, self.run_cell(plan, *self.base_model()))

    def execute_digest(self, digest: str) -> None:
        """Run the cell whose config hash is ``digest`` (how workers receive cells)."""
        plan = next((p for p in self.plan() if p.digest == digest), None)
        if plan is None:
            raise KeyError(f"no cell with config hash {digest} in this plan")
        self.execute(plan)

    def _needs_run(self, plan: CellPlan) -> bool:
        """Whether the cell must run: no record, ``--overwrite``, a failed record with ``--retry-failed``,
        or a record that cannot be read (moved to ``<out>/quarantine/`` with a message, then redone)."""
        if self.opts.overwrite or not plan.path.exists():
            return True
        try:
            record = read_record(plan.path)
        except FileNotFoundError:
            return True
        except BadRecordError as err:
            moved = quarantine(plan.path, self.out / "quarantine")
            self.log(f"record {plan.path.name} is unusable ({err.reason}); moved to {moved}, the cell runs again")
            return True
        return self.opts.retry_failed and record.get("status") != "ok"

    def run_cell(self, plan: CellPlan, base: Any, base_info: dict[str, Any]) -> dict[str, Any]:
        method = METHODS.get(plan.cell["method"])()
        forget_set = plan.cell.get("forget_set")
        self.log(f"cell {plan.cell['method']} seed {plan.cell['seed']}"
                 f"{'' if forget_set is None else f' forget set {forget_set}'} ...")
        data = self.data_for(forget_set)
        record: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "cell": plan.cell, "config": plan.config, "config_hash": plan.digest,
            "data_source": data.source, "base_model": base_info, "software": software_versions(),
            "git_commit": git_commit(), "device": device_info(self.device),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "settings_sources": plan.sources,
        }
        try:
            self.task.check_model(base, data)
            torch.manual_seed(plan.cell["seed"])
            job = UnlearnJob(
                base_model=self.task.bind(copy.deepcopy(base).to(self.device), data),
                retain=data.retain, forget=data.forget,
                loop=plan.loop, hparams=plan.hparams, seed=plan.cell["seed"], device=self.device,
                artifacts=self.artifacts_for(forget_set), progress=self.opts.progress,
                on_step=self._step_evaluator(plan.cell["seed"], data) if self.opts.eval_every else None,
                schedule=self.task.noise_schedule(self.tier),
            )
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            result = method.unlearn(job)
            started = time.perf_counter()
            model = result.model.to(self.device)
            assert_finite_weights(model, f"after {plan.cell['method']}")
            sets = self.task.generate(model, self.sampler, plan.cell["seed"], self.device, data, self.opts.progress)
            assert_finite_samples(sets)
            samples = sets["samples"]
            grid = self.out / "samples" / plan.path.name.replace(".json", ".png")
            grid.parent.mkdir(parents=True, exist_ok=True)
            save_image((samples[:64] + 1) / 2, grid, nrow=8)
            metrics = self.score(self.eval_context(sets, data, model, plan.cell["seed"]), result.log)
            record.update({
                "status": "ok", "metrics": metrics, "sample_grid": str(grid.relative_to(self.out)),
                "costs": {"unlearn_seconds": result.log.seconds, "unet_forward": result.log.unet_forward,
                          "unet_backward": result.log.unet_backward, "eval_seconds": time.perf_counter() - started,
                          "peak_memory_bytes": torch.cuda.max_memory_allocated(self.device)
                          if self.device.type == "cuda" else None},
                "training": {"losses": result.log.losses, "grad_norms": result.log.grad_norms,
                             "evaluations": result.log.evaluations},
                "notes": result.notes,
            })
        except Exception as err:  # one broken cell must not stop the grid; the record keeps why
            if isinstance(err, DataFileError):  # bad input, not the method's failure: say so, record nothing
                raise
            if is_environment_error(err):  # the machine's fault, not the cell's: record nothing, stop
                raise EnvironmentFailure(f"cell {plan.cell['method']} seed {plan.cell['seed']} stopped by the "
                                         f"environment, not recorded (rerun to resume): {type(err).__name__}: {err}"
                                         ) from err
            record.update({"status": "failed", "error": f"{type(err).__name__}: {err}",
                           "traceback": traceback.format_exc()})
            self.log(f"  failed: {err}")
        return record

    def eval_context(self, sets: dict[str, torch.Tensor], data: TaskData, model: Any, seed: int) -> EvalContext:
        classifier_dir = None
        if any(m in self.metric_names for m in ("is_clf", "fid_clf")):
            classifier_dir = self.artifacts.classifier_dir()
        return EvalContext(samples=sets["samples"], forget_image=data.forget_image, retain=data.retain,
                           classifier_dir=classifier_dir, cache_dir=cache_dir(self.task_name, self.tier.name),
                           device=self.device, inception_weights=self.opts.inception_weights, task=self.task,
                           data=data, model=model, sample_sets=sets, seed=seed, tier_eval=self.tier.eval,
                           weights={"inception": self.opts.inception_weights, "sscd": self.opts.sscd_weights,
                                    "clip": self.opts.clip_weights},
                           progress=self.opts.progress)

    def score(self, ctx: EvalContext, log: Any) -> dict[str, Any]:
        out = {}
        for name in self.metric_names:
            metric = METRICS.get(name)
            value: MetricValue = metric.compute(ctx) if metric.kind == "sample" else metric.compute(log)
            out[name] = {"value": value.value, "higher_is_better": metric.higher_is_better,
                         "implementation": value.implementation or metric.implementation, "version": metric.version,
                         "n_samples": value.n_samples, "reference": value.reference,
                         "available": value.available, "reason": value.reason, **({"extra": value.extra} if value.extra else {})}
        return out

    def _step_evaluator(self, seed: int, data: TaskData) -> Callable[[int, Any], dict[str, Any] | None]:
        eval_sampler = dataclasses.replace(self.sampler, num_samples=min(self.sampler.num_samples, 256))

        def evaluate(step: int, model: Any) -> dict[str, Any] | None:
            if step % self.opts.eval_every:
                return None
            sets = self.task.generate(model, eval_sampler, seed, self.device, data, False)
            assert_finite_samples(sets)
            ctx = self.eval_context(sets, data, model, seed)
            return {"forget_rate": METRICS.get("forget_rate").compute(ctx).value, "n_samples": len(sets["samples"])}

        return evaluate


def assert_finite_samples(sets: dict[str, torch.Tensor]) -> None:
    """A model that generates NaN or inf is destroyed, not forgetful: fail the cell and say so."""
    for name, images in sets.items():
        if torch.is_tensor(images) and images.is_floating_point():
            bad = int((~torch.isfinite(images)).flatten(1).any(dim=1).sum())
            if bad:
                raise DivergenceError(f"{bad} of {len(images)} generated images in {name!r} hold NaN or inf values")


#: errnos of a machine in trouble rather than a cell's own failure
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ENOMEM, errno.EACCES, errno.EPERM,
                      errno.ESTALE, errno.ENODEV, errno.ENXIO}
CUDA_ENVIRONMENT = ("no CUDA GPUs are available", "CUDA driver", "CUDA error: unspecified launch failure",
                    "device-side assert", "CUDA-capable device", "ECC error", "CUDA error: an illegal memory access")


def is_environment_error(err: BaseException) -> bool:
    """Disk, filesystem, device and out-of-memory errors of the GPU: rerunning on a healthy machine may
    succeed, so such an error must not become the cell's recorded outcome (divergence and bad settings do)."""
    if isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS:
        return True
    if type(err).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError: a busy or smaller GPU
        return True
    return isinstance(err, RuntimeError) and any(text in str(err) for text in CUDA_ENVIRONMENT)


def quarantine(path: Path, folder: Path) -> Path:
    """Move an unusable record into ``folder`` (kept for inspection, never read as a result)."""
    target = folder / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files whose writer is gone (a live runner's in-flight writes are kept)."""
    remove_orphan_temporaries(folder)
