"""The ONE fine-tuning loop every unlearning method runs on.

A method only supplies its loss (``FineTuneMethod.loss``) or its gradient rule
(``GradientRuleMethod.losses`` and ``rule``); optimiser, clipping, batching, gradient
accumulation, seeding and pass counting live here, which is what makes the methods' wall-clock
comparable. A gradient rule is applied once per optimiser step, to the gradients accumulated
over all its micro-batches, as the official codes do (ReTrack ``train.py``
``backward_with_rescaling``; SISS ``delete_*.py``).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from diffusers import UNet2DModel
from torch import Tensor

from unlearnbench.diffusion import NoiseSchedule
from unlearnbench.progress import bar


@dataclass(frozen=True)
class LoopConfig:
    """Optimiser and batching of an unlearning run (the published values are in each task's tiers)."""

    steps: int
    batch_size: int  # per branch (retain and forget each)
    lr: float
    grad_accum: int = 1
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 1e-6
    max_grad_norm: float = 1.0
    precision: str = "fp32"  # "fp32" or "bf16" (autocast of the forward passes; master weights stay fp32)


class DivergenceError(RuntimeError):
    """The loss, the gradient, the weights or the samples became non-finite: the cell failed."""


def infinite_indices(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless shuffled index batches (reshuffled every epoch, with wrap-around)."""
    order = torch.randperm(n, generator=generator)
    pos = 0
    while True:
        take = []
        need = batch_size
        while need:
            if pos == n:
                order, pos = torch.randperm(n, generator=generator), 0
            chunk = order[pos : pos + need]
            take.append(chunk)
            pos += len(chunk)
            need -= len(chunk)
        yield torch.cat(take)


class PassCounter:
    """Counts UNet forward and backward passes, in samples, through module and tensor hooks.

    A backward pass is counted when a gradient reaches the UNet's output, so two
    ``autograd.grad`` calls through one forward graph count as two backward passes.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.forward_samples = 0
        self.backward_samples = 0
        self._handle = model.register_forward_hook(self._on_forward)

    def _on_forward(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        sample = output.sample if hasattr(output, "sample") else output[0]
        self.forward_samples += sample.shape[0]
        if sample.requires_grad:
            n = sample.shape[0]

            def on_backward(grad: Tensor) -> None:
                self.backward_samples += n

            sample.register_hook(on_backward)

    def remove(self) -> None:
        self._handle.remove()


@dataclass
class Batch:
    """One micro-batch: clean retain samples and clean forget samples (device tensors)."""

    retain: Tensor
    forget: Tensor
    forget_index: Tensor


@dataclass
class StepContext:
    """What a method's loss or gradient rule may use in a step."""

    model: UNet2DModel
    schedule: NoiseSchedule
    hparams: Any
    state: Any
    generator: torch.Generator
    device: torch.device
    #: Gradients summed over the micro-batches of the current optimiser step (gradient-rule methods).
    accumulated: dict[str, list[Tensor]] = field(default_factory=dict)

    def noise_like(self, x: Tensor) -> Tensor:
        """Gaussian noise from the loop's seeded CPU generator."""
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype).to(self.device)

    def uniform_like(self, x: Tensor) -> Tensor:
        """U[0, 1) noise from the loop's seeded CPU generator."""
        return torch.rand(x.shape, generator=self.generator, dtype=x.dtype).to(self.device)

    def timesteps(self, n: int) -> Tensor:
        return self.schedule.sample_timesteps(n, self.generator, self.device)

    def params(self) -> list[Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]


@dataclass
class LoopLog:
    """Costs and per-step statistics of one run of the loop."""

    seconds: float = 0.0
    unet_forward: float = 0.0  # in batch-sized passes (samples / batch per branch)
    unet_backward: float = 0.0
    #: The method's one-off work before the loop (a saliency mask, a Fisher estimate, replay samples), already
    #: included in the totals above: {"seconds", "unet_forward", "unet_backward"}; empty when there is none.
    setup: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)


def add_to_grad(params: list[Tensor], grads: list[Tensor], scale: float = 1.0) -> None:
    """p.grad += scale · g, creating ``.grad`` where absent."""
    for p, g in zip(params, grads):
        if p.grad is None:
            p.grad = (g * scale).detach().clone()
        else:
            p.grad.add_(g, alpha=scale)


PRECISIONS = ("fp32", "bf16")


def precision_context(precision: str, device: torch.device) -> Callable[[], Any]:
    """A factory of the autocast context for ``precision``.

    bf16 needs no loss scaling, so it is the mixed precision offered to every method alike; fp16 is
    not: the gradient-rule methods (SISS, EraseDiff) take several ``autograd.grad`` of unscaled
    losses, which fp16 would underflow without a per-method loss scale.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS} (fp16 is not supported: "
                         "the gradient-rule methods would need their own loss scaling; bf16 needs none)")
    if precision == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def step_direction(method: Any, ctx: StepContext, batches: Iterable[Batch],
                   autocast: Callable[[], Any] = contextlib.nullcontext) -> float:
    """Fill ``.grad`` with one optimiser step's update direction from its micro-batches.

    Each micro-batch adds its gradients with weight 1/len(batches) (the mean, as accelerate's
    gradient accumulation does); a gradient-rule method then applies its rule once, to the
    accumulated gradients. Returns the sum of the micro-batches' reported losses.
    """
    batches = list(batches)
    total = 0.0
    for batch in batches:
        with autocast():
            total += float(method.accumulate(ctx, batch, 1.0 / len(batches)))
    method.finish_step(ctx)
    return total


def assert_finite_weights(model: torch.nn.Module, when: str) -> None:
    """Raise ``DivergenceError`` naming the first parameter holding NaN or inf."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise DivergenceError(f"non-finite weights in {name} {when}")


def finetune(
    model: UNet2DModel,
    method: Any,
    retain: Tensor,
    forget: Tensor,
    loop: LoopConfig,
    hparams: Any,
    seed: int,
    device: torch.device,
    state: Any = None,
    on_step: Callable[[int, UNet2DModel], dict[str, Any] | None] | None = None,
    progress: bool = True,
    schedule: NoiseSchedule | None = None,
) -> LoopLog:
    """Run ``loop.steps`` AdamW steps of ``method`` on ``model`` in place and return the log.

    Samplers and noise are seeded from ``seed`` through CPU generators, so a run is
    reproducible on any device. ``on_step(step, model)`` may evaluate during unlearning.
    """
    schedule = schedule or NoiseSchedule.from_scheduler()
    autocast = precision_context(loop.precision, device)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=loop.lr, betas=loop.betas, weight_decay=loop.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    retain_batches = infinite_indices(len(retain), loop.batch_size, torch.Generator().manual_seed(seed + 1))
    forget_batches = infinite_indices(len(forget), loop.batch_size, torch.Generator().manual_seed(seed + 2))
    ctx = StepContext(model, schedule, hparams, state, generator, device)
    counter = PassCounter(model)
    log = LoopLog()
    start = time.perf_counter()
    try:
        for step in bar(range(loop.steps), f"unlearn {method.name}", progress):
            optimizer.zero_grad(set_to_none=True)
            micro = [Batch(retain[next(retain_batches)].to(device), forget[fi].to(device), fi)
                     for fi in (next(forget_batches) for _ in range(loop.grad_accum))]
            step_loss = step_direction(method, ctx, micro, autocast)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, loop.max_grad_norm))
            if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                raise DivergenceError(f"non-finite loss {step_loss} or gradient norm {grad_norm} at step {step}")
            optimizer.step()
            log.losses.append(step_loss / loop.grad_accum)
            log.grad_norms.append(grad_norm)
            if on_step is not None:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                paused = time.perf_counter()
                result = on_step(step + 1, model)
                if result is not None:
                    log.evaluations.append({"step": step + 1, **result})
                model.train()
                start += time.perf_counter() - paused  # evaluation is not unlearning time
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        counter.remove()
    log.seconds = time.perf_counter() - start
    log.unet_forward = counter.forward_samples / loop.batch_size
    log.unet_backward = counter.backward_samples / loop.batch_size
    return log
