"""Plan the cells of one (task, tier) run, reuse finished ones, prepare what is missing, run the rest.

Configuration lives in ``unlearnbench.settings``, one cell's work in ``unlearnbench.cell``, where
cells run in ``unlearnbench.executors``; this module connects them.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable

from unlearnbench.artifacts import BASE, CLASSIFIER, RETRAIN, Artifacts, prepare
from unlearnbench.cell import CellEnv, CellPlan, run_cell
from unlearnbench.devices import resolve_device
from unlearnbench.io import atomic_write_json, file_lock, remove_orphan_temporaries
from unlearnbench.paths import cache_dir
from unlearnbench.progress import duration
from unlearnbench.registry import METHODS, METRICS, TASKS
from unlearnbench.results import config_hash, needs_run, read_record, record_name
from unlearnbench.settings import (
    RunOptions, cell_config, replace_fields, resolve_methods, resolve_metrics, resolve_settings,
)
from unlearnbench.task import Task, TaskData, Tier
from unlearnbench.validate import UsageError, validate_hparams, validate_loop, validate_sampler


def headline(record: dict[str, Any], names: list[str], count: int = 3) -> str:
    """The first ``count`` available values of a finished cell, as tables show them: ``forget_rate 2.3%, ...``."""
    shown = []
    for name in names:
        entry = record.get("metrics", {}).get(name) or {}
        if entry.get("value") is None or METRICS.get(name).kind != "sample":
            continue
        metric = METRICS.get(name)
        value = entry["value"] * 100 if metric.percent else entry["value"]
        shown.append(f"{name} {value:.{metric.digits}f}{'%' if metric.percent else ''}")
        if len(shown) == count:
            break
    return ", ".join(shown) or "no sample metric"


def require_named_forget_sets(task: Task) -> None:
    """``--forget`` names forget sets: a task with one fixed forget set takes none (``UsageError`` naming those that do)."""
    if not task.forget_set_syntax:
        raise UsageError(f"--forget: task {task.name!r} has one fixed forget set; tasks that take --forget: "
                         f"{', '.join(n for n in TASKS.names() if TASKS.get(n).forget_set_syntax)}")


class Benchmark:
    """One (task, tier) run: plans cells, reuses finished ones, runs the rest."""

    def __init__(self, opts: RunOptions, log: Callable[[str], None] = print) -> None:
        self.opts, self.log = opts, log
        self.task: Task = TASKS.get(opts.task).configure(opts.overrides.get("task", {}), opts.data_root)
        self.task_name = TASKS.canonical(opts.task)
        self.tier: Tier = self.task.tier(opts.tier or self.task.default_tier)
        self.methods = resolve_methods(self.task, opts.methods, log)
        self.seeds = list(opts.seeds if opts.seeds is not None else self.tier.seeds)
        self.sampler = replace_fields(self.tier.sampler, opts.overrides.get("sampler", {}), "sampler")
        validate_sampler(self.sampler)
        self.metric_names = resolve_metrics(self.tier, opts.metrics, opts.eval_every, self.task)
        self.device = resolve_device(opts.device)
        self.out = Path(opts.out or Path("runs") / f"{self.task_name}-{self.tier.name}")
        self._data: dict[str | None, TaskData] = {}
        self._base: tuple[Any, dict[str, Any]] | None = None
        self._base_id: dict[str, Any] | None = None
        self.forget_sets = list(opts.forget or self.task.forget_sets(self.tier, opts.data_root))
        if opts.forget:
            self.check_forget_sets(opts.forget)
        self.artifacts = self.artifacts_for(None)
        self.env = CellEnv(self.task, self.tier, self.sampler, self.metric_names, self.device, self.out,
                           cache_dir(self.task.cache_name, self.tier.name), {"inception": opts.inception_weights,
                           "sscd": opts.sscd_weights, "clip": opts.clip_weights}, opts.eval_every, opts.progress, log)

    def check_forget_sets(self, asked: list[str]) -> None:
        """``--forget``: only for tasks whose forget sets are named, each loaded now so a bad name fails before any work."""
        require_named_forget_sets(self.task)
        if self.task.loads_own_base:  # its data are encoded by the base model, loaded later: checked when loaded
            return
        for forget_set in asked:
            self.data_for(forget_set)

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
        base_id, plans = self._base_identity(), []
        for name in self.methods:
            method = METHODS.get(name)
            settings = resolve_settings(method, self.task, self.tier, self.opts.overrides)
            if method.finetunes:
                validate_loop(settings.loop)
            validate_hparams(name, settings.hparams, None)
            for forget_set, seed in ((f, s) for f in self.forget_sets for s in self.seeds):
                cell = {"task": self.task_name, "tier": self.tier.name, "method": name, "seed": seed,
                        **({"forget_set": forget_set} if forget_set is not None else {})}
                config = cell_config(self.task, self.tier, method, settings, cell, self.sampler, self.metric_names,
                                     self.opts.eval_every, base_id)
                digest = config_hash(config)
                plans.append(CellPlan(cell, config, digest, settings.loop, settings.hparams,
                                      self.out / "records" / record_name(cell, digest), settings.sources))
        return plans

    def _base_identity(self) -> dict[str, Any]:
        """The base model's identity in every cell's config: its content, not its path."""
        if self._base_id is None:
            identity = self.artifacts.base_identity()
            if identity.get("sha256") == "not prepared yet":  # a dry run's plan: not kept, run() prepares it
                return identity
            self._base_id = identity
        return self._base_id

    def needed_artifacts(self) -> tuple[str, ...]:
        """Prepared artefacts this run uses: the oracle only if an oracle runs, others as metrics declare."""
        needed = [] if self.task.loads_own_base else [BASE]
        if any(METHODS.get(m).role == "oracle" for m in self.methods):
            needed.append(RETRAIN)
        for kind in (RETRAIN, CLASSIFIER):
            if kind not in needed and any(kind in METRICS.get(m).needs for m in self.metric_names):
                needed.append(kind)
        return tuple(needed)

    def ensure_prepared(self, only: tuple[str, ...] | None = None) -> None:
        """Train (once, locked) every needed artefact that is missing; the oracle is per forget set."""
        for forget_set in self.forget_sets:
            missing = [k for k in self.artifacts_for(forget_set).missing(only or self.needed_artifacts())
                       if forget_set == self.forget_sets[0] or k == RETRAIN]
            if missing:
                if BASE in missing:
                    self._base_id = None
                self.log(f"preparing {', '.join(missing)} for {self.task_name}/{self.tier.name}"
                         f"{'' if forget_set is None else f' (forget set {forget_set})'} "
                         f"(cached in {cache_dir(self.task.cache_name, self.tier.name)}) ...")
                prepare(self.task, self.tier, self.data_for(forget_set), self.device, only=tuple(missing),
                        progress=self.opts.progress, log=self.log, data_root=self.opts.data_root)

    def run(self) -> list[dict[str, Any]]:
        """Run every missing cell; return all records of this plan (finished ones reused).

        Each cell is claimed with a lock before it runs, so runners sharing a results folder
        compute it once: a cell another runner holds is waited for at the end and then reused.
        """
        plans = self.plan()
        if BASE in self.needed_artifacts() and self.artifacts.missing((BASE,)):
            self._check_data(plans)  # its content is part of every cell's identity: prepare it, then plan again
            self.ensure_prepared((BASE,))
            plans = self.plan()
        for tmp in remove_orphan_temporaries(self.out / "records"):
            self.log(f"removed {tmp.name}, left by a writer that was killed mid-write")
        with contextlib.ExitStack() as held:
            todo, busy = [], []
            for plan in (p for p in plans if self._needs_run(p)):
                if not held.enter_context(file_lock(self._claim_file(plan), wait=False)):
                    busy.append(plan)
                elif self._needs_run(plan):  # not finished by another runner since the first look
                    todo.append(plan)
            if todo:
                self._check_data(todo)
            self.log(f"{self.task_name}/{self.tier.name}: {len(plans)} cells, {len(plans) - len(todo) - len(busy)} "
                     f"already done" + (f", {len(busy)} being computed by another runner" if busy else "")
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
        if self.opts.base_model:  # a given model that cannot serve the data fails here, not in every cell
            try:
                self.task.check_model(self.base_model()[0], self.data)
            except ValueError as err:
                raise UsageError(f"--base-model {self.opts.base_model}: {err}") from err

    def _dispatch(self, todo: list[CellPlan]) -> None:
        if not todo:
            return
        self.ensure_prepared()  # shared work happens once, before any fan-out
        if self.opts.executor == "local" and not self.opts.executor_options:
            took: list[float] = []
            for i, plan in enumerate(todo):  # in this process, reusing its loaded data and base model
                left = f", about {duration(sum(took) / len(took) * (len(todo) - i))} left" if took else ""
                started = time.perf_counter()
                self.execute(plan, f"{i + 1}/{len(todo)}{left}")
                took.append(time.perf_counter() - started)
            return
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

    def execute(self, plan: CellPlan, position: str = "") -> None:
        """Run one cell and write its record atomically (what every executor calls, in any process); say which
        cell (``position``: "3/9, about 4 min left") and, when done, its time and headline numbers."""
        forget_set = plan.cell.get("forget_set")
        what = f"{plan.cell['method']} seed {plan.cell['seed']}{'' if forget_set is None else f' forget set {forget_set}'}"
        self.log(f"cell {position + ': ' if position else ''}{what} ...")
        started = time.perf_counter()
        record = run_cell(self.env, plan, self.data_for(forget_set), *self.base_model(), self.artifacts_for(forget_set))
        atomic_write_json(plan.path, record)
        if record["status"] == "ok":
            self.log(f"  {what} done in {duration(time.perf_counter() - started)}: {headline(record, self.metric_names)}")



    def _needs_run(self, plan: CellPlan) -> bool:
        return needs_run(plan.path, self.opts.overwrite, self.opts.retry_failed, self.out / "quarantine", self.log)
