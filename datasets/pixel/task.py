"""What the published pixel-space tasks with one forget image per run share (CIFAR-10, CelebA-HQ).

Each run forgets ONE training image (a forget set, named by its index or file stem); the base
model is a published diffusers checkpoint; the forget rate is measured by injections
(``injection.py`` in this folder), not by counting copies among free samples.
"""
from __future__ import annotations

import re
from typing import Any

from unlearnbench.loop import LoopConfig
from unlearnbench.datasets.pixel.metrics import injection_copy_rate
from unlearnbench.metrics import EvalContext, MetricValue
from unlearnbench.sampling import SamplerConfig
from unlearnbench.task import Task, TaskData, Tier, TrainRecipe
from unlearnbench.verification import MEMBERSHIP_METRICS, RELEARN_METRICS

#: The metrics of the injection tasks (after ReTrack's evaluation), in the order a run's table lists them.
PIXEL_METRICS = ("forget_rate", "forget_rate_pixel", "sscd", "nll", *MEMBERSHIP_METRICS, *RELEARN_METRICS, "fid",
                 "kid", "inception_score", "unlearn_seconds", "unet_forward", "unet_backward")

def smoke_unet(size: int) -> dict[str, Any]:
    """A tiny RGB UNet for the smoke tier (tests): seconds on a CPU, numbers mean nothing."""
    return {"sample_size": size, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
            "block_out_channels": (8, 16), "norm_num_groups": 4,
            "down_block_types": ("DownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "UpBlock2D")}


#: Test-tier evaluation: 4 injections in 2 steps, a 32-image FID reference, FID on Inception's 64-d layer
#: (the 2048-d Fréchet step alone takes ~9 s on a CPU), NLL at ODE tolerance 1e-3 (~100 instead of ~1,000
#: model evaluations), 16 holdout images, 2 relearning steps; every shortcut is written into the record.
SMOKE_EVAL = {"injections": 4, "injection_steps": 2, "fid_reference_size": 32, "fid_feature_layer": "64",
              "nll_probes": 1, "nll_tolerance": 1e-3, "mia_holdout": 16, "relearn_steps": 2}


def smoke_tier(size: int, forget_set: str) -> Tier:
    """The test tier of a pixel task: a tiny UNet trained for 30 steps unless --base-model is given."""
    return Tier(
        name="smoke", unet=smoke_unet(size),
        base_training=TrainRecipe(steps=30, batch_size=8, lr=1e-3, warmup_steps=5),
        unlearning=LoopConfig(steps=2, batch_size=4, lr=1e-4),
        sampler=SamplerConfig(kind="ddim", steps=2, num_samples=16, batch_size=16),
        classifier=None, seeds=(0,), metrics=PIXEL_METRICS, forget_sets=(forget_set,), eval=SMOKE_EVAL,
        description="seconds, for tests: a tiny model, 2 unlearning steps, 2-step samplers; numbers mean nothing",
    )


def forget_members(forget_set: str, what: str) -> list[int]:
    """The image numbers of a forget set: ``10000`` (the published one image per cell), ``10000+10003`` or
    ``10000-10009`` (several images forgotten together in one cell; ranges include both ends)."""
    from unlearnbench.validate import UsageError

    members: list[int] = []
    for token in forget_set.split("+"):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", token.strip())
        if not match or (match[2] and int(match[2]) < int(match[1])):
            raise UsageError(f"forget set {forget_set!r}: {token!r} is not {what} or a range LO-HI of them")
        members.extend(range(int(match[1]), int(match[2] or match[1]) + 1))
    repeated = sorted({m for m in members if members.count(m) > 1})
    if repeated:
        raise UsageError(f"forget set {forget_set!r} names {', '.join(map(str, repeated))} twice")
    return members


class PixelTask(Task):
    """Base of CIFAR-10 and CelebA-HQ: forget images named by number (one per cell as published, or several
    together), injection-based forget rate."""

    default_tier = "paper"

    def forget_rate(self, ctx: EvalContext) -> MetricValue:
        return injection_copy_rate(ctx)

    def check_model(self, model: Any, data: TaskData) -> None:
        size = getattr(getattr(model, "config", None), "sample_size", None)
        if size is not None and size != data.forget_image.shape[-1]:
            raise ValueError(f"the base model generates {size}x{size} images but task {self.name!r} data are "
                             f"{data.forget_image.shape[-1]}x{data.forget_image.shape[-1]}")
