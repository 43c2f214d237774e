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


@dataclass
class Artifacts:
    """Locates, verifies and loads the prepared artefacts of one (task, tier)."""

    task: Task
    tier: Tier
    base_model_path: str | None = None
    base_subfolder: str | None = None

    def _dir_for(self, kind: str) -> Path | None:
        for root in (cache_dir(self.task.name, self.tier.name), assets_dir(self.task.name, self.tier.name)):
            if (root / WEIGHT_FILES[kind]).exists():
                if root == assets_dir(self.task.name, self.tier.name):
                    verify_manifest(root, kind)
                return root
        return None

    def missing(self) -> list[str]:
        kinds = [RETRAIN, CLASSIFIER] + ([] if self.base_model_path else [BASE])
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
        """The model to unlearn (EMA weights) and where it came from."""
        if self.base_model_path:
            model = load_unet(self.base_model_path, self.base_subfolder)
            return model, {"path": str(self.base_model_path), "subfolder": self.base_subfolder,
                           "weights": "as given (use the unet_ema subfolder for EMA weights)"}
        root = self._need(BASE)
        return load_unet(root / "base" / "unet_ema"), self._info(root, BASE)

    def retrain_model(self) -> tuple[UNet2DModel, dict[str, Any]]:
        root = self._need(RETRAIN)
        return load_unet(root / "retrain" / "unet_ema"), self._info(root, RETRAIN)

    def classifier(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        from unlearnbench.classifier import load_classifier

        root = self._need(CLASSIFIER)
        return load_classifier(root / "classifier"), self._info(root, CLASSIFIER)

    def classifier_dir(self) -> Path:
        """The folder holding the classifier (what torch-fidelity's extractor loads)."""
        return self._need(CLASSIFIER) / "classifier"

    def _info(self, root: Path, kind: str) -> dict[str, Any]:
        info = json.loads((root / kind / "info.json").read_text())
        info["sha256"] = sha256_file(root / WEIGHT_FILES[kind])
        info["location"] = str(root / kind)
        return info


def verify_manifest(root: Path, kind: str) -> None:
    """Check a shipped weights file against the sha256 recorded when it was prepared."""
    manifest = json.loads((root / "manifest.json").read_text())
    expected = manifest["sha256"][WEIGHT_FILES[kind]]
    actual = sha256_file(root / WEIGHT_FILES[kind])
    if actual != expected:
        raise RuntimeError(f"{root / WEIGHT_FILES[kind]} is corrupted: sha256 {actual} != {expected} in manifest.json")


def write_manifest(root: Path, command: str) -> None:
    """Record the sha256 of every prepared weights file and the command that reproduces them."""
    present = {rel: sha256_file(root / rel) for rel in WEIGHT_FILES.values() if (root / rel).exists()}
    atomic_write_json(root / "manifest.json", {"command": command, "sha256": present})


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
    for kind in only:
        if (out / WEIGHT_FILES[kind]).exists() and not force:
            log(f"{kind}: already prepared in {out / kind}")
            continue
        log(f"{kind}: training for {task.name}/{tier.name} ...")
        started = time.time()
        if kind in (BASE, RETRAIN):
            train_data = torch.cat([data.retain, data.forget]) if kind == BASE else data.retain
            model, info = train_ddpm(tier.unet, train_data, tier.base_training, seed=0, device=device,
                                     checkpoint_dir=out / kind / "checkpoints", progress=progress, log=log)
            model.save_pretrained(out / kind / "unet_ema")
        else:
            from unlearnbench.classifier import train_classifier

            info = train_classifier(tier.classifier, data, device, out / kind, data_root=data_root, progress=progress)
        info.update({"task": task.name, "task_version": task.version, "tier": tier.name,
                     "data_source": data.source, "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                     "torch": torch.__version__})
        atomic_write_json(out / kind / "info.json", info)
    write_manifest(out, f"python run_bench.py prepare --task {task.name} --tier {tier.name}")
    return out
