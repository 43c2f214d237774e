"""Metrics: each registered with its direction (``higher_is_better``) and implementation.

Sample metrics read an ``EvalContext`` (generated samples plus the task's references); cost
metrics read the unlearning log. A metric that cannot be computed (missing weights) returns
``available=False`` with the reason and the flag that supplies what is missing, never a
substitute number.
"""
from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from unlearnbench.registry import METRICS


@dataclass
class MetricValue:
    value: float | None
    n_samples: int | None = None
    reference: str | None = None
    available: bool = True
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    """A registered metric: how it is computed and which direction is better."""

    name: str
    higher_is_better: bool
    implementation: str
    kind: str  # "sample" (needs generated images) or "cost" (reads the unlearning log)
    compute: Callable[..., MetricValue]
    version: int = 1
    #: The regression gate's slack: a change worse than this (absolute, or relative to the baseline
    #: mean when ``relative``) fails; None: informational only (e.g. machine-dependent wall-clock).
    tolerance: float | None = None
    relative: bool = False


def register_metric(name: str, *, higher_is_better: bool, implementation: str, kind: str = "sample",
                    version: int = 1, tolerance: float | None = None,
                    relative: bool = False) -> Callable[[Callable[..., MetricValue]], Callable[..., MetricValue]]:
    def decorator(fn: Callable[..., MetricValue]) -> Callable[..., MetricValue]:
        METRICS.add(name, Metric(name, higher_is_better, implementation, kind, fn, version, tolerance, relative))
        return fn

    return decorator


@dataclass
class EvalContext:
    """Generated samples and everything the sample metrics compare them with."""

    samples: Tensor  # [−1, 1], (N, C, H, W)
    forget_image: Tensor  # (1, C, H, W)
    retain: Tensor  # the reference set for FID
    classifier_dir: Path | None
    cache_dir: Path
    device: torch.device
    inception_weights: str | None = None
    _forget_mask: Tensor | None = None

    @property
    def forget_mask(self) -> Tensor:
        """True where a sample is a copy of the forget image (the forget-rate criterion)."""
        if self._forget_mask is None:
            self._forget_mask = tshirt_distance(self.samples, self.forget_image) < TSHIRT_L2_THRESHOLD
        return self._forget_mask

    @property
    def kept(self) -> Tensor:
        """Samples that are not copies of the forget image (what quality metrics score)."""
        return self.samples[~self.forget_mask]


TSHIRT_L2_THRESHOLD = 10.0


def to_unit(x: Tensor) -> Tensor:
    return (x.float() + 1) / 2


def to_uint8(x: Tensor) -> Tensor:
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def tshirt_distance(samples: Tensor, forget_image: Tensor) -> Tensor:
    """L2 distance of each sample to the forget image, on [0, 1] pixels."""
    return (to_unit(samples) - to_unit(forget_image)).flatten(1).norm(dim=1)


def content_hash(*tensors: Tensor, salt: str = "") -> str:
    """A cache name derived from content (never from a user-chosen label)."""
    h = hashlib.sha256(salt.encode())
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:24]


class _Images(torch.utils.data.Dataset):
    """uint8 image tensors, as torch-fidelity wants them."""

    def __init__(self, images: Tensor, channels: int | None = None) -> None:
        self.images = to_uint8(images)
        self.channels = channels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        img = self.images[i]
        return img.expand(self.channels, -1, -1).contiguous() if self.channels else img


def _fidelity(ctx: EvalContext, extractor: str, weights: str, isc: bool, fid: bool, channels: int | None = None,
              salt: str = "") -> dict[str, float]:
    import torch_fidelity

    kept = ctx.kept
    kwargs: dict[str, Any] = dict(
        input1=_Images(kept, channels), input1_cache_name="s" + content_hash(kept, salt=salt + extractor),
        feature_extractor=extractor, feature_extractor_weights_path=weights, isc=isc, fid=fid, isc_splits=10,
        cuda=ctx.device.type == "cuda", batch_size=256, save_cpu_ram=True, verbose=False,
        cache_root=str(ctx.cache_dir / "torch-fidelity"), cache=True,
    )
    if fid:
        kwargs.update(input2=_Images(ctx.retain, channels),
                      input2_cache_name="r" + content_hash(ctx.retain, salt=salt + extractor))
    return torch_fidelity.calculate_metrics(**kwargs)


@register_metric("forget_rate", higher_is_better=False, tolerance=0.01,
                 implementation="fraction of generated samples with L2 distance < 10 to the forget image "
                                "(pixels in [0,1], 28x28 = 784-d): the SISS/ReTrack T-shirt frequency")
def forget_rate(ctx: EvalContext) -> MetricValue:
    mask = ctx.forget_mask
    return MetricValue(float(mask.float().mean()), n_samples=len(mask), reference="the forget image",
                       extra={"copies": int(mask.sum())})


def _classifier_unavailable(ctx: EvalContext) -> MetricValue | None:
    import unlearnbench.classifier  # noqa: F401  (registers the classifier as a torch-fidelity extractor)

    if ctx.classifier_dir is None:
        return MetricValue(None, available=False, reason="no classifier prepared: run `run_bench.py prepare`")
    if len(ctx.kept) < 10:
        return MetricValue(None, n_samples=len(ctx.kept), available=False,
                           reason=f"only {len(ctx.kept)} non-forget samples (10 splits need at least 10)")
    return None


