"""SalUn (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both Image
Classification and Generation", ICLR 2024): update only the weights most salient to the forget loss.

Before unlearning, once: g = ∇_θ L_DDPM(θ₀; forget set), m = 1[|g| among the top ``fraction`` of all weights]
(one global ranking; published 50%). Then every step θ ← θ − η · m ⊙ ∇(L_f + α · L_r).

SalUn's DDPM forget loss (official ``DDPM/runners/diffusion.py``, ``--method rl``) matches the model's
prediction on a noised forget image to its own prediction under another class label. Data unlearning has
no labels, so the default forget loss here is the adaptation closest to it: the prediction is pulled to
what it would be were x_t a noised retain image near the forget image (the posterior mean v̄ of
``retrack_target`` over the forget image's ``k`` nearest retain images, as ReTrack), with RL's element-mean
squared error; L_r is the DDPM loss on the retain batch. ``base`` puts the same mask over any registered
fine-tuning method instead (``--set salun.base=retrack``); that method's published values for the task's
protocol apply.

Published DDPM settings (official ``DDPM/README.md`` and ``configs/cifar10_saliency_unlearn.yml``,
commit a6e89fd): α = 1e-3, Adam lr 1e-4, batch 128, gradient clipping 1.0, the mask over the top 50%.
The mask here is computed from scratch, not from the official ``generate_mask`` (it clips each batch's
gradient before summing, so the ranking depends on the batching); the mask multiplies the update
direction before clipping (officially after).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from unlearnbench.diffusion import NoiseSchedule, ddpm_loss, predict_noise, sum_sq
from unlearnbench.loop import Batch, StepContext
from unlearnbench.method import FineTuneMethod, UnlearnJob
from unlearnbench.methods.retrack import retrack_target
from unlearnbench.neighbours import cached_knn_search
from unlearnbench.paths import cache_root
from unlearnbench.protocols import PROTOCOLS
from unlearnbench.registry import METHODS

DEFAULT_LOSS = ""  # ``base`` naming no method: SalUn's own (adapted) forget loss


@dataclass(frozen=True)
class SalUnHparams:
    fraction: float  # the share of weights the mask keeps (the most salient ones)
    alpha: float  # weight of the retain loss in the default forget loss L_f + α·L_r
    base: str = DEFAULT_LOSS  # a registered fine-tuning method to mask instead of the default loss
    k: int = 10  # retain neighbours behind the default loss's target

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"salun.fraction is {self.fraction}; it must lie in (0, 1]")
        if self.base != DEFAULT_LOSS:
            method = METHODS.get(self.base)
            if not method.finetunes or method.role != "unlearning" or method.name == "salun":
                raise ValueError(f"salun.base={self.base}: the mask wraps a fine-tuning unlearning method "
                                 f"(e.g. retrack, siss, naive_deletion), not {method.name!r}")


@dataclass
class SalUnState:
    mask: list[Tensor]  # one 0/1 tensor per trainable parameter
    neighbours: Tensor | None = None  # (len(forget), k, D): the default loss's retain neighbours
    base: FineTuneMethod | None = None
    base_hparams: Any = None
    base_state: Any = None


def saliency_mask(model: torch.nn.Module, forget: Tensor, schedule: Any, fraction: float, batch_size: int,
                  seed: int, device: torch.device) -> list[Tensor]:
    """m = 1[|∇_θ L_DDPM(θ; forget set)| in the top ``fraction``], ranked over all weights together.

    The gradient is summed over the forget set in batches, with seeded noise and timesteps; the model is in
    eval mode (as the official mask) and its ``.grad`` is cleared afterwards."""
    params = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(seed + 3)
    model.eval()
    grads = [torch.zeros_like(p) for p in params]
    for start in range(0, len(forget), batch_size):
        a = forget[start : start + batch_size].to(device)
        noise = torch.randn(a.shape, generator=generator).to(device)
        loss = ddpm_loss(model, schedule, a, noise, schedule.sample_timesteps(len(a), generator, device))
        for g, gp in zip(grads, torch.autograd.grad(loss, params, allow_unused=True)):
            if gp is not None:
                g.add_(gp)
    scores = torch.cat([g.abs().flatten() for g in grads])
    keep = torch.zeros_like(scores)
    keep[torch.topk(scores, max(1, int(fraction * len(scores)))).indices] = 1
    return [m.reshape(p.shape) for m, p in zip(keep.split([p.numel() for p in params]), params)]


@METHODS.register
class SalUn(FineTuneMethod):
    order = 80
    Hparams = SalUnHparams
    published = {family: {"fraction": 0.5, "alpha": 1e-3} for family in PROTOCOLS}
    published_for = "CIFAR-10 class forgetting (official DDPM/ code)"

    def setup(self, job: UnlearnJob) -> SalUnState:
        h = job.hparams
        schedule = job.schedule or NoiseSchedule.from_scheduler()
        mask = saliency_mask(job.base_model, job.forget, schedule, h.fraction, job.loop.batch_size, job.seed,
                             job.device)
        if h.base == DEFAULT_LOSS:
            _, index = cached_knn_search(job.forget, job.retain, h.k, cache_root() / "knn")
            return SalUnState(mask, neighbours=job.retain[index.reshape(-1)].flatten(1).reshape(*index.shape, -1))
        base = METHODS.get(h.base)()
        base_hparams = base.hparams(job.protocol or "")
        return SalUnState(mask, base=base, base_hparams=base_hparams,
                          base_state=base.setup(dataclasses.replace(job, hparams=base_hparams)))

    def _inner(self, ctx: StepContext) -> StepContext:
        """The step as the wrapped method sees it: its own hyper-parameters and state (same model, noise, grads)."""
        return dataclasses.replace(ctx, hparams=ctx.state.base_hparams, state=ctx.state.base_state)

    def accumulate(self, ctx: StepContext, batch: Batch, scale: float) -> float:
        if ctx.state.base is None:
            return super().accumulate(ctx, batch, scale)
        return ctx.state.base.accumulate(self._inner(ctx), batch, scale)

    def finish_step(self, ctx: StepContext) -> None:
        """The wrapped method's update direction (or the default loss's gradient), masked: m ⊙ ∇."""
        if ctx.state.base is not None:
            ctx.state.base.finish_step(self._inner(ctx))
        for p, m in zip(ctx.params(), ctx.state.mask):
            if p.grad is not None:
                p.grad.mul_(m)

    def loss(self, ctx: StepContext, batch: Batch) -> Tensor:
        """L_f + α·L_r: the forget image's prediction pulled to the one its retain neighbours call for (element
        mean, as RL's MSE), plus the DDPM loss on the retain batch (pixel sum, batch mean)."""
        a, x = batch.forget, batch.retain
        t = ctx.timesteps(len(a))
        gamma, sigma = ctx.schedule.gamma(t, a), ctx.schedule.sigma(t, a)
        x_a = gamma * a + sigma * ctx.noise_like(a)
        v_bar, _ = retrack_target(x_a, gamma, sigma, ctx.state.neighbours[batch.forget_index].to(ctx.device))
        eps_r, t_r = ctx.noise_like(x), ctx.timesteps(len(x))
        pred = predict_noise(ctx.model, torch.cat([x_a, ctx.schedule.add_noise(x, eps_r, t_r)]), torch.cat([t, t_r]))
        pred_a, pred_r = pred[: len(a)], pred[len(a) :]
        forget_loss = (pred_a - v_bar.detach()).pow(2).mean()
        return forget_loss + ctx.hparams.alpha * sum_sq(pred_r - eps_r).mean()
