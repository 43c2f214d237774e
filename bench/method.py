"""The interface every unlearning method implements.

``Method.unlearn`` turns the base model into the unlearned model. Fine-tuning methods derive
from ``FineTuneMethod`` and provide only ``loss``, or from ``GradientRuleMethod`` and provide
``losses`` and ``rule``; the shared loop in ``unlearnbench.loop`` does everything else.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from diffusers import UNet2DModel
from torch import Tensor

from unlearnbench.diffusion import NoiseSchedule
from unlearnbench.loop import Batch, LoopConfig, LoopLog, PassCounter, StepContext, add_to_grad, finetune


@dataclass
class UnlearnJob:
    """Everything a method needs for one cell."""

    base_model: UNet2DModel
    retain: Tensor  # clean retain samples, model space ([−1, 1] pixels)
    forget: Tensor  # clean forget samples
    loop: LoopConfig
    hparams: Any
    seed: int
    device: torch.device
    artifacts: Any = None  # the task's prepared artifacts (e.g. the retrain oracle)
    on_step: Callable[[int, UNet2DModel], dict[str, Any] | None] | None = None
    progress: bool = True
    schedule: NoiseSchedule | None = None  # the base model's noise schedule (None: the pixel DDPM schedule)
    protocol: str | None = None  # the task's protocol (a wrapper method resolves its inner method's published values)


@dataclass
class UnlearnResult:
    model: UNet2DModel
    log: LoopLog
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NoHparams:
    """For methods without hyper-parameters of their own."""


#: What a method's row is in every table, figure and check, in row order: the model before unlearning,
#: the unlearning methods, and the oracle trained without the forget set.
ROLES = ("reference_before", "unlearning", "oracle")


class Method:
    """Base class: a version (bumped when its numbers would change), a role and hyper-parameters.

    The name is the file's (``methods/retrack.py`` is ``retrack``), set by ``METHODS.register``.
    ``published`` maps a ``Protocol`` (``unlearnbench.protocols``) to the method's published
    hyper-parameters (the ReTrack and SISS papers' configs): the single place they live.
    ``order`` places an unlearning method among the others in tables (lower first).
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    role: ClassVar[str] = "unlearning"
    order: ClassVar[int] = 1000
    finetunes: ClassVar[bool] = False
    Hparams: ClassVar[type] = NoHparams
    published: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Where ``published`` comes from when it was published for another setting than the task's protocol
    #: (e.g. "CIFAR-10 class forgetting"): settings then say "published for ..., transferred to <protocol>".
    published_for: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.role not in ROLES:
            raise TypeError(f"{cls.__qualname__}.role is {cls.role!r}; one of {ROLES}")

    @classmethod
    def hparams(cls, protocol: str, overrides: dict[str, Any] | None = None) -> Any:
        """The method's hyper-parameters for ``protocol`` with ``overrides`` applied."""
        self = cls
        values = dict(self.published.get(protocol, {}))
        values.update(overrides or {})
        names = {f.name for f in dataclasses.fields(self.Hparams)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"{self.name}: unknown hyper-parameter(s) {sorted(unknown)}; known: {sorted(names)}")
        try:
            return self.Hparams(**values)
        except TypeError as err:
            raise ValueError(f"{self.name}: no published hyper-parameters for protocol {protocol!r} ({err})") from err

    def unlearn(self, job: UnlearnJob) -> UnlearnResult:
        raise NotImplementedError


class FineTuneMethod(Method):
    """A method that is one loss (or gradient rule) on the shared loop."""

    finetunes = True

    def setup(self, job: UnlearnJob) -> Any:
        """Work done once before the loop (e.g. a neighbour search); returned as ``ctx.state``."""
        return None

    def loss(self, ctx: StepContext, batch: Batch) -> Tensor:
        """The scalar loss to minimise on one micro-batch."""
        raise NotImplementedError

    def accumulate(self, ctx: StepContext, batch: Batch, scale: float) -> float:
        """Add this micro-batch's contribution (times ``scale``) to the step's gradients; return its loss.

        The default back-propagates ``loss`` into ``.grad``.
        """
        loss = self.loss(ctx, batch)
        (loss * scale).backward()
        return float(loss.detach())

    def finish_step(self, ctx: StepContext) -> None:
        """Called once per optimiser step after every micro-batch; leaves the update direction in ``.grad``."""

    def unlearn(self, job: UnlearnJob) -> UnlearnResult:
        model = job.base_model
        counter, started = PassCounter(model), time.perf_counter()
        try:  # the one-off work is part of the method's cost: its UNet passes (on ``model`` itself) are counted
            state = self.setup(job)
        finally:
            counter.remove()
        setup_seconds = time.perf_counter() - started
        log = finetune(
            model, self, job.retain, job.forget, job.loop, job.hparams, job.seed, job.device,
            state=state, on_step=job.on_step, progress=job.progress, schedule=job.schedule,
        )
        if counter.forward_samples or counter.backward_samples:
            setup = {"seconds": setup_seconds, "unet_forward": counter.forward_samples / job.loop.batch_size,
                     "unet_backward": counter.backward_samples / job.loop.batch_size}
            log.seconds += setup["seconds"]
            log.unet_forward += setup["unet_forward"]
            log.unet_backward += setup["unet_backward"]
            log.setup = setup
        return UnlearnResult(model, log)


class GradientRuleMethod(FineTuneMethod):
    """A method whose update is a rule over two gradients: g_x of a retain loss, g_a of a forget loss.

    g_x and g_a are accumulated over all micro-batches of an optimiser step (each weighted
    1/accumulation, i.e. their mean) and ``rule`` is applied ONCE to the accumulated pair, as the
    official codes do (ReTrack ``train.py`` ``backward_with_rescaling``, SISS ``delete_*.py``):
    the rules are not linear, so applying them per micro-batch and summing would differ.
    """

    #: True when L_x and L_a come from one forward graph (its first backward must keep it).
    shared_forward: ClassVar[bool] = False

    def losses(self, ctx: StepContext, batch: Batch) -> tuple[Tensor, Tensor, float]:
        """(L_x, L_a, log c) of one micro-batch: the forget loss is c·L_a.

        A rule that uses g_a only through its direction may return L_a divided by a large factor
        c (to keep it finite); the accumulation brings every micro-batch to one common factor, so
        the accumulated g_a is the true one up to a single positive factor. Otherwise log c = 0.
        """
        raise NotImplementedError

    def rule(self, ctx: StepContext, g_x: list[Tensor], g_a: list[Tensor]) -> list[Tensor]:
        """The update direction from the step's accumulated gradients."""
        raise NotImplementedError

    def accumulate(self, ctx: StepContext, batch: Batch, scale: float) -> float:
        loss_x, loss_a, log_c = self.losses(ctx, batch)
        params = ctx.params()
        g_x = flat_grads(loss_x, params, retain_graph=self.shared_forward)
        g_a = flat_grads(loss_a, params)
        acc = ctx.accumulated
        if "x" not in acc:
            acc["x"], acc["a"], acc["log_c"] = [g * scale for g in g_x], [g * scale for g in g_a], log_c
        else:
            common = max(acc["log_c"], log_c)
            old, new = math.exp(acc["log_c"] - common), scale * math.exp(log_c - common)
            for buf, g in zip(acc["x"], g_x):
                buf.add_(g, alpha=scale)
            for buf, g in zip(acc["a"], g_a):
                buf.mul_(old).add_(g, alpha=new)
            acc["log_c"] = common
        return float(loss_x.detach())

    def finish_step(self, ctx: StepContext) -> None:
        g_x, g_a = ctx.accumulated.pop("x"), ctx.accumulated.pop("a")
        ctx.accumulated.clear()
        add_to_grad(ctx.params(), self.rule(ctx, g_x, g_a))


def flat_grads(loss: Tensor, params: list[Tensor], retain_graph: bool = False) -> list[Tensor]:
    """∇loss for each parameter (zeros where a parameter is unused), without touching ``.grad``."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    """⟨a, b⟩ over all parameters."""
    return sum((x * y).sum() for x, y in zip(a, b))


__all__ = [
    "ROLES", "Method", "FineTuneMethod", "GradientRuleMethod", "UnlearnJob", "UnlearnResult", "NoHparams", "flat_grads", "dot", "add_to_grad",
]
