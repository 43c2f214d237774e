"""Cost estimate of a planned run, printed by ``run --dry-run``: device-hours from measured costs.

Two things are measured, nothing is assumed about the hardware:

* the tier's UNet (random weights, the published architecture) on the run's device: seconds
  per sample of a forward pass and of a forward + backward pass, at a stated micro-batch;
* each method's UNet passes per unlearning step (forward and backward, in units of the batch
  per branch), counted by the loop's pass counter on one step of a tiny model.

Cell cost = unlearning (steps × accumulation × batch × passes × per-sample cost) + sampling
(samples × sampler steps × forward) + injections (n × denoising steps × forward) + NLL
(model evaluations × forward + backward, ~1,000 at the protocol's tolerance: measured on a small
UNet, bench/likelihood.py). The oracle is counted once per forget set: its training recipe.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch

from unlearnbench.diffusion import build_unet
from unlearnbench.loop import LoopConfig
from unlearnbench.method import UnlearnJob
from unlearnbench.registry import METHODS, METRICS


@dataclass(frozen=True)
class UnetCost:
    forward: float  # seconds per sample
    train: float  # seconds per sample, forward + backward
    batch: int
    device: str
    parameters: int


def measure_unet(config: dict[str, Any], device: torch.device, batch: int, repeats: int = 2) -> UnetCost:
    """Per-sample seconds of the UNet ``config`` on ``device`` at micro-batch ``batch`` (median of repeats)."""
    torch.manual_seed(0)
    model = build_unet(config).to(device)
    shape = (batch, config["in_channels"], config["sample_size"], config["sample_size"])
    x = torch.randn(shape, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)

    def timed(train: bool) -> float:
        runs = []
        for _ in range(repeats + 1):  # the first run warms up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            with torch.set_grad_enabled(train):
                out = model(x, t).sample
                if train:
                    out.pow(2).mean().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            runs.append(time.perf_counter() - start)
        return sorted(runs[1:])[len(runs[1:]) // 2] / batch

    return UnetCost(timed(False), timed(True), batch, str(device), sum(p.numel() for p in model.parameters()))


def passes_per_step(method_name: str, protocol: str) -> tuple[float, float]:
    """(forward, backward) UNet passes per unlearning step, counted on one step of a tiny model."""
    method = METHODS.get(method_name)
    if not method.finetunes:
        return 0.0, 0.0
    tiny = {"sample_size": 8, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
            "block_out_channels": (4, 8), "norm_num_groups": 4,
            "down_block_types": ("DownBlock2D",) * 2, "up_block_types": ("UpBlock2D",) * 2}
    generator = torch.Generator().manual_seed(0)
    retain, forget = torch.randn(16, 1, 8, 8, generator=generator), torch.randn(2, 1, 8, 8, generator=generator)
    model = build_unet(tiny)
    loop = LoopConfig(steps=1, batch_size=2, lr=1e-4)
    job = UnlearnJob(copy.deepcopy(model), retain, forget, loop, method.hparams(protocol), 0, torch.device("cpu"),
                     progress=False, protocol=protocol)
    log = method().unlearn(job).log
    one_off = log.setup  # a mask, a Fisher estimate, replay samples: once per cell, not per step
    return log.unet_forward - one_off.get("unet_forward", 0.0), log.unet_backward - one_off.get("unet_backward", 0.0)


def estimate_rows(bench: Any, micro_batch: int | None = None) -> tuple[list[list[Any]], list[str]]:
    """Rows (method, passes, unlearn h, eval h, cells, total h) and notes for a planned ``Benchmark``."""
    tier = bench.tier
    device = bench.device
    micro = micro_batch or (min(tier.unlearning.batch_size, 32) if device.type == "cuda" else 2)
    cost = measure_unet(dict(tier.unet), device, micro)
    loop, sampler, ev = tier.unlearning, bench.sampler, tier.eval
    eval_s = sampler.num_samples * sampler.steps * cost.forward
    extra = {METRICS.get(m).passes for m in bench.metric_names} - {None}  # metrics sharing work share the function
    counts = [_metric_passes(passes, ev, sampler, loop) for passes in extra]
    extra_forward = sum(c[0] for c in counts)
    extra_train = sum(c[1] for c in counts)
    eval_s += extra_forward * cost.forward + extra_train * cost.train
    runs = len(bench.forget_sets) * len(bench.seeds)
    rows, total = [], 0.0
    for name in bench.methods:
        if METHODS.get(name).role == "oracle":
            recipe = tier.base_training
            unlearn_s = recipe.steps * recipe.batch_size * cost.train * len(bench.forget_sets) / runs
            passes = "oracle training"
        else:
            fwd, bwd = passes_per_step(name, bench.task.protocol)
            per_step = loop.batch_size * loop.grad_accum * (fwd * cost.forward + bwd * (cost.train - cost.forward))
            unlearn_s = loop.steps * per_step
            passes = f"{fwd:g} fwd / {bwd:g} bwd"
        cell_h = (unlearn_s + eval_s) / 3600
        total += cell_h * runs
        rows.append([name, passes, f"{unlearn_s / 3600:.3g}", f"{eval_s / 3600:.3g}", runs, f"{cell_h * runs:.3g}"])
    if not (bench.opts.base_model or tier.base_model) and tier.base_training is not None:
        recipe = tier.base_training  # the base model is trained once by `prepare` before any cell runs
        base_h = recipe.steps * recipe.batch_size * cost.train / 3600
        total += base_h
        rows.append(["base model (prepare)", f"{recipe.steps} training steps", "", "", 1, f"{base_h:.3g}"])
    rows.append(["total", "", "", "", runs * len(bench.methods), f"{total:.3g}"])
    where = "" if device.type == "cuda" else " (no GPU here: run the dry-run on the GPU for GPU-hours)"
    notes = [
        f"estimated device-hours on {device}{where}, from costs measured now: UNet {cost.parameters / 1e6:.1f}M "
        f"parameters, {cost.forward * 1e3:.2f} ms forward and {cost.train * 1e3:.2f} ms forward+backward per sample "
        f"at micro-batch {cost.batch}; passes per step counted by the loop on one step of each method",
        f"evaluation per cell: {sampler.num_samples} samples x {sampler.steps} {sampler.kind} steps"
        + (f", plus {extra_forward:g} forward and {extra_train:g} forward+backward UNet passes of "
           f"{', '.join(m for m in bench.metric_names if METRICS.get(m).passes)} (as each metric declares)"
           if extra else ""),
    ]
    return rows, notes


def _metric_passes(passes: Any, tier_eval: dict[str, Any], sampler: Any, loop: Any) -> tuple[float, float]:
    """A metric's extra passes: ``passes(tier_eval)``, given the sampler and loop too when it asks for them
    (attacks that fine-tune and sample again)."""
    import inspect

    params = inspect.signature(passes).parameters
    return passes(tier_eval, sampler=sampler, loop=loop) if "sampler" in params else passes(tier_eval)
