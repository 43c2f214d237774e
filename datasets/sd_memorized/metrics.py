"""Metrics of the memorized-prompt Stable Diffusion task (as in SISS and ReTrack), each for both prompts.

They read the images ``SDMemorized.generate`` returned: ``ctx.sample_sets["samples"]`` (the ORIGINAL,
memorized prompt) and ``ctx.sample_sets["modified"]`` (the modified prompt the unlearning was conditioned
on), and the cell's prompt folder in ``ctx.data.extra["prompt_folder"]``. Weights come from the user
(``ctx.weights["clip"]``, ``ctx.weights["sscd"]``); without them a metric is reported unavailable with
the flag that supplies them. Each cell is one prompt; the leaderboard's mean over cells is the mean over
prompts (for ``success``: the fraction of prompts whose memorization is gone).
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unlearnbench.metrics import CLIP, EvalContext, MetricValue, register_metric
from unlearnbench.metrics import SSCD as SSCD_WEIGHTS
from unlearnbench.io import sha256_file
from unlearnbench.datasets.sd_memorized.pipeline import SSCD, PromptFolder
from unlearnbench.sscd import sscd_model

PROMPT_SETS = {"samples": "original prompt", "modified": "modified prompt"}

FORGET_RATE_IMPLEMENTATION = (
    "fraction of the {which}'s samples that the prompt's k-means classifier calls memorized: nearest of the "
    "centroids in the prompt folder's centroids.npz, in its feature space (raw 0-255 pixels, channels last, as the "
    "published ReTrack/SISS classifiers; or SSCD descriptors), is the memorized cluster")
SUCCESS_IMPLEMENTATION = (
    "1 if the prompt's k-means classifier calls none of the {which}'s samples memorized, else 0 (ReTrack/SISS "
    "success); its mean over prompts is the success rate")
CLIP_IQA_IMPLEMENTATION = (
    "CLIP-IQA (Wang et al. 2023): softmax over 100 x cosine(image, 'Good photo.' / 'Bad photo.'), probability "
    "of 'Good photo.', mean over the {which}'s samples (Hugging Face CLIPModel from --clip-weights)")
SSCD_IMPLEMENTATION = (
    "mean cosine similarity of SSCD descriptors (TorchScript from --sscd-weights, resize 288 + ImageNet "
    "normalisation) between the {which}'s samples and the prompt's reference memorized image")


def _samples(ctx: EvalContext, which: str) -> Tensor:
    if which in ctx.sample_sets:
        return ctx.sample_sets[which]
    if which == "samples":
        return ctx.samples
    raise KeyError(f"no {which!r} samples: the task's generate() returned {sorted(ctx.sample_sets)}")


def _folder(ctx: EvalContext) -> PromptFolder:
    folder = (ctx.data.extra if ctx.data is not None else {}).get("prompt_folder")
    if folder is None:
        raise ValueError("SD metrics need the cell's prompt folder in TaskData.extra['prompt_folder'] (task sd_memorized)")
    return folder




def memorized_mask(ctx: EvalContext, which: str) -> Tensor | MetricValue:
    """Which of the ``which`` samples the prompt's classifier calls memorized, or why that is unavailable."""
    key = f"memorized:{which}"
    if key in ctx.memo:
        return ctx.memo[key]
    folder = _folder(ctx)
    descriptor_model = None
    if folder.meta["feature"] == SSCD:
        weights = ctx.weights.get("sscd")
        if not weights:
            return MetricValue(None, available=False, reason="this prompt's classifier was fit on SSCD descriptors: "
                                                             "pass --sscd-weights PATH (the same file)")
        expected = folder.meta.get("sscd_weights_sha256")
        if expected and sha256_file(weights) != expected:
            return MetricValue(None, available=False, reason=f"--sscd-weights {weights} is not the SSCD model this "
                                                             f"prompt's classifier was fit with (sha256 {expected})")
        descriptor_model = sscd_model(ctx)
    ctx.memo[key] = torch.from_numpy(np.asarray(folder.is_memorized(_samples(ctx, which), descriptor_model)))
    return ctx.memo[key]


