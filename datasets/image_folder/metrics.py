"""Copy detection for ``image_folder``: which generated samples reproduce which forget image.

Pixels (default): a sample copies forget image i when its RMS distance to it on [0, 1] pixels is below
t_i. By default t_i = min(10/28, half the RMS distance from image i to its nearest retain image): the
ReTrack/SISS pixel criterion (``forget_rate_pixel``), capped at MNIST T-Shirt's L2 < 10 at 28x28 (an
RMS of 10/28). The half-distance keeps a sample that reproduces a retain neighbour from counting as a
copy of the forget image, in a folder of similar images where a fixed threshold would. ``--set
task.copy_threshold=T`` fixes t_i = T for every image instead.

SSCD (with ``--sscd-weights``): cosine similarity of SSCD descriptors above 0.5 (``bench/sscd.py``).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from unlearnbench.metrics import EvalContext, MetricValue, to_unit
from unlearnbench.neighbours import cached_knn_search
from unlearnbench.paths import cache_root
from unlearnbench.sscd import COPY_THRESHOLD, sscd_embed, sscd_model
from unlearnbench.task import TaskData
from unlearnbench.uncertainty import bootstrap_replicates, proportion_bootstrap

#: MNIST T-Shirt's copy criterion, L2 < 10 on [0, 1] pixels of a 28x28 image, as a per-pixel RMS.
MNIST_RMS = 10 / 28


def rms_distances(samples: Tensor, forget: Tensor) -> Tensor:
    """RMS distance on [0, 1] pixels of every sample (rows) to every forget image (columns)."""
    a, b = to_unit(samples).flatten(1).double(), to_unit(forget).flatten(1).double().to(samples.device)
    return (torch.cdist(a, b) / math.sqrt(a.shape[1])).float().cpu()


def copy_thresholds(data: TaskData, fixed: float) -> Tensor:
    """Each forget image's RMS threshold: ``fixed`` when positive, else min(10/28, half the RMS distance to its
    nearest retain image); memoised in ``data.extra`` with the nearest distances (records show them)."""
    if "copy_threshold_rms" not in data.extra:
        sq, _ = cached_knn_search(data.forget_image, data.retain, 1, cache_root() / "knn")
        nearest = (sq[:, 0] / data.forget_image[0].numel()).sqrt() / 2  # [−1, 1] squared L2 -> [0, 1] RMS
        data.extra["nearest_retain_rms"] = nearest
        data.extra["copy_threshold_rms"] = (torch.full_like(nearest, fixed) if fixed > 0
                                            else torch.clamp(nearest / 2, max=MNIST_RMS))
    return data.extra["copy_threshold_rms"]


def pixel_copies(samples: Tensor, data: TaskData, fixed: float) -> Tensor:
    """(samples, forget images): True where the sample is a pixel copy of that forget image."""
    return rms_distances(samples, data.forget_image) < copy_thresholds(data, fixed)[None, :]


def pixel_definition(fixed: float) -> str:
    rule = (f"t = {fixed:g} for every image (task.copy_threshold)" if fixed > 0 else
            f"t_i = min({MNIST_RMS:.4f}, half the RMS distance from image i to its nearest retain image): the "
            f"ReTrack/SISS pixel criterion capped at MNIST T-Shirt's L2 < 10 at 28x28")
    return (f"fraction of generated samples whose RMS distance on [0,1] pixels to some forget image i is below its "
            f"threshold, {rule}")


SSCD_DEFINITION = (f"fraction of generated samples whose SSCD cosine similarity (--sscd-weights descriptors) to some "
                   f"forget image exceeds {COPY_THRESHOLD} (the copy threshold of Somepalli et al. 2023)")


def folder_forget_rate(ctx: EvalContext, fixed: float) -> MetricValue:
    """The fraction of free samples that copy any forget image, with per-image counts in ``extra``
    (``copies_by_image``) and a bootstrap interval over the samples."""
    data, names = ctx.data, ctx.forget_names
    pixel = pixel_copies(ctx.samples, data, fixed)
    extra: dict[str, Any] = {
        "forget_images": names,
        "threshold_rms": dict(zip(names, (round(float(t), 5) for t in copy_thresholds(data, fixed)))),
        "nearest_retain_rms": dict(zip(names, (round(float(v), 5) for v in data.extra["nearest_retain_rms"]))),
    }
    if ctx.weights.get("sscd"):
        model = sscd_model(ctx)
        sims = sscd_embed(model, ctx.samples) @ sscd_embed(model, ctx.forget_image).T
        per_image, definition = sims > COPY_THRESHOLD, SSCD_DEFINITION
        extra.update(criterion="sscd", threshold=COPY_THRESHOLD, weights=str(ctx.weights["sscd"]),
                     pixel_copies_by_image=dict(zip(names, (int(c) for c in pixel.sum(0)))))
    else:
        per_image, definition = pixel, pixel_definition(fixed)
        extra["criterion"] = "pixel_rms"
    mask = per_image.any(dim=1)
    extra.update(copies=int(mask.sum()), copies_by_image=dict(zip(names, (int(c) for c in per_image.sum(0)))))
    return MetricValue(float(mask.float().mean()), n_samples=len(mask), reference=f"{len(names)} forget image(s)",
                       extra=extra, implementation=definition,
                       **proportion_bootstrap(mask, bootstrap_replicates(ctx.tier_eval), ctx.seed))
