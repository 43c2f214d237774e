"""Prepared artefacts of a (task, tier): base model, retrain oracle and classifier.

Looked up, in order: ``--base-model`` (for the base only), the user cache
(``$UNLEARNBENCH_CACHE`` or ``~/.cache/unlearnbench``), then the weights shipped in the package.
Every file of an artefact folder (weights and configs) is checked against the sha256 in its
root's ``manifest.json`` before use, and the folder's content digest is part of every cell's
identity. ``run_bench.py prepare`` trains what is missing into a temporary folder and renames
it into place (a killed prepare leaves no half-prepared artefact); weights are saved as
diffusers folders / safetensors and never unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import UNet2DModel

from unlearnbench.diffusion import load_unet
from unlearnbench.errors import ArtefactCorruptError
from unlearnbench.io import atomic_write_json, file_lock, sha256_file
from unlearnbench.task import Task, TaskData, Tier
from unlearnbench.paths import assets_dir, cache_dir, file_safe

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
    return rel.replace("retrain/", f"retrain-{file_safe(forget_set)}/", 1) if kind == RETRAIN and forget_set else rel


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
        """The root holding a complete, verified ``kind`` (user cache first, then the shipped assets)."""
        folder = artefact_folder(kind, self.forget_set)
        cache, shipped = cache_dir(self.task.cache_name, self.tier.name), assets_dir(self.task.cache_name, self.tier.name)
        for root in (cache, shipped):
            if folder_state(root, kind, self.forget_set) == "complete":
                verify_folder(root, folder, shipped=root == shipped)
                return root
        return None

    def identity(self, kind: str) -> dict[str, Any]:
        """A prepared artefact's identity for the cell hash: where it is looked up and its content digest
        ("not prepared yet" only for a dry run's plan; ``run`` prepares the base before planning)."""
        folder = artefact_folder(kind, self.forget_set)
        root = self._dir_for(kind)
        digest = folder_digest(root, folder) if root is not None else "not prepared yet"
        return {"source": f"prepared:{self.task.name}/{self.tier.name}/{folder}", "sha256": digest}

    def base_identity(self) -> dict[str, Any]:
        """The identity of the model every cell unlearns: ``--base-model`` or the tier's published one by its
        content (``model_identity``), else the prepared base's."""
        source = self.base_source
        if not source:
            return self.identity(BASE)
        given = "--base-model" if self.base_model_path else f"tier {self.tier.name}"
        subfolder = self.base_subfolder if self.base_model_path else self.tier.base_subfolder
        name = Path(str(source)).name if Path(str(source)).exists() else str(source)
        return {"given_by": given, "name": name, **model_identity(str(source), subfolder, self.task.loads_own_base)}

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
                f"{cache_dir(self.task.cache_name, self.tier.name)} or {assets_dir(self.task.cache_name, self.tier.name)}. "
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
                info["weights_basis"] = "the published checkpoint's documentation (DDPM EMA weights, Ho et al. 2020)"
            return model, info
        root = self._need(BASE)
        return load_unet(root / "base" / "unet_ema"), {**self._info(root, BASE), "weights": "ema"}

    def folder(self, kind: str) -> Path:
        """The verified folder of a prepared artefact (e.g. to read the base model's training checkpoints)."""
        return self._need(kind) / artefact_folder(kind, self.forget_set)

    def retrain_model(self) -> tuple[UNet2DModel, dict[str, Any]]:
        root = self._need(RETRAIN)
        folder = artefact_folder(RETRAIN, self.forget_set)
        return load_unet(root / folder / "unet_ema"), self._info(root, RETRAIN)

    def classifier_dir(self) -> Path:
        """The folder holding the classifier (what torch-fidelity's extractor loads)."""
        return self._need(CLASSIFIER) / "classifier"

    def _info(self, root: Path, kind: str) -> dict[str, Any]:
        """The artefact's training record, content hashes and where it was found (no machine-specific path)."""
        folder = artefact_folder(kind, self.forget_set)
        info = json.loads((root / folder / "info.json").read_text())
        info["sha256"] = sha256_file(root / weight_file(kind, self.forget_set))
        info["content_sha256"] = folder_digest(root, folder)
        shipped = root == assets_dir(self.task.cache_name, self.tier.name)
        info["location"] = (f"{'package datasets/assets' if shipped else '$UNLEARNBENCH_CACHE'}/"
                            f"{self.task.name}/{self.tier.name}/{folder}")
        return info


MANIFEST_TOP_FILES = ("tuning.json",)  # tier-level files the manifest covers besides the artefact folders


def _is_artefact_path(rel: Path) -> bool:
    top = rel.parts[0]
    if any(part.startswith(".") for part in rel.parts) or "checkpoints" in rel.parts:
        return False
    if len(rel.parts) == 1:
        return top in MANIFEST_TOP_FILES
    return top in (BASE, CLASSIFIER) or top == RETRAIN or top.startswith(RETRAIN + "-")


def artefact_files(root: Path, folder: str | None = None) -> dict[str, str]:
    """sha256 of every artefact file under ``root`` (or only under ``folder``): weights, configs, info."""
    base = root / folder if folder else root
    files = sorted(f for f in base.rglob("*") if f.is_file()) if base.exists() else []
    rels = [f.relative_to(root) for f in files]
    return {str(rel): sha256_file(root / rel) for rel in rels if _is_artefact_path(rel)}


_VERIFIED: dict[tuple[str, str], tuple[Any, ...]] = {}  # (root, folder) -> stat signature verified in this process


def _signature(root: Path, folder: str) -> tuple[Any, ...]:
    files = sorted(f for f in (root / folder).rglob("*") if f.is_file() and _is_artefact_path(f.relative_to(root)))
    manifest = root / "manifest.json"
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in [*files, manifest] if f.exists())


