"""Selective Amnesia: forget by learning a surrogate, remember by generative replay and an EWC penalty.

Heng & Soh, "Selective Amnesia: A Continual Learning Approach to Forgetting in Deep Generative Models",
NeurIPS 2023 (arXiv:2305.10120). For data unlearning (forget images A, unconditional DDPM, θ* the base weights):

    L(θ) = L_DDPM(θ; surrogate of A) + γ · L_DDPM(θ; replay) + λ · Σ_i F_i (θ_i − θ*_i)²,
    F_i  = mean_n (∂/∂θ_i Σ_t ||ε_θ*(x_{n,t}, t) − ε_{n,t}||²)²   (diagonal Fisher on base-model samples x_n),

the two DDPM terms sharing their timesteps, as the official code does.

Official code: github clear-nus/selective-amnesia, ``ddpm/`` at commit 589e8d4c7b3e (unchanged at b736571c2a4d):
``runners/diffusion.py`` (``save_fim``, ``train_forget``), ``functions/losses.py``, ``configs/cifar10_forget.yml``
and ``stl10_forget.yml`` (``gamma: 1``, ``lmbda: 10``, Adam lr 1e-4, grad clip 1.0, 20,000 iterations),
``README.md``. There the Fisher is taken in eval mode on 500 generated samples per class (5,000): each sample's
gradient is that of the noise loss summed over all 1,000 timesteps (a fresh ε each), squared, averaged over
samples; the samples come from 1,000-step generalized sampling (η = 1, guidance 2); the forgotten class's target
is uniform noise in [−1, 1]; the replay set is the generated samples of the other classes.

Adapted here (each a hyper-parameter): the Fisher's sum over timesteps is estimated from ``fisher_timesteps``
stratified timesteps per sample weighted by their strata's widths (1000 is the official sum), on ``fisher_samples``
samples; samples come from ``sampler_steps``-step DDIM (η = 0) on the task's schedule (``unlearnbench.sampling``).
The defaults (128 replay samples, Fisher on 32 samples × 8 timesteps, 20 DDIM steps) keep the one-off cost below
the loop's own on the quick tier. Generated samples nearer a forget image than every retain image are left out of
the replay set (the official one leaves out the forgotten class); replay rows are drawn with replacement.
``surrogate="neighbours"``: one of the K nearest retain images of each forget image instead of noise;
``replay="retain"``: replay, and the Fisher, on the retain set instead of generated samples. Not kept: Adam without
weight decay, EMA, antithetic t (the suite's loop is the same for every method), and the official Fisher's inputs
in [0, 1] (read by ``ToTensor`` without the training's rescaling; model space here). lr 1e-4 is the released value;
the quick tier chooses every method's lr by one rule (docs/calibration.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DModel
from torch import Tensor

from unlearnbench.diffusion import NoiseSchedule, predict_noise, sum_sq
from unlearnbench.loop import Batch, StepContext
from unlearnbench.method import FineTuneMethod, UnlearnJob
from unlearnbench.neighbours import cached_knn_search, knn_search
from unlearnbench.paths import cache_root
from unlearnbench.protocols import PROTOCOLS
from unlearnbench.registry import METHODS
from unlearnbench.sampling import SamplerConfig, generate

SURROGATES = ("noise", "neighbours")
REPLAYS = ("generated", "retain")
SETUP_SEED = 1 << 40  # setup's noise streams: never those of the evaluation sampler (seed · 1,000,003 + start)


@dataclass(frozen=True)
class SelectiveAmnesiaHparams:
    gamma: float  # weight of the replay term (published 1)
    lmbda: float  # weight of the Fisher (EWC) penalty (published 10; the config's name: ``lam`` must lie in [0, 1])
    surrogate: str = "noise"  # "noise": U[−1, 1] images (published); "neighbours": K nearest retain images
    k: int = 10  # neighbours per forget image (surrogate="neighbours")
    replay: str = "generated"  # "generated": base-model samples (published); "retain": the retain set
    replay_samples: int = 128
    fisher_samples: int = 32
    fisher_timesteps: int = 8  # stratified timesteps per Fisher sample (1000: the official full sum)
    sampler_steps: int = 20  # DDIM steps of the generated samples

    def __post_init__(self) -> None:
        if self.surrogate not in SURROGATES or self.replay not in REPLAYS:
            raise ValueError(f"selective_amnesia: surrogate must be one of {SURROGATES} and replay one of {REPLAYS}, "
                             f"got {self.surrogate!r} and {self.replay!r}")
        names = ("k", "replay_samples", "fisher_samples", "fisher_timesteps", "sampler_steps")
        counts = {n: getattr(self, n) for n in names}
        if min(counts.values()) < 1:
            raise ValueError(f"selective_amnesia: counts must be positive, got {counts}")


@dataclass
class AmnesiaState:
    fisher: list[Tensor]  # F_i, one tensor per trainable parameter
    anchor: list[Tensor]  # θ*, a detached copy of the base weights
    replay: Tensor | None  # the generated replay set (None: the loop's retain batch)
    neighbours: Tensor | None  # (len(forget), K, ...) retain neighbours (surrogate="neighbours")


def stratified_timesteps(n: int, m: int, num_timesteps: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(n, m) timesteps, one uniform in each of m equal strata of {0..T−1}, and each stratum's width (its weight in
    the estimate Σ_j w_j L_{t_j} of Σ_t L_t; m = T gives every t once with weight 1)."""
    edges = torch.arange(m + 1) * num_timesteps // m
    width = edges[1:] - edges[:-1]
    t = edges[:-1] + (torch.rand((n, m), generator=generator) * width).long()
    return t, width.double()


