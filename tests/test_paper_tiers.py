"""The paper tiers: exactly the published settings (ReTrack's per-dataset configs), printed by ``run --dry-run``;
mixed precision and gradient accumulation in the shared loop."""
from __future__ import annotations

import re

import pytest
import torch

from unlearnbench.cli import main
from unlearnbench.estimate import passes_per_step
from unlearnbench.loop import LoopConfig, finetune
from unlearnbench.registry import METHODS, TASKS, load_all

load_all()

#: ReTrack's official configs, one row per task: steps, batch, accumulation, lr, ReTrack λ, SISS C, sampler, samples.
PUBLISHED = {
    "mnist_tshirt": (50, 128, 1, 5e-05, 0.005, 5.0, "ddpm", 50, 50_000),
    "cifar10": (60, 128, 1, 2e-05, 0.02, 5.0, "ddpm", 1000, 10_000),
    "celeba_hq": (40, 4, 16, 5e-06, 0.005, 500.0, "ddpm", 50, 10_000),
}


@pytest.mark.parametrize("task", sorted(PUBLISHED))
def test_paper_tier_holds_the_published_settings(task: str) -> None:
    steps, batch, accum, lr, lam, scaling_norm, kind, sampler_steps, samples = PUBLISHED[task]
    tier = TASKS.get(task).tier("paper")
    loop = tier.unlearning
    assert (loop.steps, loop.batch_size, loop.grad_accum, loop.lr) == (steps, batch, accum, lr)
    assert (loop.betas, loop.weight_decay, loop.max_grad_norm) == ((0.95, 0.999), 1e-6, 1.0)
    assert (tier.sampler.kind, tier.sampler.steps, tier.sampler.num_samples) == (kind, sampler_steps, samples)
    protocol = TASKS.get(task).protocol
    assert METHODS.get("retrack").hparams(protocol).lam == lam and METHODS.get("retrack").hparams(protocol).k == 10
    assert METHODS.get("siss").hparams(protocol).scaling_norm == scaling_norm
    assert METHODS.get("erasediff").hparams(protocol).eta == 1e-3
    # no tuned learning rates in a paper tier: only the published ones of SalUn and Selective Amnesia (CIFAR-10 DDPM)
    assert tier.method_overrides == ({"salun": {"lr": 1e-4}, "selective_amnesia": {"lr": 1e-4}}
                                     if task == "cifar10" else {})


def test_published_forget_sets_and_base_models() -> None:
    cifar, celeba = TASKS.get("cifar10").tier("paper"), TASKS.get("celeba_hq").tier("paper")
    assert cifar.forget_sets == tuple(str(i) for i in range(10000, 10010)) and cifar.seeds == (0,)
    assert celeba.forget_sets == tuple(str(i) for i in range(10001, 10011)) and celeba.seeds == (0,)
    assert (cifar.base_model, cifar.base_weights) == ("google/ddpm-cifar10-32", "ema")
    assert (celeba.base_model, celeba.base_weights) == ("google/ddpm-ema-celebahq-256", "ema")
    assert TASKS.get("mnist_tshirt").tier("paper").seeds == tuple(range(10))


@pytest.mark.parametrize("task", ["mnist_tshirt", "celeba_hq"])
def test_dry_run_prints_the_published_settings(task: str, capsys: pytest.CaptureFixture) -> None:
    steps, batch, accum, lr, *_ = PUBLISHED[task]
    assert main(["run", "--task", task, "--tier", "paper", "--dry-run", "--no-estimate"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"retrack\s+{steps}\s+{batch} x {accum}\s+{lr:g}", out), out
    if task == "celeba_hq":
        assert "forget sets (10): 10001" in out and "google/ddpm-ema-celebahq-256" in out
        assert f"cells: {10 * len(METHODS.names())}" in out


def test_dry_run_estimates_device_hours_from_measured_costs(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--task", "cifar10", "--tier", "paper", "--dry-run", "--methods", "naive_deletion,siss,retrain"]) == 0
    out = capsys.readouterr().out
    assert "forget sets (10): 10000, 10001" in out and "google/ddpm-cifar10-32" in out
    assert re.search(r"naive_deletion\s+60\s+128 x 1\s+2e-05", out)
    assert "35.7M parameters" in out and "estimated device-hours on cpu" in out
    total = float(re.search(r"total\s+30\s+([0-9.e+]+)", out).group(1))
    assert total > 0


def test_pass_counts_per_step_are_counted_not_assumed() -> None:
    assert passes_per_step("naive_deletion", "cifar10") == (1.0, 1.0)
    assert passes_per_step("siss", "cifar10") == (1.0, 2.0)  # one forward, two gradients through it
    assert passes_per_step("retrack", "cifar10") == (2.0, 2.0)
    assert passes_per_step("pretrain", "cifar10") == (0.0, 0.0)


def _tiny_run(loop: LoopConfig) -> tuple[list[torch.Tensor], object]:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    model = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                        norm_num_groups=4, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    data = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    method = METHODS.get("naive_deletion")()
    log = finetune(model, method, data, data[:2], loop, method.hparams("cifar10"), 0, torch.device("cpu"), progress=False)
    assert all(torch.isfinite(torch.tensor(log.losses)))
    return [p.detach().clone() for p in model.parameters()], log


def test_bf16_autocast_runs_and_stays_close_to_fp32() -> None:
    fp32, _ = _tiny_run(LoopConfig(steps=2, batch_size=4, lr=1e-3))
    bf16, _ = _tiny_run(LoopConfig(steps=2, batch_size=4, lr=1e-3, precision="bf16"))
    assert all(p.dtype == torch.float32 for p in bf16)  # master weights stay fp32
    assert any(not torch.equal(a, b) for a, b in zip(fp32, bf16))
    assert max((a - b).abs().max() for a, b in zip(fp32, bf16)) < 5e-3
    with pytest.raises(ValueError, match="fp16 is not supported"):
        _tiny_run(LoopConfig(steps=1, batch_size=4, lr=1e-3, precision="fp16"))


def test_gradient_accumulation_counts_micro_batches() -> None:
    _, log = _tiny_run(LoopConfig(steps=2, batch_size=2, lr=1e-3, grad_accum=3))
    assert (log.unet_forward, log.unet_backward) == (6.0, 6.0) and len(log.losses) == 2