def verify_folder(root: Path, folder: str, shipped: bool = False) -> None:
    """Check every file of ``root/folder`` against ``root/manifest.json``: same files, same sha256.

    Shipped assets must match exactly. In the user cache, a folder the manifest does not list yet
    (prepared by an older version, or a prepare killed between its rename and the manifest) is
    added to the manifest with a message; a file whose hash differs is always an error.
    """
    key = (str(root), folder)
    signature = _signature(root, folder)
    if _VERIFIED.get(key) == signature:
        return
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"command": None, "sha256": {}}
    listed = {rel: sha for rel, sha in manifest.get("sha256", {}).items() if rel.split("/", 1)[0] == folder}
    present = artefact_files(root, folder)
    changed = sorted(rel for rel in set(listed) & set(present) if listed[rel] != present[rel])
    missing = sorted(set(listed) - set(present))
    unlisted = sorted(set(present) - set(listed))
    rebuild = ("reinstall the package" if shipped else
               f"delete {root / folder} and run `python run_bench.py prepare` for this task and tier again")
    if changed or missing:
        what = "; ".join([*(f"{r}: sha256 differs from manifest.json" for r in changed),
                          *(f"{r}: listed in manifest.json but absent" for r in missing)])
        raise ArtefactCorruptError(f"{root / folder} does not match {manifest_path}: {what}. To fix it, {rebuild}")
    if unlisted:
        if shipped:
            raise ArtefactCorruptError(f"{root / folder} holds files {manifest_path} does not list: "
                                       f"{', '.join(unlisted)}. To fix it, {rebuild}")
        print(f"note: {manifest_path} did not list {', '.join(unlisted)}; their sha256 are recorded now", file=sys.stderr)
        with file_lock(root / ".prepare.lock"):
            write_manifest(root, manifest.get("command") or "python run_bench.py prepare")
        signature = _signature(root, folder)
    _VERIFIED[key] = signature


def verify_file(root: Path, rel: str) -> None:
    """Check one tier-level file (e.g. ``tuning.json``) against the shipped manifest."""
    manifest = json.loads((root / "manifest.json").read_text())
    expected = manifest["sha256"].get(rel)
    actual = sha256_file(root / rel)
    if expected != actual:
        raise ArtefactCorruptError(f"{root / rel} does not match {root / 'manifest.json'} "
                                   f"(sha256 {actual}, expected {expected}); reinstall the package")


