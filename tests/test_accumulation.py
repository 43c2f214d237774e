"""Gradient rules under gradient accumulation (SISS, SISS (No IS), EraseDiff).

The official codes (ReTrack ``train.py`` ``backward_with_rescaling``; SISS ``delete_*.py``)
accumulate g_x and g_a over all micro-batches of an optimiser step (each divided by the number of
micro-batches, as accelerate does) and apply the rule ONCE. These tests recompute that
independently — per-micro-batch gradients by direct autograd, their mean, the rule in closed
form — and compare it with the loop's ``step_direction`` for 1, 2 and 16 micro-batches. They
also show that the per-micro-batch application (the suite's old behaviour) gives a different
update, so the comparison is informative.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from unlearnbench.loop import Batch, StepContext, step_direction
from unlearnbench.diffusion import NoiseSchedule
from unlearnbench.methods.erasediff import EraseDiff, EraseDiffHparams
from unlearnbench.methods.siss import SISS, SISSHparams
from unlearnbench.methods.siss_no_is import SISSNoIS, SISSNoISHparams

sys.path.insert(0, str(Path(__file__).parent))
from test_methods import T, autograd, gamma_sigma, global_norm, params_of, tiny_unet  # noqa: E402

CPU = torch.device("cpu")
SEED = 21


def micro_batches(n: int, size: int = 3) -> list[Batch]:
    """``n`` micro-batches of distinct retain images and a forget image near them (weights not saturated)."""
    g = torch.Generator().manual_seed(1000 + n)
    out = []
    for _ in range(n):
        x = torch.rand((size, 1, 8, 8), generator=g, dtype=torch.float64) * 2 - 1
        a = (x[:1] + 0.1 * torch.randn((1, 1, 8, 8), generator=g, dtype=torch.float64)).expand(size, -1, -1, -1)
        out.append(Batch(x, a.clone(), torch.zeros(size, dtype=torch.long)))
    return out


def siss_grads(model, batch: Batch, g: torch.Generator, lam: float):
    """g_x, g_a of one SISS micro-batch, drawing ε, t and the mixture picks from ``g`` in the loop's order."""
    x, a = batch.retain, batch.forget
    eps = torch.randn(x.shape, generator=g, dtype=x.dtype)
    t = torch.randint(0, T, (len(x),), generator=g)
    pick = torch.rand(len(x), generator=g) < lam
    gamma, sigma = gamma_sigma(t, x.dtype)
    x_t, a_t = gamma * x + sigma * eps, gamma * a + sigma * eps
    m = torch.where(pick.view(-1, 1, 1, 1), a_t, x_t)
    d_x = ((m - gamma * x) ** 2).flatten(1).sum(1) / (2 * sigma.flatten() ** 2)
    d_a = ((m - gamma * a) ** 2).flatten(1).sum(1) / (2 * sigma.flatten() ** 2)
    w_x = 1.0 / ((1 - lam) + lam * torch.exp(d_x - d_a))
    w_a = 1.0 / ((1 - lam) * torch.exp(d_a - d_x) + lam)
    pred = model(m, t).sample
    loss_x = (w_x * ((pred - (m - gamma * x) / sigma) ** 2).flatten(1).sum(1)).mean()
    loss_a = (w_a * ((pred - (m - gamma * a) / sigma) ** 2).flatten(1).sum(1)).mean()
    return autograd(loss_x, model, retain_graph=True), autograd(loss_a, model)


def siss_no_is_grads(model, batch: Batch, g: torch.Generator):
    x, a = batch.retain, batch.forget
    eps = torch.randn(x.shape, generator=g, dtype=x.dtype)
    t = torch.randint(0, T, (len(x),), generator=g)
    gamma, sigma = gamma_sigma(t, x.dtype)
    loss_x = ((model(gamma * x + sigma * eps, t).sample - eps) ** 2).flatten(1).sum(1).mean()
    loss_a = ((model(gamma * a + sigma * eps, t).sample - eps) ** 2).flatten(1).sum(1).mean()
    return autograd(loss_x, model), autograd(loss_a, model)


def erasediff_grads(model, batch: Batch, g: torch.Generator):
    x, a = batch.retain, batch.forget
    eps_x = torch.randn(x.shape, generator=g, dtype=x.dtype)
    t_x = torch.randint(0, T, (len(x),), generator=g)
    t_a = torch.randint(0, T, (len(a),), generator=g)
    eps_a = torch.randn(a.shape, generator=g, dtype=a.dtype)
    u = torch.rand(a.shape, generator=g, dtype=a.dtype)
    gx_, sx_ = gamma_sigma(t_x, x.dtype)
    ga_, sa_ = gamma_sigma(t_a, a.dtype)
    loss_x = ((model(gx_ * x + sx_ * eps_x, t_x).sample - eps_x) ** 2).flatten(1).sum(1).mean()
    loss_a = ((model(ga_ * a + sa_ * eps_a, t_a).sample - u) ** 2).flatten(1).sum(1).mean()
    return autograd(loss_x, model), autograd(loss_a, model)


