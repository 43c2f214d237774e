"""Membership inference and relearning attacks: each attack against an independent implementation on
identical tensors, a planted case whose answer is known, and every bad input answered."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from unlearnbench.diffusion import NoiseSchedule
from unlearnbench.loop import LoopConfig
from unlearnbench.membership import (
    AttackSettings, MembershipInputError, bootstrap_ranks, loss_errors, percentile_rank, pia_errors, secmi_errors,
    select_holdout,
)
from unlearnbench.metrics import EvalContext
from unlearnbench.registry import METRICS, TASKS, load_all
from unlearnbench.sampling import SamplerConfig
from unlearnbench.settings import resolve_metrics
from unlearnbench.task import TaskData
from unlearnbench.validate import UsageError
from unlearnbench.verification import RelearnSettings

load_all()

ALPHAS = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                       beta_schedule="linear").alphas_cumprod.double().numpy()


class ToyEps(torch.nn.Module):
    """ε(x, t) = tanh(W x + b·t/1000): a fixed nonlinear stand-in for a UNet with the diffusers call shape."""

    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim ** 0.5)
        self.b = torch.nn.Parameter(torch.randn(dim, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> SimpleNamespace:
        flat = x.double().flatten(1)
        out = torch.tanh(flat @ self.w.T + self.b * t.double().reshape(-1, 1) / 1000)
        return SimpleNamespace(sample=out.reshape(x.shape).to(x.dtype))

    def numpy(self, x: np.ndarray, t: int) -> np.ndarray:
        w, b = self.w.detach().numpy(), self.b.detach().numpy()
        return np.tanh(x.reshape(len(x), -1) @ w.T + b * t / 1000).reshape(x.shape)


def _images(n: int, seed: int, shape: tuple[int, ...] = (1, 4, 4)) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def test_loss_attack_equals_an_independent_numpy_loss() -> None:
    model, x = ToyEps(16), _images(5, 1)
    noises = torch.randn((2, 1, 4, 4), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = loss_errors(model, NoiseSchedule.from_scheduler(), x, (10, 500), noises, batch_size=2)
    xs, want = x.numpy(), np.zeros(len(x))
    for t in (10, 500):
        for eps in noises.numpy():
            x_t = np.sqrt(ALPHAS[t]) * xs + np.sqrt(1 - ALPHAS[t]) * eps
            want += ((model.numpy(x_t, t) - eps) ** 2).reshape(len(xs), -1).sum(axis=1)
    np.testing.assert_allclose(got.numpy(), want / 4, rtol=1e-6)


def test_secmi_equals_an_independent_numpy_ddim_round_trip() -> None:
    model, x = ToyEps(16, seed=1), _images(4, 2)

    def ddim(z: np.ndarray, a: int, b: int) -> np.ndarray:
        eps = model.numpy(z, a)
        x0 = (z - np.sqrt(1 - ALPHAS[a]) * eps) / np.sqrt(ALPHAS[a])
        return np.sqrt(ALPHAS[b]) * x0 + np.sqrt(1 - ALPHAS[b]) * eps

    z = x.numpy()
    for t in range(0, 40, 20):  # t_sec = 40, k = 20: inversion 0 -> 20 -> 40
        z = ddim(z, t, t + 20)
    back = ddim(ddim(z, 40, 60), 60, 40)
    want = ((back - z) ** 2).reshape(len(z), -1).sum(axis=1)
    got = secmi_errors(model, NoiseSchedule.from_scheduler(), x, t_sec=40, k=20, batch_size=3)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_pia_equals_an_independent_numpy_proximal_initialisation() -> None:
    model, x = ToyEps(16, seed=2), _images(6, 3)
    xs = x.numpy()
    eps0 = model.numpy(xs, 0)
    x_t = np.sqrt(ALPHAS[200]) * xs + np.sqrt(1 - ALPHAS[200]) * eps0
    want = (np.abs(model.numpy(x_t, 200) - eps0) ** 4).reshape(len(xs), -1).sum(axis=1) ** 0.25
    got = pia_errors(model, NoiseSchedule.from_scheduler(), x, t=200, p=4.0)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_percentile_rank_is_the_mann_whitney_auc() -> None:
    from scipy.stats import mannwhitneyu

    forget, holdout = np.array([1.0, 3.0, 3.0]), np.array([0.5, 2.0, 3.0, 4.0, 5.0, 6.0])
    u = mannwhitneyu(-forget, -holdout).statistic  # members have lower errors
    assert percentile_rank(forget, holdout) == pytest.approx(u / (len(forget) * len(holdout)))
    assert percentile_rank([0.0], holdout) == 1.0 and percentile_rank([9.0], holdout) == 0.0
    assert percentile_rank([3.0], holdout) == pytest.approx((3 + 0.5) / 6)  # a tie counts half
    reps = bootstrap_ranks(np.array([2.5]), holdout, 50, seed=1)
    assert reps.shape == (50,) and ((reps >= 0) & (reps <= 1)).all()
    assert np.array_equal(reps, bootstrap_ranks(np.array([2.5]), holdout, 50, seed=1))  # seeded


class TinyDenoiser(torch.nn.Module):
    """An MLP ε-model on 4x4 images (time as an input feature): memorises a few images in seconds."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(17, 256), torch.nn.SiLU(), torch.nn.Linear(256, 256),
                                       torch.nn.SiLU(), torch.nn.Linear(256, 16))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> SimpleNamespace:
        h = torch.cat([x.flatten(1).float(), t.float().reshape(-1, 1) / 1000], dim=1)
        return SimpleNamespace(sample=self.net(h).reshape(x.shape))