def folder_digest(root: Path, folder: str) -> str:
    """One sha256 over the (path, sha256) of every file of an artefact folder: its content identity."""
    entries = artefact_files(root, folder)
    return hashlib.sha256(json.dumps(sorted(entries.items())).encode()).hexdigest()


def write_manifest(root: Path, command: str) -> None:
    """Record the sha256 of every prepared file (weights, configs, info) and the command that reproduces them."""
    atomic_write_json(root / "manifest.json", {"command": command, "sha256": artefact_files(root)})


def folder_state(root: Path, kind: str, forget_set: str | None = None) -> str:
    """"complete" (weights and info.json), "missing" (no folder) or "half" (a folder without them)."""
    folder = root / artefact_folder(kind, forget_set)
    if not folder.exists():
        return "missing"
    if (root / weight_file(kind, forget_set)).exists() and (folder / "info.json").exists():
        return "complete"
    return "half"


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
    """Fail unless the base model was trained with the schedule every method assumes (DDPM, Ho et al. 2020)."""
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


MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".txt", ".model", ".msgpack")
_DIGESTS: dict[tuple[Any, ...], str] = {}


def tree_digest(folder: Path) -> str:
    """sha256 over (relative path, sha256) of the model files in ``folder`` (recursively; hidden files and
    ``checkpoints/`` skipped), memoised per process by the files' sizes and mtimes."""
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix in MODEL_FILE_SUFFIXES
                   and not any(p.startswith(".") or p == "checkpoints" for p in f.relative_to(folder).parts))
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _DIGESTS:
        entries = [(str(f.relative_to(folder)), sha256_file(f)) for f in files]
        _DIGESTS[key] = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    return _DIGESTS[key]


def hub_revision(repo_id: str) -> str:
    """The hub commit a hub id resolves to: from the local hub cache, else asked online; or why not."""
    try:
        from huggingface_hub import try_to_load_from_cache

        for name in ("model_index.json", "config.json", "unet/config.json"):
            cached = try_to_load_from_cache(repo_id, name)
            if isinstance(cached, str):
                parts = Path(cached).parts
                return parts[parts.index("snapshots") + 1]
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            return "unresolved (offline and not in the local hub cache)"
        from huggingface_hub import HfApi

        return HfApi().model_info(repo_id, timeout=10).sha or "unresolved"
    except Exception as err:  # offline, unknown id, no network: the identity says so
        return f"unresolved ({type(err).__name__})"


def model_identity(path: str, subfolder: str | None, whole_folder: bool = False) -> dict[str, Any]:
    """The content identity of a base model given by folder or hub id, for the cell hash.

    A folder is identified by the sha256 of its files (the UNet folder and its scheduler config,
    or the whole folder for a pipeline), never by its path: swapping weights or editing a config
    at the same path is a different model. A hub id is identified by its resolved commit.
    """
    local = Path(path).expanduser()
    if not local.exists():
        return {"hub_id": path, "subfolder": subfolder, "revision": hub_revision(path)}
    if whole_folder:
        return {"sha256": tree_digest(local), "scope": "the whole folder"}
    sub = find_unet_subfolder(str(local), subfolder)
    unet_dir = local / sub if sub else local
    _, where = _scheduler_config(str(local), sub)
    scheduler = sha256_file(where) if Path(where).is_file() else None
    return {"sha256": tree_digest(unet_dir), "subfolder": sub, "scheduler_sha256": scheduler,
            "scope": f"{sub or 'the folder root'} and its scheduler config"}


