"""Prepared artefacts of a (task, tier): base model, retrain oracle and classifier.

Looked up, in order: ``--base-model`` (for the base only), the user cache
(``$UNLEARNBENCH_CACHE`` or ``~/.cache/unlearnbench``), then the weights shipped in the package
(verified against their sha256 in ``manifest.json``). ``run_bench.py prepare`` trains what is
missing; weights are saved as diffusers folders / safetensors and never unpickled.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import UNet2DModel

from unlearnbench.diffusion import load_unet
from unlearnbench.io import atomic_write_json, sha256_file
from unlearnbench.task import Task, TaskData, Tier
from unlearnbench.paths import assets_dir, cache_dir

BASE, RETRAIN, CLASSIFIER = "base", "retrain", "classifier"
WEIGHT_FILES = {
    BASE: "base/unet_ema/diffusion_pytorch_model.safetensors",
    RETRAIN: "retrain/unet_ema/diffusion_pytorch_model.safetensors",
    CLASSIFIER: "classifier/model.safetensors",
}


class WeightsMissingError(FileNotFoundError):
    """A prepared artefact is absent; the message gives the command that builds it."""


def weight_file(kind: str, forget_set: str | None = None) -> str:
    """Relative path of a prepared weights file; the oracle is per forget set where a task has several."""
    rel = WEIGHT_FILES[kind]
    return rel.replace("retrain/", f"retrain-{forget_set}/", 1) if kind == RETRAIN and forget_set else rel


def artefact_folder(kind: str, forget_set: str | None = None) -> str:
    return weight_file(kind, forget_set).split("/", 1)[0]


@dataclass
class Artifacts:
    """Locates, verifies and loads the prepared artefacts of one (task, tier[, forget set])."""

    task: Task
    tier: Tier
    base_model_path: str | None = None
    base_subfolder: str | None = None
    forget_set: str | None = None

    @property
    def base_source(self) -> str | None:
        """The base model to load instead of a prepared one: ``--base-model`` or the tier's published id."""
        return self.base_model_path or self.tier.base_model

    def _dir_for(self, kind: str) -> Path | None:
        rel = weight_file(kind, self.forget_set)
        for root in (cache_dir(self.task.name, self.tier.name), assets_dir(self.task.name, self.tier.name)):
            if (root / rel).exists():
                if root == assets_dir(self.task.name, self.tier.name):
                    verify_manifest(root, rel)
                return root
        return None

    def missing(self, needed: tuple[str, ...] = (BASE, RETRAIN, CLASSIFIER)) -> list[str]:
        kinds = [k for k in (RETRAIN, CLASSIFIER, BASE) if k in needed]
        if self.base_source:
            kinds = [k for k in kinds if k != BASE]
        return [k for k in kinds if self._dir_for(k) is None]

    def _need(self, kind: str) -> Path:
        root = self._dir_for(kind)
        if root is None:
            raise WeightsMissingError(
                f"no prepared {kind} for task {self.task.name!r}, tier {self.tier.name!r} in "
                f"{cache_dir(self.task.name, self.tier.name)} or {assets_dir(self.task.name, self.tier.name)}. "
                f"Build it with:\n  python run_bench.py prepare --task {self.task.name} --tier {self.tier.name}"
            )
        return root

    def base_model(self) -> tuple[UNet2DModel, dict[str, Any]]:
        """The model to unlearn and where it came from, with EMA vs raw weights recorded."""
        source = self.base_source
        if source:
            published = source == self.tier.base_model and not self.base_model_path
            subfolder = self.base_subfolder if self.base_model_path else self.tier.base_subfolder
            model, info = load_base_unet(source, subfolder)
            if info["weights"] == "unknown" and published:
                info["weights"] = self.tier.base_weights
                info["weights_basis"] = "the published checkpoint's documentation (protocols.md §3)"
            return model, info
        root = self._need(BASE)
        return load_unet(root / "base" / "unet_ema"), {**self._info(root, BASE), "weights": "ema"}

    def retrain_model(self) -> tuple[UNet2DModel, dict[str, Any]]:
        root = self._need(RETRAIN)
        folder = artefact_folder(RETRAIN, self.forget_set)
        return load_unet(root / folder / "unet_ema"), self._info(root, RETRAIN)

    def classifier(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        from unlearnbench.classifier import load_classifier

        root = self._need(CLASSIFIER)
        return load_classifier(root / "classifier"), self._info(root, CLASSIFIER)

    def classifier_dir(self) -> Path:
        """The folder holding the classifier (what torch-fidelity's extractor loads)."""
        return self._need(CLASSIFIER) / "classifier"

    def _info(self, root: Path, kind: str) -> dict[str, Any]:
        folder = artefact_folder(kind, self.forget_set)
        info = json.loads((root / folder / "info.json").read_text())
        info["sha256"] = sha256_file(root / weight_file(kind, self.forget_set))
        info["location"] = str(root / folder)
        return info


def verify_manifest(root: Path, rel: str) -> None:
    """Check a shipped weights file against the sha256 recorded when it was prepared."""
    manifest = json.loads((root / "manifest.json").read_text())
    expected = manifest["sha256"][rel]
    actual = sha256_file(root / rel)
    if actual != expected:
        raise RuntimeError(f"{root / rel} is corrupted: sha256 {actual} != {expected} in manifest.json")


def write_manifest(root: Path, command: str) -> None:
    """Record the sha256 of every prepared weights file and the command that reproduces them."""
    present = {str(f.relative_to(root)): sha256_file(f) for f in sorted(root.glob("*/*/*.safetensors"))
               if "checkpoints" not in f.parts} | {
        rel: sha256_file(root / rel) for rel in WEIGHT_FILES.values() if (root / rel).exists()}
    atomic_write_json(root / "manifest.json", {"command": command, "sha256": dict(sorted(present.items()))})


def _scheduler_config(path: str, subfolder: str | None) -> tuple[dict[str, Any] | None, str]:
    """The DDPM scheduler config shipped with a base model (root, ``scheduler/`` or beside the UNet)."""
    from diffusers import DDPMScheduler

    local = Path(path)
    candidates = [None, "scheduler"] + ([str(Path(subfolder).parent)] if subfolder and "/" in subfolder else [])
    for sub in candidates:
        if local.exists():
            f = local / (sub or "") / "scheduler_config.json"
            if f.exists():
                return json.loads(f.read_text()), str(f)
            continue
        try:
            cfg = DDPMScheduler.load_config(path, subfolder=sub)
            return dict(cfg), f"{path}:{sub or ''}scheduler_config.json"
        except Exception:  # not on the hub under that name, or offline: try the next layout
            continue
    return None, "none found"


def check_scheduler(path: str, subfolder: str | None) -> dict[str, Any]:
    """Fail unless the base model was trained with the schedule every method assumes (protocols.md §0)."""
    from unlearnbench.diffusion import SCHEDULER_CONFIG

    cfg, where = _scheduler_config(path, subfolder)
    if cfg is None:
        return {"scheduler": f"no scheduler_config.json with the model; assumed {SCHEDULER_CONFIG}"}
    bad = {k: (cfg[k], v) for k, v in SCHEDULER_CONFIG.items() if k in cfg and cfg[k] != v
           and not (isinstance(v, float) and abs(float(cfg[k]) - v) < 1e-12)}
    if bad:
        raise ValueError(f"the base model's scheduler ({where}) differs from the DDPM schedule the methods use: "
                         + ", ".join(f"{k}={got!r} (expected {want!r})" for k, (got, want) in bad.items()))
    return {"scheduler": where}


def find_unet_subfolder(path: str, subfolder: str | None) -> str | None:
    """Where the UNet lives in a local base-model folder.

    Layouts of the real checkpoints: the UNet at the root (``google/ddpm-cifar10-32``,
    ``google/ddpm-ema-celebahq-256``), a pipeline folder with ``unet/``, or a training
    checkpoint with ``unet_ema/`` (ReTrack's MNIST ``checkpoint-117500``), preferred over ``unet/``.
    Hub ids are taken as given (root unless ``subfolder``).
    """
    local = Path(path)
    if subfolder or not local.exists():
        return subfolder
    if (local / "config.json").exists():
        return None
    for candidate in ("unet_ema", "unet"):
        if (local / candidate / "config.json").exists():
            return candidate
    raise FileNotFoundError(f"no diffusers UNet in {local}: expected config.json at its root, or a unet_ema/ or "
                            f"unet/ subfolder (save one with UNet2DModel.save_pretrained)")


def ema_or_raw(path: str, subfolder: str | None) -> str:
    """"ema", "raw" or "unknown": what the checkpoint's names say about its weights.

    ``unet_ema/`` (or an ``ema`` in the repo name, as in ``google/ddpm-ema-celebahq-256``) is EMA;
    ``unet/`` beside a ``unet_ema/`` is the raw training weights; anything else is not stated.
    """
    sub = (subfolder or "").lower()
    if "ema" in sub or (not sub and "ema" in Path(path).name.lower().split("-")):
        return "ema"
    if sub == "unet" and (Path(path) / "unet_ema").exists():
        return "raw"
    return "unknown"


def load_base_unet(path: str, subfolder: str | None = None) -> tuple[UNet2DModel, dict[str, Any]]:
    """A base UNet from a folder or hub id, its layout resolved, schedule checked, EMA-ness recorded."""
    sub = find_unet_subfolder(str(path), subfolder)
    scheduler = check_scheduler(str(path), sub)
    try:
        model = load_unet(path, sub)
    except OSError as err:  # a hub id offline, or a folder without weights: say what to pass
        raise WeightsMissingError(
            f"could not load the base UNet {path!r}{f' (subfolder {sub})' if sub else ''}: {err}\n"
            f"Online, the hub id downloads; offline, pass --base-model FOLDER holding a diffusers UNet "
            f"(e.g. `huggingface-cli download {path} --local-dir FOLDER` on a machine with internet)") from None
    weights = ema_or_raw(str(path), sub)
    return model, {"path": str(path), "subfolder": sub, "weights": weights, **scheduler,
                   "parameters": sum(p.numel() for p in model.parameters())}


def prepare(
    task: Task,
    tier: Tier,
    data: TaskData,
    device: torch.device,
    out: Path | None = None,
    only: tuple[str, ...] = (BASE, RETRAIN, CLASSIFIER),
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    data_root: Path | None = None,
) -> Path:
    """Train the missing artefacts of (task, tier) into ``out`` (default: the user cache)."""
    from unlearnbench.train import train_ddpm

    out = Path(out) if out else cache_dir(task.name, tier.name)
    from unlearnbench.imagesets import as_tensor

    for kind in only:
        folder = artefact_folder(kind, data.forget_set)
        if (out / weight_file(kind, data.forget_set)).exists() and not force:
            log(f"{kind}: already prepared in {out / folder}")
            continue
        log(f"{kind}: training for {task.name}/{tier.name} ...")
        started = time.time()
        if kind in (BASE, RETRAIN):
            retain = as_tensor(data.retain)
            train_data = torch.cat([retain, as_tensor(data.forget)]) if kind == BASE else retain
            model, info = train_ddpm(tier.unet, train_data, tier.base_training, seed=0, device=device,
                                     checkpoint_dir=out / folder / "checkpoints", progress=progress, log=log)
            model.save_pretrained(out / folder / "unet_ema")
        else:
            from unlearnbench.classifier import train_classifier

            info = train_classifier(tier.classifier, data, device, out / kind, data_root=data_root, progress=progress)
        info.update({"task": task.name, "task_version": task.version, "tier": tier.name,
                     "data_source": data.source, "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                     "torch": torch.__version__})
        atomic_write_json(out / folder / "info.json", info)
    write_manifest(out, f"python run_bench.py prepare --task {task.name} --tier {tier.name}")
    return out
