"""naive deletion ("Vanilla"): keep training with the DDPM loss on the retain set only."""
from __future__ import annotations

from torch import Tensor

from unlearnbench.diffusion import ddpm_loss
from unlearnbench.loop import Batch, StepContext
from unlearnbench.method import FineTuneMethod
from unlearnbench.registry import METHODS


@METHODS.register(aliases=("vanilla",))
class NaiveDeletion(FineTuneMethod):
    order = 10

    def loss(self, ctx: StepContext, batch: Batch) -> Tensor:
        x = batch.retain
        return ddpm_loss(ctx.model, ctx.schedule, x, ctx.noise_like(x), ctx.timesteps(len(x)))
