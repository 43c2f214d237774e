"""ReTrack: redirect the forget sample's denoising trajectory to its K nearest retain samples.

For a clean forget sample a with retain neighbours n_1..n_K: x_a = γ_t a + σ_t ε,
v_j = (x_a − γ_t n_j)/σ_t, w = softmax_j(−||v_j||²/2),
L_unlearn = mean_b Σ_j w_j ||ε_θ(x_a, t) − v_j||², and
L = λ·L_unlearn + (1 − λ)·L_retain with L_retain the DDPM loss on an independent retain batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unlearnbench.diffusion import predict_noise, sum_sq
from unlearnbench.loop import Batch, StepContext
from unlearnbench.method import FineTuneMethod, UnlearnJob
from unlearnbench.neighbours import cached_knn_search
from unlearnbench.paths import cache_root
from unlearnbench.protocols import CELEBA_HQ, CIFAR10, MNIST_TSHIRT, STABLE_DIFFUSION
from unlearnbench.registry import METHODS


@dataclass(frozen=True)
class ReTrackHparams:
    k: int
    lam: float


def retrack_target(x_a: Tensor, gamma: Tensor, sigma: Tensor, neighbours: Tensor) -> tuple[Tensor, Tensor]:
    """Posterior-mean target v̄ = Σ_j w_j v_j and Σ_j w_j ||v_j||² for each sample.

    ``neighbours`` is (B, K, D) per-sample neighbours or (N, D) shared by all samples (the
    whole retain set). ||v_j||² is expanded as (||x||² − 2γ⟨x, n_j⟩ + γ²||n_j||²)/σ², so the
    (B, N, D) tensor of all v_j is never built.
    """
    b = x_a.shape[0]
    x, n = x_a.flatten(1).double(), neighbours.double()  # float64: the expansion cancels at small σ_t
    g, s = gamma.reshape(b, 1).double(), sigma.reshape(b, 1).double()
    if n.dim() == 2:
        cross = x @ n.T
        n_sq = n.pow(2).sum(1).unsqueeze(0)
    else:
        cross = torch.einsum("bd,bkd->bk", x, n)
        n_sq = n.pow(2).sum(2)
    v_sq = (x.pow(2).sum(1, keepdim=True) - 2 * g * cross + g.pow(2) * n_sq) / s.pow(2)
    w = torch.softmax(-v_sq / 2, dim=1)
    mean_n = w @ n if n.dim() == 2 else torch.einsum("bk,bkd->bd", w, n)
    v_bar = (x - g * mean_n) / s
    return v_bar.reshape_as(x_a).to(x_a.dtype), (w * v_sq).sum(1).to(x_a.dtype)


def retrack_unlearn_loss(pred: Tensor, v_bar: Tensor, v_sq_mean: Tensor) -> Tensor:
    """mean_b Σ_j w_j ||pred − v_j||² = mean_b (||pred||² − 2⟨pred, v̄⟩ + Σ_j w_j ||v_j||²)."""
    return (sum_sq(pred) - 2 * (pred * v_bar).flatten(1).sum(1) + v_sq_mean).mean()


@METHODS.register
class ReTrack(FineTuneMethod):
    order = 60
    Hparams = ReTrackHparams
    published = {
        MNIST_TSHIRT: {"k": 10, "lam": 0.005},
        CIFAR10: {"k": 10, "lam": 0.02},
        CELEBA_HQ: {"k": 10, "lam": 0.005},
        STABLE_DIFFUSION: {"k": 10, "lam": 0.5},
    }

    def setup(self, job: UnlearnJob) -> Tensor:
        """(len(forget), K, D) neighbours of every forget sample, searched once per distinct sample."""
        _, index = cached_knn_search(job.forget, job.retain, job.hparams.k, cache_root() / "knn")
        return job.retain[index.reshape(-1)].flatten(1).reshape(*index.shape, -1)

    def neighbours(self, ctx: StepContext, batch: Batch) -> Tensor:
        return ctx.state[batch.forget_index].to(ctx.device)

    def loss(self, ctx: StepContext, batch: Batch) -> Tensor:
        a, x = batch.forget, batch.retain
        t = ctx.timesteps(len(a))
        gamma, sigma = ctx.schedule.gamma(t, a), ctx.schedule.sigma(t, a)
        x_a = gamma * a + sigma * ctx.noise_like(a)
        v_bar, v_sq_mean = retrack_target(x_a, gamma, sigma, self.neighbours(ctx, batch))
        eps_r, t_r = ctx.noise_like(x), ctx.timesteps(len(x))
        x_r = ctx.schedule.add_noise(x, eps_r, t_r)
        # One batched forward for both branches: the UNet normalises per sample (GroupNorm), so
        # this equals two separate calls (tests/test_methods.py) and saves a launch per step.
        pred = predict_noise(ctx.model, torch.cat([x_a, x_r]), torch.cat([t, t_r]))
        pred_a, pred_r = pred[: len(a)], pred[len(a) :]
        loss_unlearn = retrack_unlearn_loss(pred_a, v_bar, v_sq_mean)
        loss_retain = sum_sq(pred_r - eps_r).mean()
        lam = ctx.hparams.lam
        return lam * loss_unlearn + (1 - lam) * loss_retain
