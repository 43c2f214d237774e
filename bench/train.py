"""Training a DDPM from scratch: the base model (retain ∪ forget) and the retrain oracle (retain).

One recipe for both (AdamW, cosine schedule with warm-up, EMA with warm-up), so the oracle is
the base model's exact recipe on the retain set.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from torch import Tensor

from unlearnbench.diffusion import NoiseSchedule, build_unet, ddpm_loss
from unlearnbench.loop import infinite_indices
from unlearnbench.progress import bar, interactive
from unlearnbench.task import TrainRecipe


def train_ddpm(
    unet_config: dict[str, Any],
    data: Tensor,
    recipe: TrainRecipe,
    seed: int,
    device: torch.device,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[UNet2DModel, dict[str, Any]]:
    """Train a fresh UNet on ``data`` and return its EMA weights and a training record."""
    torch.manual_seed(seed)
    model = build_unet(unet_config).to(device).train()
    ema = EMAModel(model.parameters(), decay=recipe.ema_max_decay, use_ema_warmup=True,
                   inv_gamma=recipe.ema_inv_gamma, power=recipe.ema_power)
    ema.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, recipe.warmup_steps, recipe.steps)
    schedule = NoiseSchedule.from_scheduler()
    generator = torch.Generator().manual_seed(seed)
    batches = infinite_indices(len(data), recipe.batch_size, torch.Generator().manual_seed(seed + 1))
    losses: list[float] = []
    start = time.perf_counter()
    steps = bar(range(1, recipe.steps + 1), "train ddpm", progress)
    for step in steps:
        x0 = data[next(batches)].to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        t = schedule.sample_timesteps(len(x0), generator, device)
        loss = ddpm_loss(model, schedule, x0, noise, t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.step(model.parameters())
        losses.append(float(loss.detach()))
        if step % 100 == 0:
            recent = sum(losses[-100:]) / 100
            steps.set_postfix(loss=f"{recent:.1f}")
            if not (progress and interactive()):  # no bar to show it: a plain line
                log(f"step {step}/{recipe.steps} loss {recent:.2f} ({time.perf_counter() - start:.0f}s)")
        if checkpoint_dir is not None and recipe.checkpoint_every and step % recipe.checkpoint_every == 0:
            ema_model(model, ema).save_pretrained(checkpoint_dir / f"step-{step}" / "unet_ema")
    seconds = time.perf_counter() - start
    info = {
        "steps": recipe.steps, "batch_size": recipe.batch_size, "seconds": seconds, "seed": seed, "train_size": len(data),
        "final_loss_mean_last_500": sum(losses[-500:]) / len(losses[-500:]),
        "device": str(device), "weights": "ema",
    }
    return ema_model(model, ema), info


def ema_model(model: UNet2DModel, ema: EMAModel) -> UNet2DModel:
    """A copy of ``model`` holding the EMA weights."""
    out = copy.deepcopy(model).eval()
    ema.copy_to(out.parameters())
    return out
