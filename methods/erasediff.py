"""EraseDiff, as re-implemented by SISS and ReTrack (first-order, no BOME inner loop).

L_x = DDPM loss on a retain batch; L_a = ||ε_θ(a_t, t) − u||² with u ~ U[0, 1) drawn fresh
each step (a_t is built with Gaussian ε; the uniform noise is only the target). Update:
g = g_x + max(η − ⟨g_x, g_a⟩ / ||g_a||², 0) · g_a.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unlearnbench.diffusion import ddpm_loss, predict_noise, sum_sq
from unlearnbench.loop import Batch, StepContext
from unlearnbench.method import GradientRuleMethod, dot
from unlearnbench.protocols import CELEBA_HQ, CIFAR10, MNIST_TSHIRT, STABLE_DIFFUSION
from unlearnbench.registry import METHODS


@dataclass(frozen=True)
class EraseDiffHparams:
    eta: float


def erasediff_direction(g_x: list[Tensor], g_a: list[Tensor], eta: float) -> list[Tensor]:
    """g_x + max(η − ⟨g_x, g_a⟩/||g_a||², 0) · g_a."""
    coef = torch.clamp(eta - dot(g_x, g_a) / dot(g_a, g_a).clamp_min(1e-30), min=0.0)
    return [gx + coef * ga for gx, ga in zip(g_x, g_a)]


@METHODS.register
class EraseDiff(GradientRuleMethod):
    order = 30
    version = 2  # 2: the rule is applied once per optimiser step to the accumulated gradients
    Hparams = EraseDiffHparams
    published = {
        MNIST_TSHIRT: {"eta": 1e-3},
        CIFAR10: {"eta": 1e-3},
        CELEBA_HQ: {"eta": 1e-3},
        STABLE_DIFFUSION: {"eta": 1e-2},
    }

    def losses(self, ctx: StepContext, batch: Batch) -> tuple[Tensor, Tensor, float]:
        x, a = batch.retain, batch.forget
        loss_x = ddpm_loss(ctx.model, ctx.schedule, x, ctx.noise_like(x), ctx.timesteps(len(x)))
        t_a = ctx.timesteps(len(a))
        a_t = ctx.schedule.add_noise(a, ctx.noise_like(a), t_a)
        loss_a = sum_sq(predict_noise(ctx.model, a_t, t_a) - ctx.uniform_like(a)).mean()
        return loss_x, loss_a, 0.0

    def rule(self, ctx: StepContext, g_x: list[Tensor], g_a: list[Tensor]) -> list[Tensor]:
        return erasediff_direction(g_x, g_a, ctx.hparams.eta)