def forget_rate_of(ctx: EvalContext, which: str) -> MetricValue:
    """Fraction of the ``which`` samples classified memorized."""
    mask = memorized_mask(ctx, which)
    text = FORGET_RATE_IMPLEMENTATION.format(which=PROMPT_SETS[which])
    if isinstance(mask, MetricValue):
        mask.implementation = text
        return mask
    folder = _folder(ctx)
    return MetricValue(float(mask.float().mean()), n_samples=len(mask), implementation=text,
                       reference=f"k-means classifier of prompt {folder.meta['id']} ({folder.path / 'centroids.npz'})",
                       extra={"memorized": int(mask.sum())})


def success_of(ctx: EvalContext, which: str) -> MetricValue:
    mask = memorized_mask(ctx, which)
    if isinstance(mask, MetricValue):
        return mask
    return MetricValue(float(not bool(mask.any())), n_samples=len(mask), extra={"memorized": int(mask.sum())},
                       reference=f"k-means classifier of prompt {_folder(ctx).meta['id']}")


def clip_iqa_of(ctx: EvalContext, which: str) -> MetricValue:
    from unlearnbench.datasets.sd_memorized.clip_iqa import clip_iqa_scores, load_clip

    if not ctx.weights.get("clip"):
        return MetricValue(None, available=False, reason="no CLIP weights: pass --clip-weights PATH (a CLIPModel "
                                                         "folder or hub id, e.g. openai/clip-vit-base-patch32)")
    if "clip" not in ctx.memo:
        ctx.memo["clip"] = load_clip(ctx.weights["clip"], ctx.device)
    scores = clip_iqa_scores(ctx.memo["clip"], _samples(ctx, which))
    return MetricValue(float(scores.mean()), n_samples=len(scores), reference="none (unary)",
                       extra={"clip_weights": ctx.weights["clip"], "std": float(scores.std(unbiased=False))})


def sscd_memorized_of(ctx: EvalContext, which: str) -> MetricValue:
    from unlearnbench.sscd import sscd_similarity

    if not ctx.weights.get("sscd"):
        return MetricValue(None, available=False, reason="no SSCD weights: pass --sscd-weights PATH "
                                                         "(sscd_disc_mixup.torchscript.pt)")
    folder = _folder(ctx)
    sims = sscd_similarity(sscd_model(ctx), _samples(ctx, which), folder.reference)
    return MetricValue(float(sims.mean()), n_samples=len(sims),
                       reference=f"reference memorized image {folder.path / 'reference.png'}",
                       extra={"max": float(sims.max())})


@register_metric("forget_rate_modified", higher_is_better=False, tolerance=0.01, order=20, percent=True, digits=1,
                 implementation=FORGET_RATE_IMPLEMENTATION.format(which="modified prompt"))
def forget_rate_modified(ctx: EvalContext) -> MetricValue:
    return forget_rate_of(ctx, "modified")


def _register_for_both_prompts(name: str, of: Any, template: str, higher_is_better: bool, order: int,
                               tolerance: float | None = None, percent: bool = False,
                               weights: tuple[str, ...] = ()) -> None:
    """``name`` scores the original prompt's samples, ``name_modified`` the modified prompt's (next column)."""
    for which, suffix, column in (("samples", "", order), ("modified", "_modified", order + 10)):
        register_metric(name + suffix, higher_is_better=higher_is_better, tolerance=tolerance, order=column,
                        percent=percent, digits=1 if percent else 2, weights=weights,
                        implementation=template.format(which=PROMPT_SETS[which]))(functools.partial(of, which=which))


_register_for_both_prompts("success", success_of, SUCCESS_IMPLEMENTATION, higher_is_better=True, order=30,
                           percent=True)
_register_for_both_prompts("clip_iqa", clip_iqa_of, CLIP_IQA_IMPLEMENTATION, higher_is_better=True, order=140,
                           tolerance=0.02, weights=(CLIP,))
_register_for_both_prompts("sscd_memorized", sscd_memorized_of, SSCD_IMPLEMENTATION, higher_is_better=False,
                           order=70, tolerance=0.02, weights=(SSCD_WEIGHTS,))
