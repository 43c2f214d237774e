"""NegGrad+ (Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023): descend on the retain
loss while ascending on the forget loss, L = β · L_retain − (1 − β) · L_forget, here with the DDPM loss.

β is not published for diffusion models; 0.99 keeps the ascent a small correction to retain training.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from unlearnbench.diffusion import ddpm_loss
from unlearnbench.loop import Batch, StepContext
from unlearnbench.method import FineTuneMethod


@dataclass(frozen=True)
class NegGradPlusHparams:
    beta: float = 0.99  # weight of the retain loss; 1 − beta weighs the negated forget loss


class NegGradPlus(FineTuneMethod):
    """NegGrad+: β · L_retain − (1 − β) · L_forget on the shared fine-tuning loop."""

    order = 25  # after NegGrad in tables
    Hparams = NegGradPlusHparams

    def loss(self, ctx: StepContext, batch: Batch) -> Tensor:
        beta = ctx.hparams.beta
        retain = ddpm_loss(ctx.model, ctx.schedule, batch.retain, ctx.noise_like(batch.retain),
                           ctx.timesteps(len(batch.retain)))
        forget = ddpm_loss(ctx.model, ctx.schedule, batch.forget, ctx.noise_like(batch.forget),
                           ctx.timesteps(len(batch.forget)))
        return beta * retain - (1 - beta) * forget
