"""Plan and run the cells of a benchmark: resolve configs, unlearn, sample, score, record."""
from __future__ import annotations

import ast
import copy
import dataclasses
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torchvision.utils import save_image

from unlearnbench.artifacts import RETRAIN, Artifacts, prepare
from unlearnbench.paths import cache_dir
from unlearnbench.io import atomic_write_json, atomic_write_text
from unlearnbench.loop import LoopConfig
from unlearnbench.method import UnlearnJob
from unlearnbench.metrics import EvalContext, MetricValue
from unlearnbench.registry import METHODS, METRICS, TASKS, load_all
from unlearnbench.results import (
    SCHEMA_VERSION, config_hash, device_info, git_commit, record_name, software_versions,
)
from unlearnbench.sampling import SamplerConfig
from unlearnbench.task import Task, TaskData, Tier


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["retrack.k=5", "loop.lr=1e-4"]`` -> ``{"retrack": {"k": 5}, "loop": {"lr": 1e-4}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        scope, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"bad --set {item!r}: use SCOPE.NAME=VALUE, e.g. retrack.k=5 or loop.lr=1e-4")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        if scope not in ("loop", "sampler"):
            scope = METHODS.canonical(scope)
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
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
        self.metric_names = [METRICS.canonical(m) for m in (opts.metrics or self._default_metrics())]
        if opts.eval_every and "deletion_step" not in self.metric_names:
            self.metric_names.append("deletion_step")
        self.device = resolve_device(opts.device)
        self.out = Path(opts.out or Path("runs") / f"{self.task_name}-{self.tier.name}")
        self.forget_sets = list(self.task.forget_sets(self.tier, opts.data_root))
        self.artifacts = self.artifacts_for(None)
        self._data: dict[str | None, TaskData] = {}
        self._base: tuple[Any, dict[str, Any]] | None = None

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
            tuned = dict(self.tier.method_overrides.get(method_name, {}))
            user = dict(self.opts.overrides.get(method_name, {}))
            loop_fields = {f.name for f in dataclasses.fields(LoopConfig)}
            loop_updates = {**self.opts.overrides.get("loop", {}),
                            **{k: v for k, v in {**tuned, **user}.items() if k in loop_fields}}
            hp_updates = {k: v for k, v in {**tuned, **user}.items() if k not in loop_fields}
            loop = _with(self.tier.unlearning, loop_updates, "loop")
            hparams = method.hparams(self.task.protocol, hp_updates)
            for forget_set, seed in ((f, s) for f in self.forget_sets for s in self.seeds):
                cell = {"task": self.task_name, "tier": self.tier.name, "method": method_name, "seed": seed}
                if forget_set is not None:
                    cell["forget_set"] = forget_set
                config = {
                    "task": self.task_name, "task_version": self.task.version, "protocol": self.task.protocol,
                    "data_source": self.task.source if hasattr(self.task, "source") else None,
                    "tier": self.tier.name, "method": method_name, "method_version": method.version,
                    "hparams": dataclasses.asdict(hparams),
                    "loop": dataclasses.asdict(loop) if method.finetunes else None,
                    "tuned_overrides": tuned, "user_overrides": user,
                    "seed": seed, "sampler": dataclasses.asdict(self.sampler),
                    "metrics": {m: METRICS.get(m).version for m in self.metric_names},
                    "eval_every": self.opts.eval_every, "base_model": base_id,
                    **({"forget_set": forget_set} if forget_set is not None else {}),
                    **({"tier_eval": self.tier.eval} if self.tier.eval else {}),
                }
                digest = config_hash(config)
                plans.append(CellPlan(cell, config, digest, loop, hparams,
                                      self.out / "records" / record_name(cell, digest)))
        return plans

    def _base_identity(self) -> str:
        if self.opts.base_model:
            return f"{self.opts.base_model}:{self.opts.base_subfolder or ''}"
        if self.tier.base_model:
            return f"{self.tier.base_model}:{self.tier.base_subfolder or ''}"
        return f"prepared:{self.task_name}/{self.tier.name}"

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
        """Run every missing cell; return all records of this plan (finished ones reused)."""
        plans = self.plan()
        remove_stale_temporaries(self.out / "records")
        todo = [p for p in plans if self._needs_run(p)]
        self.log(f"{self.task_name}/{self.tier.name}: {len(plans)} cells, {len(plans) - len(todo)} already done, "
                 f"results in {self.out}")
        if todo:
            self.ensure_prepared()  # shared work happens once, before any fan-out
            if self.opts.executor == "local" and not self.opts.executor_options:
                for plan in todo:
                    self.execute(plan)
            else:
                from unlearnbench.executors import get_executor

                get_executor(self.opts.executor, **self.opts.executor_options).run(self.opts, [p.digest for p in todo])
        return [_read(p.path) for p in plans]

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
        if self.opts.overwrite or not plan.path.exists():
            return True
        return self.opts.retry_failed and _read(plan.path).get("status") != "ok"

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
            sets = self.task.generate(model, self.sampler, plan.cell["seed"], self.device, data, self.opts.progress)
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
            ctx = self.eval_context(sets, data, model, seed)
            return {"forget_rate": METRICS.get("forget_rate").compute(ctx).value, "n_samples": len(samples)}

        return evaluate


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files left by a run killed in the middle of an atomic write."""
    for tmp in folder.glob(".*.tmp") if folder.exists() else []:
        tmp.unlink(missing_ok=True)


def _read(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text())