def _train(images: torch.Tensor, steps: int = 1500) -> TinyDenoiser:
    from unlearnbench.diffusion import ddpm_loss

    model, schedule, g = TinyDenoiser(), NoiseSchedule.from_scheduler(), torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        x = images[torch.randint(0, len(images), (64,), generator=g)]
        t = torch.randint(0, 1000, (64,), generator=g)
        loss = ddpm_loss(model, schedule, x, torch.randn(x.shape, generator=g), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_planted_member_ranks_at_the_top_and_a_non_member_does_not() -> None:
    """A model trained with the forget image ranks it above (nearly) every holdout image under each attack;
    one trained without it ranks it like the holdout images it never saw."""
    population = _images(72, 5).float()
    forget, others, holdout = population[:1], population[1:8], population[8:]
    schedule = NoiseSchedule.from_scheduler()
    settings = AttackSettings(secmi_t=40, secmi_k=20)
    with_forget, without = _train(torch.cat([forget, others])), _train(others)
    for attack_ranks in ("loss", "secmi", "pia"):
        ranks = {}
        for name, model in (("member", with_forget), ("never", without)):
            from unlearnbench.membership import attack_errors

            images = torch.cat([forget, holdout])
            errors = attack_errors(attack_ranks, model, schedule, images, settings, seed=0).numpy()
            ranks[name] = percentile_rank(errors[:1], errors[1:])
        assert ranks["member"] >= 0.95, (attack_ranks, ranks)
        assert ranks["never"] <= 0.9, (attack_ranks, ranks)


def test_holdout_and_settings_bad_inputs_are_refused_clearly() -> None:
    like = torch.zeros(1, 1, 4, 4)
    with pytest.raises(MembershipInputError, match="empty"):
        select_holdout(torch.zeros(0, 1, 4, 4), 16, like)
    with pytest.raises(MembershipInputError, match="same kind and size"):
        select_holdout(torch.zeros(8, 3, 4, 4), 16, like)
    with pytest.raises(MembershipInputError, match="at least 2"):
        select_holdout(torch.zeros(1, 1, 4, 4), 16, like)
    assert len(select_holdout(torch.randn(40, 1, 4, 4), 16, like)) == 16
    with pytest.raises(MembershipInputError, match="multiple of k"):
        AttackSettings.from_tier({"mia_secmi_t": 105})
    with pytest.raises(MembershipInputError, match="mia_loss_timesteps"):
        AttackSettings.from_tier({"mia_loss_timesteps": [1000]})
    with pytest.raises(MembershipInputError, match="relearn_steps must be a positive integer"):
        RelearnSettings.from_tier({"relearn_steps": 0})
    with pytest.raises(MembershipInputError, match="relearn_neighbours"):
        RelearnSettings.from_tier({"relearn_neighbours": -1})


def test_a_metric_undefined_on_the_task_is_a_usage_error() -> None:
    sd = TASKS.get("sd_memorized")
    tier = sd.tier(sd.default_tier)
    with pytest.raises(UsageError, match="mia_loss.*undefined on task 'sd_memorized'.*holdout"):
        resolve_metrics(tier, ["mia_loss"], 0, sd)
    mnist = TASKS.get("mnist_tshirt_mini")
    assert resolve_metrics(mnist.tier("smoke"), ["mia_loss", "relearn_forget_rate"], 0, mnist)
    # bad settings are refused before any cell runs
    import dataclasses

    zero = dataclasses.replace(mnist.tier("smoke"), eval={"relearn_steps": 0})
    with pytest.raises(UsageError, match="relearn_forget_rate.*relearn_steps must be a positive integer"):
        resolve_metrics(zero, ["relearn_forget_rate"], 0, mnist)
    odd = dataclasses.replace(mnist.tier("smoke"), eval={"mia_holdout": 1})
    with pytest.raises(UsageError, match="mia_pia.*mia_holdout"):
        resolve_metrics(odd, ["mia_pia"], 0, mnist)


def _ctx(tmp_path: Path, model: torch.nn.Module, holdout: torch.Tensor | None, tier_eval: dict) -> EvalContext:
    forget = torch.full((1, 1, 28, 28), 191 / 127.5 - 1)  # an 8-bit level (the NLL dequantizes it)
    retain = torch.rand((24, 1, 28, 28), generator=torch.Generator().manual_seed(1)) * 2 - 1
    data = TaskData(retain=retain, forget=forget.repeat(3, 1, 1, 1), forget_image=forget, source={"kind": "test"},
                    holdout=holdout, holdout_source="test images" if holdout is not None else "none in this test")
    return EvalContext(sample_sets={"samples": retain[:4]}, forget_image=forget, retain=retain, classifier_dir=None,
                       cache_dir=tmp_path / "cache", device=torch.device("cpu"), task=TASKS.get("mnist_tshirt_mini"),
                       data=data, model=model, tier_eval=tier_eval, seed=0,
                       sampler=SamplerConfig(kind="ddim", steps=2, num_samples=8, batch_size=8),
                       loop=LoopConfig(steps=2, batch_size=4, lr=1e-4))


def _unet() -> torch.nn.Module:
    from unlearnbench.datasets.mnist_tshirt.task import SMOKE_UNET
    from unlearnbench.diffusion import build_unet

    torch.manual_seed(0)
    return build_unet(SMOKE_UNET).eval()


SMALL = {"mia_holdout": 6, "mia_loss_timesteps": [100], "mia_secmi_t": 20, "mia_secmi_k": 10, "bootstrap": 20,
         "relearn_steps": 1, "relearn_neighbours": 2, "nll_tolerance": 1e-2}


def test_membership_metric_records_the_oracle_gap_and_intervals(tmp_path: Path) -> None:
    model, oracle = _unet(), _unet()
    with torch.no_grad():
        for p in oracle.parameters():
            p.add_(0.01)
    holdout = torch.rand((10, 1, 28, 28), generator=torch.Generator().manual_seed(2)) * 2 - 1
    ctx = _ctx(tmp_path, model, holdout, SMALL)
    ctx.oracle = lambda: (oracle, {"sha256": "oracle-test"})
    value = METRICS.get("mia_loss").compute(ctx)
    assert 0 <= value.value <= 1 and value.n_samples == 6 and len(value.replicates) == 20
    assert value.interval[0] <= value.value <= value.interval[1]
    assert value.extra["gap"] == pytest.approx(value.value - value.extra["oracle_rank"])
    assert value.extra["oracle"] == "oracle-test" and value.extra["forget_images"] == 1
    cached = list((tmp_path / "cache" / "membership").glob("oracle-loss-*.npz"))
    assert len(cached) == 1  # the oracle's errors are cached per seed, population and settings
    again = _ctx(tmp_path, model, holdout, SMALL)

    class Untouched(torch.nn.Module):
        def forward(self, *args: object) -> None:
            raise AssertionError("the oracle's errors come from the cache")

    again.oracle = lambda: (Untouched(), {"sha256": "oracle-test"})
    assert METRICS.get("mia_loss").compute(again).extra["oracle_rank"] == value.extra["oracle_rank"]
    # the oracle compared with itself: no gap
    self_ctx = _ctx(tmp_path, oracle, holdout, SMALL)
    self_ctx.oracle = ctx.oracle
    assert METRICS.get("mia_pia").compute(self_ctx).extra["gap"] == 0.0


def test_membership_without_a_holdout_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    value = METRICS.get("mia_secmi").compute(_ctx(tmp_path, _unet(), None, SMALL))
    assert value.value is None and not value.available and "none in this test" in value.reason


def test_relearning_attack_reports_the_model_and_the_oracle(tmp_path: Path) -> None:
    model, oracle = _unet(), _unet()
    holdout = torch.rand((10, 1, 28, 28), generator=torch.Generator().manual_seed(2)) * 2 - 1
    ctx = _ctx(tmp_path, model, holdout, SMALL)
    ctx.oracle = lambda: (oracle, {"sha256": "oracle-test"})
    before = [p.detach().clone() for p in model.parameters()]
    for name in ("relearn_knn_forget_rate", "relearn_knn_nll", "relearn_knn_mia_loss"):
        value = METRICS.get(name).compute(ctx)
        assert value.value is not None and value.extra["oracle_value"] is not None
        assert value.extra["steps"] == 1 and value.extra["neighbour_images"] == 2
    # the same model and oracle (identical weights): the attack gives both the same numbers
    assert METRICS.get("relearn_knn_mia_loss").compute(ctx).extra["oracle_value"] == \
        METRICS.get("relearn_knn_mia_loss").compute(ctx).value
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the cell's model is not touched
    assert list((tmp_path / "cache" / "membership").glob("oracle-relearn_knn-*.json"))
    bad = _ctx(tmp_path, model, holdout, {**SMALL, "relearn_steps": 0})
    zero = METRICS.get("relearn_forget_rate").compute(bad)
    assert zero.value is None and "relearn_steps must be a positive integer" in zero.reason
