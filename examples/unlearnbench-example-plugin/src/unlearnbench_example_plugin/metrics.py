"""``nearest_forget_l2``: how close the closest generated sample comes to a forget image.

A forget rate counts samples under a copy threshold; this reports the distance itself, so a model that
still almost reproduces the forget image shows it even when no sample crosses the threshold.
"""
from __future__ import annotations

import torch

from unlearnbench.metrics import EvalContext, Metric, MetricValue, to_unit


def nearest_forget_l2(ctx: EvalContext) -> MetricValue:
    """The smallest L2 distance (pixels in [0, 1]) between any generated sample and any forget image."""
    samples = to_unit(ctx.samples).flatten(1).double()
    forget = to_unit(ctx.forget_image).flatten(1).double()
    distances = torch.cdist(samples, forget)
    sample, image = divmod(int(distances.argmin()), distances.shape[1])
    return MetricValue(float(distances.min()), n_samples=len(samples), reference="the forget images",
                       extra={"nearest_sample": sample, "nearest_forget_image": ctx.forget_names[image]})


NEAREST_FORGET_L2 = Metric(
    name="nearest_forget_l2", higher_is_better=True, compute=nearest_forget_l2, order=45, digits=2,
    implementation="min over generated samples and forget images of the L2 distance on [0, 1] pixels "
                   "(unlearnbench-example-plugin)",
)
