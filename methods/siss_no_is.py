"""SISS (No IS): two forward passes (x_t and a_t with the same ε and t), no importance weights,
the same rescaled subtraction g = g_x − (C/||g_a||)·g_a."""
from __future__ import annotations

from dataclasses import dataclass

from unlearnbench.diffusion import predict_noise, sum_sq
from unlearnbench.loop import Batch, StepContext
from unlearnbench.method import FineTuneMethod
from unlearnbench.methods.siss import SISS_PUBLISHED, subtract_rescaled
from unlearnbench.registry import METHODS


@dataclass(frozen=True)
class SISSNoISHparams:
    scaling_norm: float


@METHODS.register("siss_no_is")
class SISSNoIS(FineTuneMethod):
    name = "siss_no_is"
    Hparams = SISSNoISHparams
    published = {family: {"scaling_norm": v["scaling_norm"]} for family, v in SISS_PUBLISHED.items()}

    def accumulate(self, ctx: StepContext, batch: Batch, scale: float) -> float:
        x, a = batch.retain, batch.forget
        eps, t = ctx.noise_like(x), ctx.timesteps(len(x))
        loss_x = sum_sq(predict_noise(ctx.model, ctx.schedule.add_noise(x, eps, t), t) - eps).mean()
        loss_a = sum_sq(predict_noise(ctx.model, ctx.schedule.add_noise(a, eps, t), t) - eps).mean()
        subtract_rescaled(ctx, loss_x, loss_a, scale)
        return float(loss_x.detach())
