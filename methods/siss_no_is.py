"""SISS (No IS): two forward passes (x_t and a_t with the same ε and t), no importance weights,
the same rescaled subtraction g = g_x − (C/||g_a||)·g_a."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from unlearnbench.diffusion import predict_noise, sum_sq
from unlearnbench.loop import Batch, StepContext
from unlearnbench.method import GradientRuleMethod
from unlearnbench.methods.siss import SISS_PUBLISHED, subtract_rescaled
from unlearnbench.registry import METHODS


@dataclass(frozen=True)
class SISSNoISHparams:
    scaling_norm: float


@METHODS.register
class SISSNoIS(GradientRuleMethod):
    order = 50
    version = 2  # 2: the rule is applied once per optimiser step to the accumulated gradients
    Hparams = SISSNoISHparams
    published = {family: {"scaling_norm": v["scaling_norm"]} for family, v in SISS_PUBLISHED.items()}

    def losses(self, ctx: StepContext, batch: Batch) -> tuple[Tensor, Tensor, float]:
        x, a = batch.retain, batch.forget
        eps, t = ctx.noise_like(x), ctx.timesteps(len(x))
        loss_x = sum_sq(predict_noise(ctx.model, ctx.schedule.add_noise(x, eps, t), t) - eps).mean()
        loss_a = sum_sq(predict_noise(ctx.model, ctx.schedule.add_noise(a, eps, t), t) - eps).mean()
        return loss_x, loss_a, 0.0

    def rule(self, ctx: StepContext, g_x: list[Tensor], g_a: list[Tensor]) -> list[Tensor]:
        return subtract_rescaled(g_x, g_a, ctx.hparams.scaling_norm)
