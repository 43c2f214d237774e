"""DDPM maths shared by every method: the noise schedule, the DDPM loss and the UNet factory.

γ_t = sqrt(ᾱ_t) and σ_t = sqrt(1 − ᾱ_t) are derived here, once, from the diffusers scheduler's
``alphas_cumprod``; no method computes them itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor

#: The DDPM schedule of every pixel-space task (Ho et al. 2020).
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
}


def make_scheduler() -> DDPMScheduler:
    """The training scheduler (linear β 1e-4 → 0.02, T = 1000, ε-prediction)."""
    return DDPMScheduler(**SCHEDULER_CONFIG)


@dataclass(frozen=True)
class NoiseSchedule:
    """γ_t and σ_t for integer timesteps, from a scheduler's ``alphas_cumprod``."""

    alphas_cumprod: Tensor

    @classmethod
    def from_scheduler(cls, scheduler: DDPMScheduler | None = None) -> "NoiseSchedule":
        scheduler = scheduler or make_scheduler()
        return cls(scheduler.alphas_cumprod.to(torch.float64))

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def _per_sample(self, values: Tensor, t: Tensor, like: Tensor) -> Tensor:
        out = values.to(t.device)[t].to(like.dtype)
        return out.reshape(-1, *([1] * (like.dim() - 1)))

    def gamma(self, t: Tensor, like: Tensor) -> Tensor:
        """sqrt(ᾱ_t), shaped to broadcast against ``like`` (batch first)."""
        return self._per_sample(self.alphas_cumprod.sqrt(), t, like)

    def sigma(self, t: Tensor, like: Tensor) -> Tensor:
        """sqrt(1 − ᾱ_t), shaped to broadcast against ``like`` (batch first)."""
        return self._per_sample((1 - self.alphas_cumprod).sqrt(), t, like)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = γ_t x_0 + σ_t ε (equal to ``DDPMScheduler.add_noise``)."""
        return self.gamma(t, x0) * x0 + self.sigma(t, x0) * noise

    def sample_timesteps(self, n: int, generator: torch.Generator, device: torch.device | str) -> Tensor:
        """t ~ U{0, ..., T−1}, drawn from ``generator`` (CPU) for reproducibility."""
        return torch.randint(0, self.num_timesteps, (n,), generator=generator).to(device)


def sum_sq(x: Tensor) -> Tensor:
    """Per-sample sum of squares over all non-batch dimensions (the pixel-sum loss)."""
    return x.flatten(1).pow(2).sum(dim=1)


def predict_noise(model: UNet2DModel, x_t: Tensor, t: Tensor) -> Tensor:
    """ε_θ(x_t, t) for a diffusers UNet."""
    return model(x_t, t).sample


def ddpm_loss(model: UNet2DModel, schedule: NoiseSchedule, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """Standard DDPM loss: pixel-summed ||ε_θ(x_t, t) − ε||², averaged over the batch."""
    x_t = schedule.add_noise(x0, noise, t)
    return sum_sq(predict_noise(model, x_t, t) - noise).mean()


def build_unet(config: dict[str, Any]) -> UNet2DModel:
    """A fresh ``UNet2DModel`` from a plain config dict (what a tier declares)."""
    return UNet2DModel(**config)


def load_unet(path: str | Path, subfolder: str | None = None) -> UNet2DModel:
    """Load a diffusers UNet from a folder or hub id (the path real checkpoints take)."""
    kwargs: dict[str, Any] = {"low_cpu_mem_usage": False}
    if subfolder:
        kwargs["subfolder"] = subfolder
    return UNet2DModel.from_pretrained(str(path), **kwargs)
