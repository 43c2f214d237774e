"""One cell: unlearn, sample, score, and its record (the one place records are built).

A cell's failure is recorded (``status: failed`` with the error); bad input (``DataFileError``) and
the machine's errors (``EnvironmentFailure``: disk, device, out of GPU memory) are raised instead,
since rerunning on good input or a healthy machine may succeed.
"""
from __future__ import annotations

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

from unlearnbench.errors import EnvironmentFailure
from unlearnbench.loop import DivergenceError, LoopConfig, assert_finite_weights
from unlearnbench.method import UnlearnJob
from unlearnbench.metrics import EvalContext, MetricValue
from unlearnbench.progress import Heartbeat
from unlearnbench.registry import METHODS, METRICS
from unlearnbench.results import SCHEMA_VERSION, device_info, git_commit, software_versions
from unlearnbench.sampling import SamplerConfig
from unlearnbench.task import Task, TaskData, Tier
from unlearnbench.validate import DataFileError


@dataclass
class CellPlan:
    """One cell's identity, its resolved config (hashed into ``digest``) and where its record goes."""

    cell: dict[str, Any]
    config: dict[str, Any]
    digest: str
    loop: LoopConfig
    hparams: Any
    path: Path
    sources: dict[str, str] = field(default_factory=dict)  # setting -> where its value came from


@dataclass
class CellEnv:
    """What every cell of one run shares."""

    task: Task
    tier: Tier
    sampler: SamplerConfig
    metric_names: list[str]
    device: torch.device
    out: Path
    cache_dir: Path
    weights: dict[str, str | None]  # user-supplied weights: inception, sscd, clip
    eval_every: int = 0
    progress: bool = True
    log: Callable[[str], None] = print


def utc_now() -> str:
    """The current UTC time as records write it (``YYYY-MM-DDTHH:MM:SSZ``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def record_header(plan: CellPlan, device: torch.device, data_source: Any, base_info: Any,
                  started_at: str | None = None) -> dict[str, Any]:
    """What every record starts with, finished or lost: the cell, its config and how it was computed.

    ``started_at``: when the cell started (None: unknown, e.g. a lost cell); ``created_at``: when the record
    was written, set again by ``finish`` once the record is complete."""
    return {
        "schema_version": SCHEMA_VERSION, "cell": plan.cell, "config": plan.config, "config_hash": plan.digest,
        "data_source": data_source, "base_model": base_info, "software": software_versions(),
        "git_commit": git_commit(), "device": device_info(device),
        "started_at": started_at, "created_at": utc_now(),
    }


def finish(record: dict[str, Any]) -> dict[str, Any]:
    """Stamp a complete record with its finish time (``created_at``: when the record is written)."""
    record["created_at"] = utc_now()
    return record


def lost_record(plan: CellPlan, device: torch.device, data_source: Any, error: str) -> dict[str, Any]:
    """The record of a cell whose worker died on every attempt (its start is unknown: ``started_at`` is null)."""
    return {**record_header(plan, device, data_source, None), "status": "failed", "error": error, "traceback": None}


def run_cell(env: CellEnv, plan: CellPlan, data: TaskData, base: Any, base_info: dict[str, Any],
             artifacts: Any) -> dict[str, Any]:
    """Unlearn ``base`` by the plan's method, generate, score; the finished (or failed) record."""
    method = METHODS.get(plan.cell["method"])()
    seed = plan.cell["seed"]
    record = {**record_header(plan, env.device, data.source, base_info, started_at=utc_now()),
              "settings_sources": plan.sources,
              **({"forget_images": list(data.forget_names)} if data.forget_names else {})}
    with Heartbeat(env.log if env.progress else None, f"{plan.cell['method']} seed {seed}") as beat:
        try:
            env.task.check_model(base, data)
            torch.manual_seed(seed)
            job = UnlearnJob(
                base_model=env.task.bind(copy.deepcopy(base).to(env.device), data),
                retain=data.retain, forget=data.forget, loop=plan.loop, hparams=plan.hparams, seed=seed,
                device=env.device, artifacts=artifacts, progress=env.progress,
                on_step=_step_evaluator(env, seed, data) if env.eval_every else None,
                schedule=env.task.noise_schedule(env.tier), protocol=str(env.task.protocol),
            )
            if env.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(env.device)
            beat.set("unlearning")
            result = method.unlearn(job)
            record["device"]["load"] = round(os.getloadavg()[0], 2)  # wall-clock is read against the machine's load
            started = time.perf_counter()
            model = result.model.to(env.device)
            assert_finite_weights(model, f"after {plan.cell['method']}")
            beat.set(f"sampling {env.sampler.num_samples:,} images")
            sets = env.task.generate(model, env.sampler, seed, env.device, data, env.progress)
            assert_finite_samples(sets)
            grid = env.out / "samples" / plan.path.name.replace(".json", ".png")
            grid.parent.mkdir(parents=True, exist_ok=True)
            save_image((sets["samples"][:64] + 1) / 2, grid, nrow=8)
            copy_mask = env.task.sample_copy_mask(sets["samples"], data).to(sets["samples"].device)
            copies = grid.with_name(grid.stem + "-copies.png")  # the memorization itself, for the sample figure
            if bool(copy_mask.any()):
                save_image((sets["samples"][copy_mask][:64] + 1) / 2, copies, nrow=8)
            else:
                copies.unlink(missing_ok=True)
            metrics = score(env.metric_names, eval_context(env, sets, data, model, seed, artifacts), result.log, beat)
            record.update({
                "status": "ok", "metrics": metrics, "sample_grid": str(grid.relative_to(env.out)),
                "sample_copies": {"grid": str(copies.relative_to(env.out)) if bool(copy_mask.any()) else None,
                                  "count": int(copy_mask.sum()), "n_samples": len(copy_mask)},
                "costs": {"unlearn_seconds": result.log.seconds, "unet_forward": result.log.unet_forward,
                          "unet_backward": result.log.unet_backward, "eval_seconds": time.perf_counter() - started,
                          **({"setup": result.log.setup} if result.log.setup else {}),
                          "peak_memory_bytes": torch.cuda.max_memory_allocated(env.device)
                          if env.device.type == "cuda" else None},
                "training": {"losses": result.log.losses, "grad_norms": result.log.grad_norms,
                             "evaluations": result.log.evaluations},
                "notes": result.notes,
            })
        except Exception as err:  # one broken cell must not stop the grid; the record keeps why
            if isinstance(err, DataFileError):  # bad input, not the method's failure: say so, record nothing
                raise
            if is_environment_error(err):  # the machine's fault, not the cell's: record nothing, stop
                raise EnvironmentFailure(f"cell {plan.cell['method']} seed {seed} stopped by the environment, not "
                                         f"recorded (rerun to resume): {type(err).__name__}: {err}") from err
            record.update({"status": "failed", "error": f"{type(err).__name__}: {err}",
                           "traceback": traceback.format_exc()})
            env.log(f"  failed: {err}")
    return finish(record)