def fisher_diagonal(model: torch.nn.Module, schedule: NoiseSchedule, samples: Tensor, t: Tensor, weights: Tensor,
                    noise: Tensor, chunk: int) -> list[Tensor]:
    """F = mean_n g_n², g_n = ∇_θ Σ_j w_j ||ε_θ(x_{n,t_nj}, t_nj) − ε_nj||² (``t``: (N, m), ``noise``: (N, m, ...)).

    Taken on ``model`` itself, in eval mode, through ``autograd.grad`` (``.grad`` is never touched); the m
    timesteps of a sample are forwarded in chunks of ``chunk``."""
    params = [p for p in model.parameters() if p.requires_grad]
    fisher = [torch.zeros_like(p) for p in params]
    was_training = model.training
    model.eval()
    device = params[0].device
    for x, t_n, eps_n in zip(samples, t, noise):
        g = [torch.zeros_like(p) for p in params]
        for t_c, w_c, eps in zip(t_n.split(chunk), weights.split(chunk), eps_n.split(chunk)):
            eps, t_c = eps.to(device, params[0].dtype), t_c.to(device)
            x0 = x.to(eps).expand_as(eps)
            residual = predict_noise(model, schedule.add_noise(x0, eps, t_c), t_c) - eps
            loss = (w_c.to(device, residual.dtype) * sum_sq(residual)).sum()
            for acc, grad in zip(g, torch.autograd.grad(loss, params, allow_unused=True)):
                if grad is not None:
                    acc.add_(grad)
        for f, gi in zip(fisher, g):
            f.add_(gi.pow(2), alpha=1 / len(samples))
    model.train(was_training)
    return fisher


def drop_forget_copies(samples: Tensor, retain: Tensor, forget: Tensor) -> Tensor:
    """The samples nearer to some retain image than to every forget image (squared L2 in model space)."""
    d_retain, _ = knn_search(samples, retain, 1)
    d_forget, _ = knn_search(samples, forget, 1)
    return samples[d_retain[:, 0] <= d_forget[:, 0]]