def subtract(g_x, g_a, C):
    coef = C / global_norm(g_a)
    return [x - coef * a for x, a in zip(g_x, g_a)]


def erase(g_x, g_a, eta):
    inner = sum((x * a).sum() for x, a in zip(g_x, g_a))
    coef = max(eta - float(inner) / float(global_norm(g_a)) ** 2, 0.0)
    return [x + coef * a for x, a in zip(g_x, g_a)]


def mean(lists):
    return [sum(parts) / len(lists) for parts in zip(*lists)]


CASES = {
    "siss": (SISS, SISSHparams(lam=0.5, scaling_norm=5.0), lambda m, b, g: siss_grads(m, b, g, 0.5),
             lambda gx, ga: subtract(gx, ga, 5.0)),
    "siss_no_is": (SISSNoIS, SISSNoISHparams(scaling_norm=500.0), siss_no_is_grads, lambda gx, ga: subtract(gx, ga, 500.0)),
    # η chosen above ⟨g_x,g_a⟩/||g_a||² on some micro-batches and below on others, so that the clamp
    # acts differently per micro-batch than on the accumulated pair
    "erasediff": (EraseDiff, None, erasediff_grads, None),
}


def expected_direction(name: str, batches: list[Batch], eta: float | None = None):
    """(accumulated-then-rule, rule-per-micro-batch-then-summed) by direct autograd."""
    _, _, grads_of, rule = CASES[name]
    if rule is None:
        rule = lambda gx, ga: erase(gx, ga, eta)  # noqa: E731
    model = tiny_unet(7, torch.float64)
    g = torch.Generator().manual_seed(SEED)
    per = [grads_of(model, b, g) for b in batches]
    accumulated = rule(mean([gx for gx, _ in per]), mean([ga for _, ga in per]))
    per_micro = [sum(parts) / len(per) for parts in zip(*(rule(gx, ga) for gx, ga in per))]
    return accumulated, per_micro, per


def erasediff_eta(batches: list[Batch]) -> float:
    """An η between the smallest and largest per-micro-batch ratio ⟨g_x,g_a⟩/||g_a||² (the clamp then matters)."""
    model = tiny_unet(7, torch.float64)
    g = torch.Generator().manual_seed(SEED)
    ratios = []
    for b in batches:
        gx, ga = erasediff_grads(model, b, g)
        ratios.append(float(sum((x * a).sum() for x, a in zip(gx, ga))) / float(global_norm(ga)) ** 2)
    return (min(ratios) + max(ratios)) / 2 if len(ratios) > 1 else ratios[0] + 0.5


def suite_direction(name: str, batches: list[Batch], hparams) -> list[torch.Tensor]:
    method_cls = CASES[name][0]
    model = tiny_unet(7, torch.float64)
    model.zero_grad(set_to_none=True)
    ctx = StepContext(model, NoiseSchedule.from_scheduler(), hparams, None, torch.Generator().manual_seed(SEED), CPU)
    step_direction(method_cls(), ctx, batches)
    assert not ctx.accumulated  # the step's buffers are consumed
    return [p.grad.clone() for p in params_of(model)]


@pytest.mark.parametrize("accum", [1, 2, 16])
@pytest.mark.parametrize("name", ["siss", "siss_no_is", "erasediff"])
def test_rule_applied_once_to_accumulated_gradients(name: str, accum: int) -> None:
    batches = micro_batches(accum)
    hparams = CASES[name][1]
    eta = None
    if name == "erasediff":
        eta = erasediff_eta(batches)
        hparams = EraseDiffHparams(eta=eta)
    accumulated, per_micro, _ = expected_direction(name, batches, eta)
    got = suite_direction(name, batches, hparams)
    for g, e in zip(got, accumulated):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-11)
    if accum > 1:  # the per-micro-batch rule is a different update: the test can tell them apart
        diff = global_norm([a - b for a, b in zip(accumulated, per_micro)]) / global_norm(accumulated)
        assert float(diff) > 1e-3


@pytest.mark.parametrize("accum", [2, 16])
def test_siss_subtracted_term_has_norm_c_after_accumulation(accum: int) -> None:
    """The forget term removed per optimiser step has norm exactly C (not a sum of C-norm pieces)."""
    batches = micro_batches(accum)
    C = 500.0
    got = suite_direction("siss_no_is", batches, SISSNoISHparams(scaling_norm=C))
    _, _, per = expected_direction("siss_no_is", batches)
    g_x = mean([gx for gx, _ in per])
    removed = [gx - g for gx, g in zip(g_x, got)]
    assert float(global_norm(removed)) == pytest.approx(C, rel=1e-9)