def eval_context(env: CellEnv, sets: dict[str, torch.Tensor], data: TaskData, model: Any, seed: int,
                 artifacts: Any = None) -> EvalContext:
    """What the sample metrics compare the generated sets with (``artifacts``: the prepared ones they need)."""
    needs = {need for name in env.metric_names for need in METRICS.get(name).needs} if artifacts else set()
    return EvalContext(sample_sets=sets, forget_image=data.forget_image, retain=data.retain,
                       classifier_dir=artifacts.classifier_dir() if "classifier" in needs else None,
                       cache_dir=env.cache_dir, device=env.device, task=env.task, data=data, model=model,
                       seed=seed, tier_eval=env.tier.eval, weights=env.weights, progress=env.progress,
                       sampler=env.sampler, schedule=env.task.noise_schedule(env.tier), loop=env.tier.unlearning,
                       oracle=_oracle_loader(artifacts) if artifacts is not None and _oracle_prepared(artifacts)
                       else None)


def _oracle_prepared(artifacts: Any) -> bool:
    """Whether the retrain oracle is prepared: metrics compare with it when it is, and never train it."""
    from unlearnbench.artifacts import RETRAIN

    return not artifacts.task.unsupported_roles.get("oracle") and not artifacts.missing((RETRAIN,))


def _oracle_loader(artifacts: Any) -> Callable[[], tuple[Any, dict[str, Any]]]:
    """Loads the retrain oracle with its content identity (for metrics that compare with it)."""
    from unlearnbench.artifacts import RETRAIN

    def load() -> tuple[Any, dict[str, Any]]:
        model, _ = artifacts.retrain_model()
        return model, artifacts.identity(RETRAIN)

    return load


def score(metric_names: list[str], ctx: EvalContext, log: Any, beat: Heartbeat | None = None) -> dict[str, Any]:
    """Every metric's value with how it was computed, in the run's metric order (``beat`` hears each phase)."""
    out = {}
    for i, name in enumerate(metric_names):
        metric = METRICS.get(name)
        if beat is not None:
            beat.set(f"scoring {name} ({i + 1}/{len(metric_names)})")
        started = time.perf_counter()
        value: MetricValue = metric.compute(ctx) if metric.kind == "sample" else metric.compute(log)
        out[name] = {"value": value.value, "higher_is_better": metric.higher_is_better,
                     **({"target": metric.target} if metric.target else {}),
                     "implementation": value.implementation or metric.implementation, "version": metric.version,
                     "n_samples": value.n_samples, "reference": value.reference,
                     "available": value.available, "reason": value.reason,
                     **({"extra": value.extra} if value.extra else {}),
                     **({"interval": [float(v) for v in value.interval], "interval_method": value.interval_method}
                        if value.interval is not None else {}),
                     **({"replicates": [round(float(v), 6) for v in value.replicates]}
                        if value.replicates is not None else {}),
                     "seconds": round(time.perf_counter() - started, 3)}
    return out


def _step_evaluator(env: CellEnv, seed: int, data: TaskData) -> Callable[[int, Any], dict[str, Any] | None]:
    """``--eval-every``: the forget rate on up to 256 samples every N unlearning steps."""
    eval_sampler = dataclasses.replace(env.sampler, num_samples=min(env.sampler.num_samples, 256))

    def evaluate(step: int, model: Any) -> dict[str, Any] | None:
        if step % env.eval_every:
            return None
        sets = env.task.generate(model, eval_sampler, seed, env.device, data, False)
        assert_finite_samples(sets)
        ctx = eval_context(env, sets, data, model, seed)
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