def amnesia_loss(ctx: StepContext, surrogate: Tensor, replay: Tensor, eps_s: Tensor, eps_r: Tensor,
                 t: Tensor) -> Tensor:
    """L_DDPM(surrogate) + γ · L_DDPM(replay) + λ · Σ_i F_i (θ_i − θ*_i)², both DDPM terms at timesteps ``t``
    (one batched forward: the UNet normalises per sample)."""
    h, s = ctx.hparams, ctx.schedule
    x_t = torch.cat([s.add_noise(surrogate, eps_s, t), s.add_noise(replay, eps_r, t)])
    pred = predict_noise(ctx.model, x_t, torch.cat([t, t]))
    loss_s, loss_r = sum_sq(pred[: len(t)] - eps_s).mean(), sum_sq(pred[len(t) :] - eps_r).mean()
    penalty = sum((f * (p - p0).pow(2)).sum() for p, f, p0 in zip(ctx.params(), ctx.state.fisher, ctx.state.anchor))
    return loss_s + h.gamma * loss_r + h.lmbda * penalty


@METHODS.register
class SelectiveAmnesia(FineTuneMethod):
    order = 90
    Hparams = SelectiveAmnesiaHparams
    published = {family: {"gamma": 1.0, "lmbda": 10.0} for family in PROTOCOLS}
    published_for = "CIFAR-10 / STL-10 class forgetting (configs/*_forget.yml)"

    def setup(self, job: UnlearnJob) -> AmnesiaState:
        """Once, on the base model: the replay set, the diagonal Fisher and θ*.

        Every UNet pass runs on ``job.base_model`` itself, so ``FineTuneMethod.unlearn`` counts them (``costs.setup``)."""
        h, model = job.hparams, job.base_model
        schedule = job.schedule or NoiseSchedule.from_scheduler()
        shape = tuple(job.forget.shape[1:])
        if h.replay == "generated":
            batch = job.loop.batch_size * job.loop.grad_accum
            config = SamplerConfig(kind="ddim", steps=h.sampler_steps, batch_size=batch,
                                   num_samples=max(h.replay_samples, h.fisher_samples))
            samples = generate(model, config, SETUP_SEED + job.seed, job.device, progress=False, shape=shape,
                               schedule=schedule, clip=isinstance(model, UNet2DModel)).clone()  # not an inference tensor
            replay = drop_forget_copies(samples[: h.replay_samples], job.retain, job.forget)
            if not len(replay):
                raise ValueError("selective_amnesia: every generated replay sample copies a forget image; "
                                 "use --set selective_amnesia.replay=retain")
        else:
            generator = torch.Generator().manual_seed(SETUP_SEED + job.seed)
            samples = job.retain[torch.randperm(len(job.retain), generator=generator)[: h.fisher_samples]]
            replay = None
        samples = samples[: h.fisher_samples]
        generator = torch.Generator().manual_seed(SETUP_SEED + job.seed + 1)
        t, weights = stratified_timesteps(len(samples), h.fisher_timesteps, schedule.num_timesteps, generator)
        noise = torch.randn((*t.shape, *shape), generator=generator)
        fisher = fisher_diagonal(model, schedule, samples, t, weights, noise, job.loop.batch_size)
        anchor = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        neighbours = None
        if h.surrogate == "neighbours":
            _, index = cached_knn_search(job.forget, job.retain, h.k, cache_root() / "knn")
            neighbours = job.retain[index.reshape(-1)].reshape(*index.shape, *shape)
        return AmnesiaState(fisher, anchor, replay, neighbours)

    def inputs(self, ctx: StepContext, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One micro-batch's (surrogate, replay, ε_surrogate, ε_replay, t), drawn from the loop's generator."""
        a, state = batch.forget, ctx.state
        t = ctx.timesteps(len(a))
        if state.neighbours is None:
            surrogate = ctx.uniform_like(a) * 2 - 1
        else:
            pick = torch.randint(state.neighbours.shape[1], (len(a),), generator=ctx.generator)
            surrogate = state.neighbours[batch.forget_index.cpu(), pick].to(ctx.device, a.dtype)
        if state.replay is None:
            replay = batch.retain
        else:
            replay = state.replay[torch.randint(len(state.replay), (len(a),), generator=ctx.generator)]
            replay = replay.to(ctx.device, a.dtype)
        return surrogate, replay, ctx.noise_like(surrogate), ctx.noise_like(replay), t

    def loss(self, ctx: StepContext, batch: Batch) -> Tensor:
        return amnesia_loss(ctx, *self.inputs(ctx, batch))
