"""Selective Amnesia against its formula, each quantity recomputed plainly (float64, one forward per term,
ᾱ_t from a fresh diffusers scheduler, per-timestep autograd, brute-force neighbours), and end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from unlearnbench.cli import main
from unlearnbench.diffusion import NoiseSchedule
from unlearnbench.loop import Batch, LoopConfig, StepContext
from unlearnbench.method import UnlearnJob
from unlearnbench.methods.selective_amnesia import (
    AmnesiaState, SelectiveAmnesia, SelectiveAmnesiaHparams, amnesia_loss, drop_forget_copies,
    fisher_diagonal, stratified_timesteps,
)
from unlearnbench.protocols import PROTOCOLS
from unlearnbench.registry import METHODS, load_all
from unlearnbench.sampling import SamplerConfig, generate
from unlearnbench.settings import setting_scopes
from unlearnbench.validate import validate_hparams

CPU = torch.device("cpu")
F64 = torch.float64


def tiny_unet(seed: int, dtype: torch.dtype = torch.float32) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(4, 8), norm_num_groups=4,
                       layers_per_block=1, down_block_types=("DownBlock2D",) * 2,
                       up_block_types=("UpBlock2D",) * 2).to(dtype)


def alphas_cumprod64() -> torch.Tensor:
    return DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                         beta_schedule="linear").alphas_cumprod.double()


def plain_ddpm(model: UNet2DModel, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """mean_b ||ε_θ(√ᾱ_t x0 + √(1−ᾱ_t) ε, t) − ε||² (pixel sum), its own forward pass."""
    ac = alphas_cumprod64()[t].view(-1, 1, 1, 1)
    return (model(ac.sqrt() * x0 + (1 - ac).sqrt() * eps, t).sample - eps).pow(2).sum((1, 2, 3)).mean()


def context(model: UNet2DModel, hparams: SelectiveAmnesiaHparams, state: AmnesiaState, seed: int) -> StepContext:
    return StepContext(model, NoiseSchedule.from_scheduler(), hparams, state, torch.Generator().manual_seed(seed), CPU)


def random_state(model: UNet2DModel, replay: torch.Tensor | None, seed: int = 0) -> AmnesiaState:
    """Positive F, and θ* away from θ so that the penalty and its gradient are not zero."""
    g = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    fisher = [torch.rand(p.shape, generator=g, dtype=F64) for p in params]
    anchor = [p.detach() + 0.05 * torch.randn(p.shape, generator=g, dtype=F64) for p in params]
    return AmnesiaState(fisher, anchor, replay, None)


def a_batch(n: int = 4, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(retain=torch.rand((n, 1, 8, 8), generator=g, dtype=F64) * 2 - 1,
                 forget=(torch.rand((1, 1, 8, 8), generator=g, dtype=F64) * 2 - 1).expand(n, -1, -1, -1).clone(),
                 forget_index=torch.zeros(n, dtype=torch.long))


def test_loss_and_gradient_match_a_plain_implementation() -> None:
    model = tiny_unet(1, F64)
    replay_set = torch.rand((6, 1, 8, 8), generator=torch.Generator().manual_seed(2), dtype=F64) * 2 - 1
    state, hp = random_state(model, replay_set), SelectiveAmnesiaHparams(gamma=0.7, lmbda=3.0)
    batch, method = a_batch(), SelectiveAmnesia()
    surrogate, replay, eps_s, eps_r, t = method.inputs(context(model, hp, state, 5), batch)
    assert all(any(torch.equal(r, s) for s in replay_set) for r in replay)  # replay rows are replay samples
    loss = amnesia_loss(context(model, hp, state, 5), surrogate, replay, eps_s, eps_r, t)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    penalty = sum((f * (p - p0) ** 2).sum() for p, f, p0 in zip(model.parameters(), state.fisher, state.anchor))
    ref = plain_ddpm(model, surrogate, eps_s, t) + 0.7 * plain_ddpm(model, replay, eps_r, t) + 3.0 * penalty
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-9)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-9)
    # ``loss`` is this objective on the inputs it draws from the loop's generator
    torch.testing.assert_close(method.loss(context(model, hp, state, 5), batch), ref, rtol=1e-6, atol=1e-9)


def test_fisher_is_the_mean_of_per_sample_squared_gradients() -> None:
    model, schedule = tiny_unet(2, F64).train(), NoiseSchedule.from_scheduler()
    g = torch.Generator().manual_seed(3)
    samples = torch.rand((3, 1, 8, 8), generator=g, dtype=F64) * 2 - 1
    t, w = stratified_timesteps(3, 5, 1000, g)
    assert torch.equal(w, torch.full((5,), 200.0, dtype=F64))
    assert ((t >= torch.arange(5) * 200) & (t < (torch.arange(5) + 1) * 200)).all()
    every_t, ones = stratified_timesteps(2, 1000, 1000, g)  # m = T: the official sum over every timestep
    assert torch.equal(every_t, torch.arange(1000).expand(2, -1)) and torch.equal(ones, torch.ones(1000, dtype=F64))
    noise = torch.randn((3, 5, 1, 8, 8), generator=g, dtype=F64)
    fisher = fisher_diagonal(model, schedule, samples, t, w, noise, chunk=2)  # chunks of 2, 2 and 1 timesteps
    assert model.training and all(p.grad is None for p in model.parameters())
    params, ref = list(model.parameters()), [torch.zeros_like(p) for p in model.parameters()]
    model.eval()
    for n in range(3):
        g_n = [torch.zeros_like(p) for p in params]
        for j in range(5):
            loss = w[j] * plain_ddpm(model, samples[n : n + 1], noise[n, j : j + 1], t[n, j : j + 1])
            for acc, gr in zip(g_n, torch.autograd.grad(loss, params)):
                acc += gr
        for r, gr in zip(ref, g_n):
            r += gr**2 / 3
    for f, r in zip(fisher, ref):
        torch.testing.assert_close(f, r, rtol=1e-6, atol=1e-12)
    assert sum(float(f.sum()) for f in fisher) > 0


def test_zero_gamma_and_lambda_leave_the_surrogate_ddpm_loss() -> None:
    model = tiny_unet(3, F64)
    state, batch = random_state(model, torch.rand((5, 1, 8, 8), dtype=F64)), a_batch()
    inputs = SelectiveAmnesia().inputs(context(model, SelectiveAmnesiaHparams(1.0, 10.0), state, 7), batch)
    surrogate, replay, eps_s, eps_r, t = inputs
    only = amnesia_loss(context(model, SelectiveAmnesiaHparams(gamma=0.0, lmbda=0.0), state, 0), *inputs)
    torch.testing.assert_close(only, plain_ddpm(model, surrogate, eps_s, t), rtol=1e-6, atol=1e-9)
    full = amnesia_loss(context(model, SelectiveAmnesiaHparams(gamma=1.0, lmbda=10.0), state, 0), *inputs)
    assert float((full - only).detach()) > 1e-3  # replay and penalty add to it otherwise


def test_surrogate_is_uniform_noise_or_the_nearest_retain_images() -> None:
    model = tiny_unet(4, F64)
    state, batch = random_state(model, None), a_batch(n=64)
    ctx = context(model, SelectiveAmnesiaHparams(1.0, 10.0), state, 9)
    surrogate, replay, *_ = SelectiveAmnesia().inputs(ctx, batch)
    again, *_ = SelectiveAmnesia().inputs(ctx, batch)
    assert surrogate.shape == batch.forget.shape and torch.equal(replay, batch.retain)  # replay="retain": the batch
    assert float(surrogate.min()) >= -1 and float(surrogate.max()) < 1 and not torch.equal(surrogate, again)
    assert float(surrogate.min()) < -0.99 and float(surrogate.max()) > 0.99 and abs(float(surrogate.mean())) < 0.05

    g = torch.Generator().manual_seed(4)
    retain = torch.rand((20, 1, 8, 8), generator=g) * 2 - 1
    distinct = torch.rand((2, 1, 8, 8), generator=g) * 2 - 1
    forget = distinct[torch.tensor([0, 1, 0])]
    hp = SelectiveAmnesiaHparams(1.0, 10.0, surrogate="neighbours", k=3, replay="retain", fisher_samples=2,
                                 fisher_timesteps=2)
    job = UnlearnJob(tiny_unet(4), retain, forget, LoopConfig(steps=1, batch_size=3, lr=1e-4), hp, 0, CPU)
    state = SelectiveAmnesia().setup(job)
    nearest = torch.cdist(forget.flatten(1), retain.flatten(1)).argsort(dim=1)[:, :3]
    assert state.replay is None and torch.equal(state.neighbours, retain[nearest])
    batch = Batch(retain[:3], forget, torch.arange(3))
    surrogate, *_ = SelectiveAmnesia().inputs(context(job.base_model, hp, state, 1), batch)
    assert all(any(torch.equal(s, n) for n in retain[nearest[i]]) for i, s in enumerate(surrogate))


def test_generated_replay_uses_the_suites_ddim_and_leaves_out_forget_copies() -> None:
    model = tiny_unet(5)
    g = torch.Generator().manual_seed(5)
    retain, forget = torch.rand((10, 1, 8, 8), generator=g) * 2 - 1, torch.ones((2, 1, 8, 8))
    near_forget, near_retain = forget[:1] - 0.01, retain[3:5] + 0.01
    kept = drop_forget_copies(torch.cat([near_retain[:1], near_forget, near_retain[1:]]), retain, forget)
    assert torch.equal(kept, near_retain)

    hp = SelectiveAmnesiaHparams(1.0, 10.0, replay_samples=6, fisher_samples=3, fisher_timesteps=2, sampler_steps=3)
    job = UnlearnJob(model, retain, forget, LoopConfig(steps=1, batch_size=4, lr=1e-4), hp, 2, CPU)
    before = [p.detach().clone() for p in model.parameters()]
    state = SelectiveAmnesia().setup(job)
    expected = generate(model, SamplerConfig(kind="ddim", steps=3, num_samples=6, batch_size=4), (1 << 40) + 2, CPU,
                        progress=False)
    assert torch.equal(state.replay, drop_forget_copies(expected, retain, forget)) and len(state.replay) >= 1
    assert all(torch.equal(a, p) and not a.requires_grad for a, p in zip(state.anchor, before))
    assert all(torch.equal(a, p) and p.grad is None for a, p in zip(before, model.parameters()))
    assert [f.shape for f in state.fisher] == [p.shape for p in model.parameters()]


def test_registered_with_the_released_values() -> None:
    load_all()
    method = METHODS.get("selective_amnesia")
    assert method is SelectiveAmnesia and method.finetunes and method.role == "unlearning"
    assert method.order > max(METHODS.get(n).order for n in ("siss", "siss_no_is", "retrack", "retrack_all"))
    for protocol in PROTOCOLS:
        hp = method.hparams(protocol)
        assert (hp.gamma, hp.lmbda, hp.surrogate, hp.replay) == (1.0, 10.0, "noise", "generated")
    assert "gamma" in setting_scopes(method)  # no hyper-parameter shadows a loop setting
    validate_hparams(method.name, method.hparams(PROTOCOLS["cifar10"]), retain_size=10)  # the suite's range checks
    with pytest.raises(ValueError, match="surrogate"):
        SelectiveAmnesiaHparams(1.0, 10.0, surrogate="blur")


def test_smoke_cell_counts_the_setup_passes(tmp_path: Path) -> None:
    assert main(["run", "--tier", "smoke", "--methods", "selective_amnesia", "--metrics",
                 "forget_rate,unet_forward,unet_backward", "--out", str(tmp_path), "--no-progress"]) == 0
    [path] = (tmp_path / "records").glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok", record.get("error")
    hp, loop = record["config"]["hparams"], record["config"]["loop"]
    batch, steps = loop["batch_size"] * loop["grad_accum"], loop["steps"]
    # the loop: one forward of surrogate + replay per step, one backward; setup: DDIM samples, Fisher gradients
    generated = max(hp["replay_samples"], hp["fisher_samples"]) * hp["sampler_steps"]
    fisher = hp["fisher_samples"] * hp["fisher_timesteps"]
    setup = {"unet_forward": (generated + fisher) / loop["batch_size"], "unet_backward": fisher / loop["batch_size"]}
    costs = record["costs"]
    assert costs["unet_forward"] == 2 * steps * batch / loop["batch_size"] + setup["unet_forward"]
    assert costs["unet_backward"] == 2 * steps * batch / loop["batch_size"] + setup["unet_backward"]
    assert {k: costs["setup"][k] for k in setup} == setup and 0 < costs["setup"]["seconds"] <= costs["unlearn_seconds"]
    assert record["metrics"]["unet_forward"]["value"] == costs["unet_forward"]