@register_metric("is_clf", higher_is_better=True, tolerance=0.05, relative=True,
                 implementation="Inception-Score formula on the logits of the suite's MNIST classifier, 10 splits, "
                                "non-forget samples only (torch-fidelity isc, registered classifier extractor; max 10)")
def is_clf(ctx: EvalContext) -> MetricValue:
    missing = _classifier_unavailable(ctx)
    if missing:
        return missing
    out = _fidelity(ctx, "unlearnbench-mnist-classifier", str(ctx.classifier_dir), isc=True, fid=False,
                    salt=_dir_hash(ctx.classifier_dir))
    return MetricValue(out["inception_score_mean"], n_samples=len(ctx.kept), reference="none (unary)",
                       extra={"std_over_splits": out["inception_score_std"]})


@register_metric("fid_clf", higher_is_better=False, tolerance=0.25, relative=True,
                 implementation="Frechet distance of the MNIST classifier's penultimate features, non-forget samples "
                                "vs the retain digits (torch-fidelity fid, registered classifier extractor, float64)")
def fid_clf(ctx: EvalContext) -> MetricValue:
    missing = _classifier_unavailable(ctx)
    if missing:
        return missing
    out = _fidelity(ctx, "unlearnbench-mnist-classifier", str(ctx.classifier_dir), isc=False, fid=True,
                    salt=_dir_hash(ctx.classifier_dir))
    return MetricValue(out["frechet_inception_distance"], n_samples=len(ctx.kept),
                       reference=f"retain set ({len(ctx.retain)} images)")


INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


def find_inception_weights(explicit: str | None) -> tuple[str | None, str]:
    """Path of torch-fidelity's Inception-v3 weights, or None with the reason.

    Order: ``--inception-weights``, torch's hub cache, torch-fidelity's download when online.
    A given file must load with ``torch.load(weights_only=True)`` (no pickled code).
    """
    if explicit:
        path = Path(explicit)
        if not path.exists():
            raise FileNotFoundError(f"--inception-weights {path} does not exist")
        torch.load(path, map_location="cpu", weights_only=True)
        return str(path), f"--inception-weights {path}"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.exists():
        torch.load(cached, map_location="cpu", weights_only=True)
        return str(cached), f"torch hub cache {cached}"
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _online():
        return None, (f"Inception-v3 weights not found (no --inception-weights, nothing at {cached}) and offline; "
                      f"pass --inception-weights PATH/{INCEPTION_FILE}")
    return None, "download"


def _online() -> bool:
    try:
        socket.create_connection(("github.com", 443), timeout=3).close()
        return True
    except OSError:
        return False


@register_metric("fid", higher_is_better=False, tolerance=0.10, relative=True,
                 implementation="Inception-v3 FID (torch-fidelity inception-v3-compat, 2048-d pool features, grayscale "
                                "repeated to 3 channels), non-forget samples vs the retain set")
def fid(ctx: EvalContext) -> MetricValue:
    weights, how = find_inception_weights(ctx.inception_weights)
    if weights is None and how != "download":
        return MetricValue(None, available=False, reason=how)
    channels = 3 if ctx.samples.shape[1] == 1 else None
    out = _fidelity(ctx, "inception-v3-compat", weights, isc=False, fid=True, channels=channels,
                    salt=weights or "download")
    return MetricValue(out["frechet_inception_distance"], n_samples=len(ctx.kept),
                       reference=f"retain set ({len(ctx.retain)} images)", extra={"weights": how})


def _dir_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(folder).iterdir()):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _cost(key: str) -> Callable[..., MetricValue]:
    def compute(log: Any) -> MetricValue:
        return MetricValue(float(getattr(log, key)))

    return compute


METRICS.add("unlearn_seconds", Metric("unlearn_seconds", False, "wall-clock of the unlearning method only "
            "(evaluation excluded, CUDA synchronised); retrain: the oracle's training time", "cost", _cost("seconds")))
METRICS.add("unet_forward", Metric("unet_forward", False, "UNet forward passes in units of one batch-per-branch "
            "(samples forwarded / batch size), counted by a forward hook", "cost", _cost("unet_forward"), tolerance=0.0))
METRICS.add("unet_backward", Metric("unet_backward", False, "UNet backward passes in units of one batch-per-branch, "
            "counted by a gradient hook on the UNet output", "cost", _cost("unet_backward"), tolerance=0.0))


def _deletion_step(log: Any) -> MetricValue:
    for ev in log.evaluations:
        if ev.get("forget_rate") == 0.0:
            return MetricValue(float(ev["step"]))
    if not log.evaluations:
        return MetricValue(None, available=False, reason="no evaluation during unlearning (use --eval-every N)")
    return MetricValue(None, available=True, reason="forget rate never reached 0 within the budget")


METRICS.add("deletion_step", Metric("deletion_step", False, "first unlearning step at which the forget rate "
            "(evaluated every --eval-every steps) is 0", "cost", _deletion_step))
