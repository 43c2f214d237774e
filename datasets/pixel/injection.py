"""Injections: noise the forget image to t = 250 and denoise it with the unlearned model.

The published CIFAR-10 / CelebA-HQ evaluation of ReTrack (Shi et al. 2025) asks whether the model still
reconstructs the forget image from a partly noised copy: x_250 = γ_250 a + σ_250 ε, then the
DDPM reverse process from t = 250 down to 0. Each injection has its own seeded ε, so the N
outputs measure how often the model returns to the forget image.
"""
from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler
from torch import Tensor

from unlearnbench.diffusion import NoiseSchedule, make_scheduler

INJECTION_T = 250


def injection_timesteps(t_start: int, steps: int | None) -> list[int]:
    """Descending timesteps from ``t_start`` to 0: every step when ``steps`` is None, else ``steps`` evenly spaced."""
    if steps is None:
        return list(range(t_start, -1, -1))
    if steps < 2:
        raise ValueError("an injection needs at least 2 denoising steps (t_start and 0)")
    ts = np.unique(np.linspace(0, t_start, steps).round().astype(int))[::-1]
    return [int(t) for t in ts]


@torch.inference_mode()
def denoise_injections(model: torch.nn.Module, image: Tensor, n: int, seed: int, device: torch.device | str,
                       t_start: int = INJECTION_T, steps: int | None = None, batch_size: int = 64) -> Tensor:
    """``n`` outputs in [−1, 1] of the DDPM reverse process started from the forget image noised to ``t_start``.

    Noise comes from a CPU generator seeded per batch, so the outputs are identical on any device.
    """
    model.eval()
    schedule = NoiseSchedule.from_scheduler()
    scheduler = DDPMScheduler.from_config(make_scheduler().config)
    timesteps = injection_timesteps(t_start, steps)
    outs = []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + 7919 + start)
        scheduler.set_timesteps(timesteps=timesteps)
        a = image.expand(m, *image.shape[1:]).float()
        t0 = torch.full((m,), t_start, dtype=torch.long)
        x = schedule.add_noise(a, torch.randn(a.shape, generator=generator), t0).to(device)
        for t in scheduler.timesteps:
            eps = model(x, t.to(device)).sample
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        outs.append(x.clamp(-1, 1).float().cpu())
    return torch.cat(outs)


def rms_distance(x: Tensor, ref: Tensor) -> Tensor:
    """Per-sample root-mean-square pixel distance on [0, 1] pixels (resolution-independent)."""
    return ((x.float() - ref.float()) / 2).flatten(1).pow(2).mean(1).sqrt()
