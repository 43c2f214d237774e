"""The injection metrics of the pixel tasks (CIFAR-10, CelebA-HQ): the forget image noised to t = 250,
then denoised by the unlearned model; a copy is judged by SSCD or by pixel distance."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from unlearnbench.datasets.pixel.injection import INJECTION_T, denoise_injections, rms_distance
from unlearnbench.metrics import SSCD, EvalContext, MetricValue, register_metric
from unlearnbench.neighbours import cached_knn_search
from unlearnbench.paths import cache_root
from unlearnbench.sscd import COPY_THRESHOLD, SSCD_MISSING, sscd_model, sscd_similarity
from unlearnbench.uncertainty import bootstrap_replicates, proportion_bootstrap


def injection_passes(tier_eval: dict[str, Any]) -> tuple[float, float]:
    """UNet forward passes of the cell's injections (shared by every injection metric), none backward."""
    steps = tier_eval.get("injection_steps") or INJECTION_T + 1
    return tier_eval.get("injections", 16) * steps, 0.0


def injections(ctx: EvalContext) -> Tensor:
    """The cell's denoised injections, ``n`` per forget image in ``forget_image``'s order (computed once, shared
    by sscd / forget_rate / forget_rate_pixel); image i > 0 draws its own seeded noise."""
    if "injections" not in ctx.memo:
        n = ctx.tier_eval.get("injections", 16)
        ctx.memo["injections"] = torch.cat([
            denoise_injections(ctx.model, image[None], n=n, seed=ctx.seed + 7_919_003 * i, device=ctx.device,
                               steps=ctx.tier_eval.get("injection_steps"))
            for i, image in enumerate(ctx.forget_image)])
    return ctx.memo["injections"]


def injection_targets(ctx: EvalContext) -> Tensor:
    """The forget image each injection started from (row-aligned with ``injections``)."""
    return ctx.forget_image.repeat_interleave(len(injections(ctx)) // len(ctx.forget_image), dim=0)


def copies_by_image(ctx: EvalContext, copies: Tensor) -> dict[str, int]:
    """How many of each forget image's injections are copies, keyed by the image's name (records say which
    images were forgotten)."""
    names = ctx.forget_names
    per_image = copies.reshape(len(names), -1).sum(dim=1)
    return {name: int(count) for name, count in zip(names, per_image)}


def _injection_note(ctx: EvalContext) -> str:
    steps = ctx.tier_eval.get("injection_steps")
    per = "" if len(ctx.forget_image) == 1 else f" per forget image ({len(ctx.forget_image)} images)"
    return (f"{ctx.tier_eval.get('injections', 16)} seeded injections{per}: the forget image noised to t = 250, "
            f"denoised by DDPM {'250 -> 0, every step' if steps is None else f'250 -> 0 in {steps} steps'}")


def sscd_similarities(ctx: EvalContext) -> Tensor | None:
    """SSCD cosine similarity of each injection output to the forget image (None without SSCD weights)."""
    if not ctx.weights.get("sscd"):
        return None
    if "sscd" not in ctx.memo:
        ctx.memo["sscd"] = sscd_similarity(sscd_model(ctx), injections(ctx), injection_targets(ctx))
    return ctx.memo["sscd"]


@register_metric("sscd", weights=(SSCD,), higher_is_better=False, tolerance=0.05, order=60, passes=injection_passes,
                 implementation="mean SSCD cosine similarity (sscd_disc_mixup descriptors) between the forget image "
                                "and its injections denoised by the unlearned model (ReTrack's evaluation)")
def sscd(ctx: EvalContext) -> MetricValue:
    sims = sscd_similarities(ctx)
    if sims is None:
        return MetricValue(None, available=False, reason=SSCD_MISSING)
    return MetricValue(float(sims.mean()), n_samples=len(sims), reference="the forget image",
                       extra={"definition": _injection_note(ctx), "std": float(sims.std()) if len(sims) > 1 else 0.0,
                              "weights": str(ctx.weights.get("sscd"))})


def injection_copy_rate(ctx: EvalContext) -> MetricValue:
    """forget_rate of the injection tasks: the fraction of injections SSCD calls a copy, with its interval
    (the injections are independent seeded noisings: ``proportion_bootstrap``)."""
    sims = sscd_similarities(ctx)
    definition = (f"fraction of {_injection_note(ctx)}, whose SSCD similarity to the forget image exceeds "
                  f"{COPY_THRESHOLD} (the copy threshold of Somepalli et al. 2023)")
    if sims is None:
        return MetricValue(None, available=False, reason=SSCD_MISSING + "; forget_rate_pixel is computed without it",
                           implementation=definition)
    copies = sims > COPY_THRESHOLD
    return MetricValue(float(copies.float().mean()), n_samples=len(sims), reference="the forget image",
                       extra={"copies": int(copies.sum()), "threshold": COPY_THRESHOLD,
                              "copies_by_image": copies_by_image(ctx, copies)}, implementation=definition,
                       **proportion_bootstrap(copies, bootstrap_replicates(ctx.tier_eval), ctx.seed))


@register_metric("forget_rate_pixel", check=bootstrap_replicates,
                 higher_is_better=False, tolerance=0.05, order=50, passes=injection_passes,
                 percent=True, digits=1,
                 implementation="fraction of injections (forget image noised to t = 250, denoised by the unlearned "
                                "model) closer to the forget image than half the distance from the forget image to "
                                "its nearest retain image (RMS distance on [0, 1] pixels); no SSCD weights needed")
def forget_rate_pixel(ctx: EvalContext) -> MetricValue:
    outs = injections(ctx)
    sq, index = cached_knn_search(ctx.forget_image, ctx.retain, min(64, len(ctx.retain)), cache_root() / "knn")
    dims = ctx.forget_image[0].numel()
    nearest = (sq / dims).sqrt() / 2  # squared L2 on [−1, 1] pixels -> RMS on [0, 1] pixels, (N images, k)
    thresholds = nearest[:, 0] / 2  # each forget image's own threshold
    dist = rms_distance(outs, injection_targets(ctx))
    copies = dist < thresholds.repeat_interleave(len(outs) // len(thresholds))
    q = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    single = len(thresholds) == 1
    return MetricValue(
        float(copies.float().mean()), n_samples=len(outs), reference="the forget image",
        extra={"copies": int(copies.sum()),
               "threshold_rms": float(thresholds[0]) if single else [float(v) for v in thresholds],
               "nearest_retain_rms": [round(float(v), 5) for v in nearest[0, :10]],
               "injection_rms_quantiles": [round(float(v), 5) for v in torch.quantile(dist.double(), q)],
               "copies_by_image": copies_by_image(ctx, copies),
               "definition": _injection_note(ctx)},
        **proportion_bootstrap(copies, bootstrap_replicates(ctx.tier_eval), ctx.seed))