def load_base_unet(path: str, subfolder: str | None = None) -> tuple[UNet2DModel, dict[str, Any]]:
    """A base UNet from a folder or hub id, its layout resolved, schedule checked, EMA-ness recorded."""
    sub = find_unet_subfolder(str(path), subfolder)
    scheduler = check_scheduler(str(path), sub)
    try:
        model = load_unet(path, sub)
    except OSError as err:  # a hub id offline, or a folder without weights: say what to pass
        where = f"{path!r}{f' (subfolder {sub})' if sub else ''}"
        if Path(path).expanduser().exists():
            raise WeightsMissingError(
                f"the folder {where} holds no loadable diffusers UNet: {err}\nSave one there with "
                f"UNet2DModel.save_pretrained (config.json and diffusion_pytorch_model.safetensors)") from None
        raise WeightsMissingError(
            f"could not load the base UNet {where}: {err}\n"
            f"Online, the hub id downloads; offline, pass --base-model FOLDER holding a diffusers UNet "
            f"(e.g. `huggingface-cli download {path} --local-dir FOLDER` on a machine with internet)") from None
    weights = ema_or_raw(str(path), sub)
    return model, {"path": str(path), "subfolder": sub, "weights": weights, **scheduler,
                   "parameters": sum(p.numel() for p in model.parameters()), **model_identity(str(path), sub)}


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
    """Train the missing artefacts of (task, tier) into ``out`` (default: the user cache).

    One preparer at a time per folder (a lock; a second waits, then finds the work done). Each
    artefact is trained into a temporary folder and renamed into place once complete, so a kill
    at any moment leaves either no artefact or a whole one; a half-prepared folder from an older
    version is detected and prepared again.
    """
    out = Path(out) if out else cache_dir(task.cache_name, tier.name)
    out.mkdir(parents=True, exist_ok=True)
    with file_lock(out / ".prepare.lock"):
        for stale in out.glob(".*.partial-*"):  # left by a killed prepare (we hold the lock: nobody else is writing)
            shutil.rmtree(stale, ignore_errors=True)
        for kind in only:
            folder = artefact_folder(kind, data.forget_set)
            state = folder_state(out, kind, data.forget_set)
            if state == "complete" and not force:
                log(f"{kind}: already prepared in {out / folder}")
                continue
            if state == "half":
                log(f"{kind}: {out / folder} is half-prepared (no weights or no info.json); preparing it again")
            stage = Path(tempfile.mkdtemp(dir=out, prefix=f".{folder}.partial-"))
            try:
                _train_artefact(kind, task, tier, data, device, stage, progress, log, data_root)
                _replace_folder(stage, out / folder)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
        write_manifest(out, f"python run_bench.py prepare --task {task.name} --tier {tier.name}")
    return out


def _train_artefact(kind: str, task: Task, tier: Tier, data: TaskData, device: torch.device, stage: Path,
                    progress: bool, log: Callable[[str], None], data_root: Path | None) -> None:
    """Train one artefact into ``stage``; ``info.json`` is written last (a folder with it is complete)."""
    from unlearnbench.imagesets import as_tensor
    from unlearnbench.train import train_ddpm

    log(f"{kind}: training for {task.name}/{tier.name} ...")
    started = time.time()
    if kind in (BASE, RETRAIN):
        retain = as_tensor(data.retain)
        train_data = torch.cat([retain, as_tensor(data.forget)]) if kind == BASE else retain
        model, info = train_ddpm(tier.unet, train_data, tier.base_training, seed=0, device=device,
                                 checkpoint_dir=stage / "checkpoints", progress=progress, log=log)
        model.save_pretrained(stage / "unet_ema")
    else:
        info = task.train_classifier(tier.classifier, data, device, stage, data_root=data_root, progress=progress)
    info.update({"task": task.name, "task_version": task.version, "tier": tier.name,
                 "data_source": data.source, "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                 "torch": torch.__version__})
    atomic_write_json(stage / "info.json", info)


def _replace_folder(stage: Path, target: Path) -> None:
    """Rename ``stage`` to ``target``; an existing ``target`` (forced or half-prepared) is moved aside first."""
    if target.exists():
        aside = target.parent / f".{target.name}.partial-old-{os.getpid()}"
        os.replace(target, aside)
        shutil.rmtree(aside, ignore_errors=True)
    os.replace(stage, target)
