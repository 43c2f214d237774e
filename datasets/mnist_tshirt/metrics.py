"""MNIST T-Shirt's own metrics: the T-shirt criterion behind its forget rate, and the classifier
metrics ``is_clf`` / ``fid_clf`` / ``kid_clf`` (SISS scores MNIST with a domain classifier, not Inception)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unlearnbench.metrics import (
    FIDELITY_OPTIONS, EvalContext, MetricValue, fid_reference, fidelity, register_metric, to_unit,
)
from unlearnbench.uncertainty import bootstrap_replicates, proportion_bootstrap
from unlearnbench.datasets.mnist_tshirt.classifier import TORCH_FIDELITY_NAME

#: A sample within this L2 distance of the T-shirt (pixels in [0, 1], 784-d) is a copy (SISS ``mnist_tshirt``).
TSHIRT_L2_THRESHOLD = 10.0
TSHIRT_FREQUENCY = ("fraction of generated samples with L2 distance < 10 to the forget image "
                    "(pixels in [0,1], 28x28 = 784-d): the SISS/ReTrack T-shirt frequency")


def tshirt_distance(samples: Tensor, forget_image: Tensor) -> Tensor:
    """L2 distance of each sample to its nearest forget image, on [0, 1] pixels, (N,)."""
    return tshirt_distances(samples, forget_image).min(dim=0).values


def tshirt_distances(samples: Tensor, forget_image: Tensor) -> Tensor:
    """L2 distance of each sample to each forget image, on [0, 1] pixels, (images, N)."""
    return torch.stack([(to_unit(samples) - to_unit(image[None])).flatten(1).norm(dim=1) for image in forget_image])


def tshirt_copies(samples: Tensor, forget_image: Tensor) -> Tensor:
    """True where a sample is a copy of a forget T-shirt (of any of them, when there are several)."""
    return tshirt_distance(samples, forget_image) < TSHIRT_L2_THRESHOLD


def tshirt_frequency(ctx: EvalContext) -> MetricValue:
    """MNIST T-Shirt's forget rate: the fraction of generated samples that are copies of a forget T-shirt, with
    its interval (the samples are independent draws: ``proportion_bootstrap``); with several T-shirts, each
    copy is also counted for the T-shirt it is nearest to (``copies_by_image``)."""
    mask = tshirt_copies(ctx.samples, ctx.forget_image)
    extra: dict[str, Any] = {"copies": int(mask.sum())}
    if len(ctx.forget_image) > 1:
        nearest = tshirt_distances(ctx.samples[mask], ctx.forget_image).argmin(dim=0)
        extra["copies_by_image"] = {name: int((nearest == i).sum()) for i, name in enumerate(ctx.forget_names)}
    return MetricValue(float(mask.float().mean()), n_samples=len(mask), reference="the forget image",
                       extra=extra, implementation=TSHIRT_FREQUENCY if len(ctx.forget_image) == 1 else
                       TSHIRT_FREQUENCY.replace("the forget image", f"the nearest of {len(ctx.forget_image)} forget images"),
                       **proportion_bootstrap(mask, bootstrap_replicates(ctx.tier_eval), ctx.seed))


def _classifier_scores(ctx: EvalContext, isc: bool = False, fid: bool = False,
                       kid: bool = False) -> dict[str, Any] | MetricValue:
    """torch-fidelity's numbers on the classifier's features of the kept samples, or why they cannot be computed.

    The classifier folder is hashed once per cell (the cache salt both metrics share)."""
    if ctx.classifier_dir is None:
        return MetricValue(None, available=False, reason="no classifier prepared: run `run_bench.py prepare`")
    if len(ctx.kept) < 10:
        return MetricValue(None, n_samples=len(ctx.kept), available=False,
                           reason=f"only {len(ctx.kept)} non-forget samples (10 splits need at least 10)")
    if "classifier_hash" not in ctx.memo:
        ctx.memo["classifier_hash"] = _dir_hash(ctx.classifier_dir)
    return fidelity(ctx, TORCH_FIDELITY_NAME, str(ctx.classifier_dir), isc=isc, fid=fid, kid=kid,
                    salt=ctx.memo["classifier_hash"])


def _dir_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(folder).iterdir()):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


@register_metric("is_clf", check=bootstrap_replicates,
                 higher_is_better=True, tolerance=0.05, relative=True, order=120, needs=("classifier",),
                 deltas=True, quality=True, collapse=0.5,
                 implementation="Inception-Score formula on the logits of the suite's MNIST classifier, 10 splits, "
                                "non-forget samples only (torch-fidelity isc, registered classifier extractor; max 10)")
def is_clf(ctx: EvalContext) -> MetricValue:
    out = _classifier_scores(ctx, isc=True, fid=False)
    if isinstance(out, MetricValue):
        return out
    return MetricValue(out["inception_score_mean"], n_samples=len(ctx.kept), reference="none (unary)",
                       extra={"std_over_splits": out["inception_score_std"]}, **out.get("isc_bootstrap", {}))


@register_metric("fid_clf", check=bootstrap_replicates,
                 higher_is_better=False, tolerance=0.25, relative=True, order=100, needs=("classifier",),
                 deltas=True, quality=True, collapse=10.0,
                 implementation="Frechet distance of the MNIST classifier's penultimate features, non-forget samples "
                                "vs the retain digits (torch-fidelity fid, registered classifier extractor, float64)")
def fid_clf(ctx: EvalContext) -> MetricValue:
    out = _classifier_scores(ctx, isc=False, fid=True)
    if isinstance(out, MetricValue):
        return out
    return MetricValue(out["frechet_inception_distance"], n_samples=len(ctx.kept),
                       reference=fid_reference(ctx).describe(), **out.get("fid_bootstrap", {}))


@register_metric("kid_clf", check=bootstrap_replicates,
                 higher_is_better=False, tolerance=0.25, relative=True, order=101, needs=("classifier",), deltas=True,
                 quality=True,
                 implementation="Kernel distance of the MNIST classifier's penultimate features (torch-fidelity kid: "
                                "unbiased MMD² with the cubic polynomial kernel, mean over 100 subsets of min(1000, "
                                "samples, references)), non-forget samples vs the retain digits")
def kid_clf(ctx: EvalContext) -> MetricValue:
    out = _classifier_scores(ctx, kid=True)
    if isinstance(out, MetricValue):
        return out
    return MetricValue(out["kernel_inception_distance_mean"], n_samples=len(ctx.kept),
                       reference=fid_reference(ctx).describe(),
                       extra={"subset_size": out["kid_subset_size"], "subsets": FIDELITY_OPTIONS["kid_subsets"],
                              "std_over_subsets": out["kernel_inception_distance_std"]},
                       **out.get("kid_bootstrap", {}))
