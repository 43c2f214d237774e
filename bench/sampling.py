"""Seeded batch sampling from a diffusers UNet with a diffusers scheduler (DDPM or DDIM)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import Tensor

from unlearnbench.diffusion import make_scheduler
from unlearnbench.progress import bar


@dataclass(frozen=True)
class SamplerConfig:
    """Which reverse process, how many steps, and how many images to draw."""

    kind: str = "ddpm"  # "ddpm" (the papers' evaluation sampler) or "ddim" (η = 0)
    steps: int = 50
    num_samples: int = 1024
    batch_size: int = 512


def make_sampling_scheduler(config: SamplerConfig, schedule: Any = None,
                            clip: bool = True) -> DDPMScheduler | DDIMScheduler:
    """The inference scheduler, sharing the training schedule's β (``schedule``: another model's ``NoiseSchedule``,
    e.g. a latent model's; ``clip``: x̂_0 clipped to [−1, 1], for pixels)."""
    base = make_scheduler().config
    if schedule is not None:
        ac = schedule.alphas_cumprod.double()
        betas = 1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])
        base = {**base, "num_train_timesteps": len(ac), "trained_betas": betas.tolist()}
    if config.kind == "ddpm":
        scheduler = DDPMScheduler.from_config(base, clip_sample=clip)
    elif config.kind == "ddim":
        scheduler = DDIMScheduler.from_config(base, clip_sample=clip, set_alpha_to_one=True)
    else:
        raise ValueError(f"unknown sampler kind {config.kind!r}; use 'ddpm' or 'ddim'")
    scheduler.set_timesteps(config.steps)
    return scheduler


@torch.inference_mode()
def generate(
    model: UNet2DModel,
    config: SamplerConfig,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = True,
    shape: tuple[int, ...] | None = None,
    schedule: Any = None,
    clip: bool = True,
) -> Tensor:
    """Draw ``config.num_samples`` images in [−1, 1]; identical for identical (model, config, seed).

    Noise comes from a CPU generator seeded per batch, so the images do not depend on the
    device's RNG or on how many batches ran before. ``shape`` (default: the UNet's), ``schedule`` and ``clip``
    are for other models than a pixel UNet (a latent model: its schedule, no clipping).
    """
    model.eval()
    scheduler = make_sampling_scheduler(config, schedule, clip)
    shape = shape or (model.config.in_channels, model.config.sample_size, model.config.sample_size)
    out = []
    batches = range(0, config.num_samples, config.batch_size)
    for start in bar(batches, "sampling", progress):
        n = min(config.batch_size, config.num_samples - start)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
        x = torch.randn((n, *shape), generator=generator).to(device)
        for t in scheduler.timesteps:
            eps = model(x, t.to(device)).sample
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        out.append((x.clamp(-1, 1) if clip else x).float().cpu())
    return torch.cat(out)
