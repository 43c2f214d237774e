"""SISS: subtracted importance-sampled scores, with a defensive mixture and ONE forward pass.

x ~ R and a ~ A share ε and t; per sample m = a_t with probability λ, else x_t. With
d_x = ||m − γ_t x||²/(2σ_t²) and d_a = ||m − γ_t a||²/(2σ_t²), the importance weights
w_x = 1/((1−λ) + λ·e^{d_x−d_a}) and w_a = 1/((1−λ)·e^{d_a−d_x} + λ) are computed in log space
(logaddexp), which is exact for λ = 0 and λ = 1 as well. The update is
g = g_x − (C/||g_a||)·g_a with L_x, L_a the weighted ε-losses towards each branch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from unlearnbench.diffusion import predict_noise, sum_sq
from unlearnbench.loop import Batch, StepContext
from unlearnbench.method import GradientRuleMethod, dot
from unlearnbench.protocols import CELEBA_HQ, CIFAR10, MNIST_TSHIRT, STABLE_DIFFUSION
from unlearnbench.registry import METHODS


@dataclass(frozen=True)
class SISSHparams:
    lam: float  # defensive-mixture probability of the forget branch
    scaling_norm: float  # C


SISS_PUBLISHED = {
    MNIST_TSHIRT: {"lam": 0.5, "scaling_norm": 5.0},
    CIFAR10: {"lam": 0.5, "scaling_norm": 5.0},
    CELEBA_HQ: {"lam": 0.5, "scaling_norm": 500.0},
    STABLE_DIFFUSION: {"lam": 0.5, "scaling_norm": 750.0},
}


def _log(p: float) -> Tensor:
    return torch.tensor(math.log(p) if p > 0 else -math.inf, dtype=torch.float64)


def siss_log_weights(delta: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """log w_x and log w_a for δ = d_x − d_a (stable logistic form of the SISS weights)."""
    d = delta.double()
    log_w_x = -torch.logaddexp(_log(1 - lam).expand_as(d), _log(lam) + d)
    log_w_a = -torch.logaddexp(_log(1 - lam) - d, _log(lam).expand_as(d))
    return log_w_x.to(delta.dtype), log_w_a.to(delta.dtype)


def subtract_rescaled(g_x: list[Tensor], g_a: list[Tensor], scaling_norm: float) -> list[Tensor]:
    """g_x − (C/||g_a||)·g_a: the forget gradient is removed with norm exactly C."""
    coef = scaling_norm / dot(g_a, g_a).sqrt().clamp_min(1e-30)
    return [gx - coef * ga for gx, ga in zip(g_x, g_a)]


@METHODS.register
class SISS(GradientRuleMethod):
    order = 40
    version = 2  # 2: the rule is applied once per optimiser step to the accumulated gradients
    Hparams = SISSHparams
    published = SISS_PUBLISHED
    shared_forward = True  # L_x and L_a are two weightings of ONE forward pass on m

    def losses(self, ctx: StepContext, batch: Batch) -> tuple[Tensor, Tensor, float]:
        x, a = batch.retain, batch.forget
        lam = ctx.hparams.lam
        eps, t = ctx.noise_like(x), ctx.timesteps(len(x))
        gamma, sigma = ctx.schedule.gamma(t, x), ctx.schedule.sigma(t, x)
        x_t, a_t = gamma * x + sigma * eps, gamma * a + sigma * eps
        pick_forget = torch.rand(len(x), generator=ctx.generator).to(ctx.device) < lam
        m = torch.where(pick_forget.view(-1, 1, 1, 1), a_t, x_t)
        res_x, res_a = (m - gamma * x) / sigma, (m - gamma * a) / sigma  # targets: m's noise under each branch
        delta = (sum_sq(res_x) - sum_sq(res_a)) / 2  # d_x − d_a
        log_w_x, log_w_a = siss_log_weights(delta, lam)
        pred = predict_noise(ctx.model, m, t)
        loss_x = (log_w_x.exp() * sum_sq(pred - res_x)).mean()
        # g_a is used only through its direction: its weights are divided by their largest one (w_a = e^δ
        # overflows at λ = 0), a factor the loop's accumulation makes common to all micro-batches.
        log_c = float(log_w_a.max())
        log_c = log_c if math.isfinite(log_c) else 0.0  # every w_a underflowed: L_a is 0 anyway
        loss_a = ((log_w_a - log_c).exp() * sum_sq(pred - res_a)).mean()
        return loss_x, loss_a, log_c

    def rule(self, ctx: StepContext, g_x: list[Tensor], g_a: list[Tensor]) -> list[Tensor]:
        return subtract_rescaled(g_x, g_a, ctx.hparams.scaling_norm)
