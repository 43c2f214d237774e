"""NegGrad (gradient ascent): minimise −scale · L_A, the negated DDPM loss on forget samples.

``scale`` is SISS's "superfactor" (0.01 in its MNIST sweep); the ReTrack code, whose
hyper-parameter table this suite follows, uses the plain negated loss (scale 1).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from unlearnbench.diffusion import ddpm_loss
from unlearnbench.loop import Batch, StepContext
from unlearnbench.method import FineTuneMethod
from unlearnbench.protocols import PROTOCOLS
from unlearnbench.registry import METHODS


@dataclass(frozen=True)
class NegGradHparams:
    scale: float


@METHODS.register(aliases=("gradient_ascent",))
class NegGrad(FineTuneMethod):
    order = 20
    Hparams = NegGradHparams
    published = {family: {"scale": 1.0} for family in PROTOCOLS}

    def loss(self, ctx: StepContext, batch: Batch) -> Tensor:
        a = batch.forget
        return -ctx.hparams.scale * ddpm_loss(ctx.model, ctx.schedule, a, ctx.noise_like(a), ctx.timesteps(len(a)))
