"""Unit tests of the unlearning methods against their formulas (the SISS and ReTrack papers).

Every test uses tiny hand-made tensors or a tiny UNet (1×8×8) and recomputes the expected
quantity independently (closed forms in float64, direct autograd, brute-force search).
"""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from unlearnbench.diffusion import NoiseSchedule, make_scheduler
from unlearnbench.loop import Batch, LoopConfig, StepContext, finetune, step_direction
from unlearnbench.method import UnlearnJob
from unlearnbench.methods.erasediff import EraseDiff, EraseDiffHparams, erasediff_direction
from unlearnbench.methods.naive_deletion import NaiveDeletion
from unlearnbench.methods.neggrad import NegGrad, NegGradHparams
from unlearnbench.methods.retrack import ReTrack, ReTrackHparams, retrack_target, retrack_unlearn_loss
from unlearnbench.methods.retrack_all import ReTrackAll
from unlearnbench.methods.siss import SISS, SISSHparams, siss_log_weights
from unlearnbench.methods.siss_no_is import SISSNoIS, SISSNoISHparams
from unlearnbench.neighbours import knn_search
from unlearnbench.protocols import MNIST_TSHIRT
from unlearnbench.registry import METHODS

CPU = torch.device("cpu")
T = 1000


# --------------------------------------------------------------------------------------------
# helpers


def tiny_unet(seed: int = 0, dtype: torch.dtype = torch.float32) -> UNet2DModel:
    torch.manual_seed(seed)
    model = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(4, 8),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    return model.double() if dtype == torch.float64 else model


def alphas_cumprod64() -> torch.Tensor:
    """ᾱ_t straight from a fresh diffusers scheduler, in float64 (independent of NoiseSchedule)."""
    return DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear").alphas_cumprod.double()


def gamma_sigma(t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    ac = alphas_cumprod64()[t]
    return ac.sqrt().to(dtype).view(-1, 1, 1, 1), (1 - ac).sqrt().to(dtype).view(-1, 1, 1, 1)


def make_ctx(model, hparams, seed: int, state=None) -> StepContext:
    return StepContext(model, NoiseSchedule.from_scheduler(), hparams, state, torch.Generator().manual_seed(seed), CPU)


def params_of(model) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def autograd(loss, model, retain_graph=False) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params_of(model), retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params_of(model), grads)]


def global_norm(gs) -> torch.Tensor:
    return torch.sqrt(sum((g.double() ** 2).sum() for g in gs))


def assert_grads_equal(model, expected, rtol=1e-9, atol=1e-11):
    got = [p.grad for p in params_of(model)]
    assert all(g is not None for g in got)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=rtol, atol=atol)


class ForwardCounter:
    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def remove(self):
        self.handle.remove()


def tiny_data(seed: int = 0, n: int = 4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 1, 8, 8), generator=g, dtype=dtype) * 2 - 1
    a = torch.rand((1, 1, 8, 8), generator=g, dtype=dtype).mul(2).sub(1).expand(n, -1, -1, -1).clone()
    return x, a


# --------------------------------------------------------------------------------------------
# 1. SISS importance weights


def closed_form_weights(delta: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """w_x = 1/((1−λ)+λ e^{d_x−d_a}), w_a = 1/((1−λ) e^{d_a−d_x}+λ), directly in float64."""
    d = delta.double()
    w_x = 1.0 / ((1 - lam) + lam * torch.exp(d))
    w_a = 1.0 / ((1 - lam) * torch.exp(-d) + lam)
    return w_x, w_a


@pytest.mark.parametrize("lam", [0.25, 0.5, 0.9])
def test_siss_weights_match_closed_form(lam):
    delta = torch.tensor([-30.0, -5.0, -1.3, -0.2, 0.0, 0.1, 0.7, 2.5, 8.0, 30.0], dtype=torch.float64)
    log_w_x, log_w_a = siss_log_weights(delta, lam)
    w_x, w_a = closed_form_weights(delta, lam)
    torch.testing.assert_close(log_w_x.exp(), w_x, rtol=1e-12, atol=0)
    torch.testing.assert_close(log_w_a.exp(), w_a, rtol=1e-12, atol=0)
    # the two weights are the likelihood ratios of one mixture: (1−λ) w_x + λ w_a = 1
    torch.testing.assert_close((1 - lam) * w_x + lam * w_a, torch.ones_like(w_x), rtol=1e-12, atol=0)
    # float32 input keeps its dtype and agrees to float32 precision
    lx32, la32 = siss_log_weights(delta.float(), lam)
    assert lx32.dtype == la32.dtype == torch.float32
    torch.testing.assert_close(lx32.exp().double(), w_x, rtol=1e-5, atol=0)
    torch.testing.assert_close(la32.exp().double(), w_a, rtol=1e-5, atol=0)


def test_siss_weights_limits_and_stability():
    delta = torch.tensor([-40.0, -3.0, 0.0, 2.0, 40.0], dtype=torch.float64)
    # λ = 0: every sample is a retain sample, w_x ≡ 1 (w_a = e^δ)
    log_w_x, log_w_a = siss_log_weights(delta, 0.0)
    torch.testing.assert_close(log_w_x.exp(), torch.ones_like(delta), rtol=0, atol=1e-15)
    torch.testing.assert_close(log_w_a, delta, rtol=1e-12, atol=1e-12)
    # λ = 1: every sample is a forget sample, w_a ≡ 1 (w_x = e^{−δ})
    log_w_x, log_w_a = siss_log_weights(delta, 1.0)
    torch.testing.assert_close(log_w_a.exp(), torch.ones_like(delta), rtol=0, atol=1e-15)
    torch.testing.assert_close(log_w_x, -delta, rtol=1e-12, atol=1e-12)
    # large |δ| at λ = 0.5: finite, saturating at 0 and 1/λ = 2
    big = torch.tensor([-500.0, 500.0], dtype=torch.float64)
    for dt in (torch.float64, torch.float32):
        log_w_x, log_w_a = siss_log_weights(big.to(dt), 0.5)
        w_x, w_a = log_w_x.exp(), log_w_a.exp()
        assert not torch.isnan(log_w_x).any() and not torch.isnan(log_w_a).any()
        assert torch.isfinite(w_x).all() and torch.isfinite(w_a).all()
        torch.testing.assert_close(w_x.double(), torch.tensor([2.0, 0.0], dtype=torch.float64), rtol=1e-6, atol=1e-30)
        torch.testing.assert_close(w_a.double(), torch.tensor([0.0, 2.0], dtype=torch.float64), rtol=1e-6, atol=1e-30)


# --------------------------------------------------------------------------------------------
# 2. SISS: one forward pass, g = g_x − (C/||g_a||) g_a


SISS_SEED = 3  # a seed whose mixture draws pick both branches (asserted below)


def siss_replica(model, x, a, lam, C, seed):
    """Recompute SISS's update from scratch, re-drawing the loop generator's sequence."""
    g = torch.Generator().manual_seed(seed)
    b = len(x)
    eps = torch.randn(x.shape, generator=g, dtype=x.dtype)
    t = torch.randint(0, T, (b,), generator=g)
    pick = torch.rand(b, generator=g) < lam
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
    g_x = autograd(loss_x, model, retain_graph=True)
    g_a = autograd(loss_a, model)
    coef = C / global_norm(g_a)
    return [gx - coef * ga for gx, ga in zip(g_x, g_a)], pick, w_x, w_a, loss_x


def test_siss_accumulate_matches_direct_gradients():
    model = tiny_unet(0, torch.float64)
    x, _ = tiny_data(0)
    # forget samples near the retain samples, so that the importance weights are not saturated
    a = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    lam, C = 0.5, 5.0
    expected, pick, w_x, w_a, loss_x = siss_replica(model, x, a, lam, C, SISS_SEED)
    # the test is only informative if both mixture branches occur and the weights are not all 0/1
    assert pick.any() and (~pick).any()
    assert ((w_x > 1e-3) & (w_x < 1.999)).any()

    model.zero_grad(set_to_none=True)
    counter = ForwardCounter(model)
    ctx = make_ctx(model, SISSHparams(lam=lam, scaling_norm=C), SISS_SEED)
    batch = Batch(x, a, torch.zeros(len(a), dtype=torch.long))
    reported = step_direction(SISS(), ctx, [batch])
    counter.remove()
    assert counter.calls == 1  # ONE UNet forward per micro-batch
    assert reported == pytest.approx(float(loss_x.detach()), rel=1e-9)
    assert_grads_equal(model, expected)


def test_siss_forget_direction_has_norm_c():
    model = tiny_unet(1, torch.float64)
    x, a = tiny_data(1)
    C = 7.0
    # λ = 0 → m = x_t and w_x = 1, so g_x is the plain DDPM gradient on x; what is left is −C·ĝ_a
    model.zero_grad(set_to_none=True)
    ctx = make_ctx(model, SISSHparams(lam=0.0, scaling_norm=C), 11)
    step_direction(SISS(), ctx, [Batch(x, a, torch.zeros(len(a), dtype=torch.long))])
    g = torch.Generator().manual_seed(11)
    eps = torch.randn(x.shape, generator=g, dtype=x.dtype)
    t = torch.randint(0, T, (len(x),), generator=g)
    gamma, sigma = gamma_sigma(t, x.dtype)
    loss = ((model(gamma * x + sigma * eps, t).sample - eps) ** 2).flatten(1).sum(1).mean()
    g_x = autograd(loss, model)
    residual = [p.grad - gx for p, gx in zip(params_of(model), g_x)]
    assert float(global_norm(residual)) == pytest.approx(C, rel=1e-9)


# --------------------------------------------------------------------------------------------
# 3. SISS (No IS): two forward passes, shared ε and t, rescaled subtraction


def test_siss_no_is_matches_direct_gradients():
    model = tiny_unet(2, torch.float64)
    x, a = tiny_data(2)
    C, seed = 5.0, 5
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(x.shape, generator=g, dtype=x.dtype)
    t = torch.randint(0, T, (len(x),), generator=g)
    gamma, sigma = gamma_sigma(t, x.dtype)
    loss_x = ((model(gamma * x + sigma * eps, t).sample - eps) ** 2).flatten(1).sum(1).mean()
    loss_a = ((model(gamma * a + sigma * eps, t).sample - eps) ** 2).flatten(1).sum(1).mean()
    g_x, g_a = autograd(loss_x, model), autograd(loss_a, model)
    coef = C / global_norm(g_a)
    expected = [gx - coef * ga for gx, ga in zip(g_x, g_a)]

    model.zero_grad(set_to_none=True)
    counter = ForwardCounter(model)
    ctx = make_ctx(model, SISSNoISHparams(scaling_norm=C), seed)
    reported = step_direction(SISSNoIS(), ctx, [Batch(x, a, torch.zeros(len(a), dtype=torch.long))])
    counter.remove()
    assert counter.calls == 2
    assert reported == pytest.approx(float(loss_x.detach()), rel=1e-9)
    assert_grads_equal(model, expected)


# --------------------------------------------------------------------------------------------
# 4. EraseDiff


def test_erasediff_direction_positive_coefficient():
    g_x = [torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([[0.5], [3.0]], dtype=torch.float64)]
    g_a = [torch.tensor([-1.0, 1.0], dtype=torch.float64), torch.tensor([[2.0], [-1.0]], dtype=torch.float64)]
    eta = 0.1
    # ⟨g_x, g_a⟩ = −1 − 2 + 1 − 3 = −5, ||g_a||² = 1 + 1 + 4 + 1 = 7 → coef = 0.1 + 5/7
    coef = eta + 5.0 / 7.0
    out = erasediff_direction(g_x, g_a, eta)
    assert len(out) == 2
    for o, gx, ga in zip(out, g_x, g_a):
        assert o.shape == gx.shape
        torch.testing.assert_close(o, gx + coef * ga, rtol=1e-12, atol=1e-12)
    # the combined direction has ⟨g, g_a⟩ = η ||g_a||² (it no longer increases L_a to first order)
    inner = sum((o * ga).sum() for o, ga in zip(out, g_a))
    assert float(inner) == pytest.approx(eta * 7.0, rel=1e-12)


def test_erasediff_direction_clipped_to_zero():
    g_x = [torch.tensor([2.0, 1.0], dtype=torch.float64), torch.tensor([3.0], dtype=torch.float64)]
    g_a = [torch.tensor([1.0, 1.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)]
    # ⟨g_x, g_a⟩/||g_a||² = 6/3 = 2 > η → coefficient clipped to 0, g = g_x
    out = erasediff_direction(g_x, g_a, 1e-3)
    for o, gx in zip(out, g_x):
        torch.testing.assert_close(o, gx, rtol=0, atol=0)
    # boundary just below / above: η − 2 = ±0.5
    out = erasediff_direction(g_x, g_a, 2.5)
    for o, gx, ga in zip(out, g_x, g_a):
        torch.testing.assert_close(o, gx + 0.5 * ga, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("offset", [None, 0.5])
def test_erasediff_accumulate_matches_direct_gradients(offset):
    """offset None: the published η = 1e-3; otherwise η = ⟨g_x, g_a⟩/||g_a||² + offset (coef = offset > 0)."""
    model = tiny_unet(3, torch.float64)
    x, a = tiny_data(3)
    seed = 9
    g = torch.Generator().manual_seed(seed)
    eps_x = torch.randn(x.shape, generator=g, dtype=x.dtype)
    t_x = torch.randint(0, T, (len(x),), generator=g)
    t_a = torch.randint(0, T, (len(a),), generator=g)
    eps_a = torch.randn(a.shape, generator=g, dtype=a.dtype)
    u = torch.rand(a.shape, generator=g, dtype=a.dtype)  # U[0, 1) target
    gx_, sx_ = gamma_sigma(t_x, x.dtype)
    ga_, sa_ = gamma_sigma(t_a, a.dtype)
    loss_x = ((model(gx_ * x + sx_ * eps_x, t_x).sample - eps_x) ** 2).flatten(1).sum(1).mean()
    loss_a = ((model(ga_ * a + sa_ * eps_a, t_a).sample - u) ** 2).flatten(1).sum(1).mean()
    g_x, g_a = autograd(loss_x, model), autograd(loss_a, model)
    ratio = float(sum((p * q).sum() for p, q in zip(g_x, g_a))) / float(global_norm(g_a)) ** 2
    eta = 1e-3 if offset is None else ratio + offset
    coef = max(eta - ratio, 0.0)
    if offset is not None:
        assert coef == pytest.approx(offset)
    expected = [p + coef * q for p, q in zip(g_x, g_a)]

    model.zero_grad(set_to_none=True)
    counter = ForwardCounter(model)
    ctx = make_ctx(model, EraseDiffHparams(eta=eta), seed)
    reported = step_direction(EraseDiff(), ctx, [Batch(x, a, torch.zeros(len(a), dtype=torch.long))])
    counter.remove()
    assert counter.calls == 2
    assert reported == pytest.approx(float(loss_x.detach()), rel=1e-9)
    assert_grads_equal(model, expected)


# --------------------------------------------------------------------------------------------
# 5. ReTrack


def direct_retrack_loss(pred, x_a, gamma, sigma, neighbours):
    """mean_b Σ_j w_j ||pred − v_j||², v_j = (x_a − γ n_j)/σ, w = softmax(−||v_j||²/2), built explicitly."""
    b = x_a.shape[0]
    x = x_a.reshape(b, 1, -1)
    n = neighbours if neighbours.dim() == 3 else neighbours.unsqueeze(0).expand(b, -1, -1)
    v = (x - gamma.reshape(b, 1, 1) * n) / sigma.reshape(b, 1, 1)  # (B, K, D)
    w = torch.softmax(-(v**2).sum(2) / 2, dim=1)
    per = ((pred.reshape(b, 1, -1) - v) ** 2).sum(2)
    return (w * per).sum(1).mean()


@pytest.mark.parametrize("shared", [False, True])
def test_retrack_loss_matches_direct(shared):
    g = torch.Generator().manual_seed(0)
    b, k, d = 3, 5, 12
    t = torch.tensor([50, 400, 900])
    gamma, sigma = gamma_sigma(t, torch.float64)
    a = torch.rand((b, 1, 3, 4), generator=g, dtype=torch.float64) * 2 - 1
    x_a = gamma * a + sigma * torch.randn(a.shape, generator=g, dtype=torch.float64)
    # neighbours close to a so the softmax is not one-hot
    if shared:
        nb = a[0].flatten().unsqueeze(0) + 0.3 * torch.randn((7, d), generator=g, dtype=torch.float64)
    else:
        nb = a.flatten(1).unsqueeze(1) + 0.3 * torch.randn((b, k, d), generator=g, dtype=torch.float64)
    pred0 = torch.randn(a.shape, generator=g, dtype=torch.float64)

    pred1 = pred0.clone().requires_grad_(True)
    v_bar, v_sq_mean = retrack_target(x_a, gamma, sigma, nb)
    assert v_bar.shape == x_a.shape and v_sq_mean.shape == (b,)
    loss = retrack_unlearn_loss(pred1, v_bar, v_sq_mean)
    (grad,) = torch.autograd.grad(loss, pred1)

    pred2 = pred0.clone().requires_grad_(True)
    ref = direct_retrack_loss(pred2, x_a, gamma, sigma, nb)
    (ref_grad,) = torch.autograd.grad(ref, pred2)

    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-10)
    # the weights are non-trivial in this case (else the softmax would not be tested)
    n = nb if nb.dim() == 3 else nb.unsqueeze(0).expand(b, -1, -1)
    v = (x_a.reshape(b, 1, -1) - gamma.reshape(b, 1, 1) * n) / sigma.reshape(b, 1, 1)
    w = torch.softmax(-(v**2).sum(2) / 2, dim=1)
    assert (w.max(1).values < 0.99).any()
    # v̄ is the posterior mean of v_j
    torch.testing.assert_close(v_bar.reshape(b, -1), (w.unsqueeze(2) * v).sum(1), rtol=1e-10, atol=1e-10)


def test_retrack_loss_float32_matches_direct():
    g = torch.Generator().manual_seed(1)
    b, k, d = 4, 10, 64
    t = torch.tensor([10, 200, 500, 999])
    gamma, sigma = gamma_sigma(t, torch.float32)
    a = torch.rand((b, 1, 8, 8), generator=g) * 2 - 1
    x_a = gamma * a + sigma * torch.randn(a.shape, generator=g)
    nb = a.flatten(1).unsqueeze(1) + 0.5 * torch.randn((b, k, d), generator=g)
    pred = torch.randn(a.shape, generator=g)
    v_bar, v_sq_mean = retrack_target(x_a, gamma, sigma, nb)
    got = retrack_unlearn_loss(pred, v_bar, v_sq_mean)
    ref = direct_retrack_loss(pred.double(), x_a.double(), gamma.double(), sigma.double(), nb.double())
    assert float(got) == pytest.approx(float(ref), rel=1e-4)


def make_job(retain, forget, hparams):
    return UnlearnJob(
        base_model=None, retain=retain, forget=forget, loop=LoopConfig(steps=1, batch_size=1, lr=0.0),
        hparams=hparams, seed=0, device=CPU, progress=False,
    )


def test_retrack_setup_neighbours_come_from_retain_set():
    g = torch.Generator().manual_seed(0)
    retain = torch.rand((40, 1, 4, 4), generator=g) * 2 - 1
    distinct = torch.rand((3, 1, 4, 4), generator=g) * 2 - 1
    # forget: 3 distinct samples, the first one copied three times
    forget = torch.stack([distinct[0], distinct[1], distinct[0], distinct[2], distinct[0]])
    k = 6
    nb = ReTrack().setup(make_job(retain, forget, ReTrackHparams(k=k, lam=0.5)))
    assert nb.shape == (len(forget), k, 16)

    flat_r, flat_f = retain.flatten(1), forget.flatten(1)
    # no forget row appears in the retain set, so a search that included the forget set would fail here
    assert torch.cdist(flat_f, flat_r).min() > 0
    for i in range(len(forget)):
        for j in range(k):
            assert (nb[i, j] == flat_r).all(1).any(), "neighbour is not a retain row"
    # the true K nearest, nearest first (brute force)
    dist = torch.cdist(flat_f.double(), flat_r.double())
    ref_d, ref_i = dist.topk(k, dim=1, largest=False)
    torch.testing.assert_close(nb, flat_r[ref_i], rtol=0, atol=0)
    got_d = (flat_f.unsqueeze(1).double() - nb.double()).norm(dim=2)
    torch.testing.assert_close(got_d, ref_d, rtol=1e-6, atol=1e-6)
    # identical forget copies share identical neighbours
    assert torch.equal(nb[0], nb[2]) and torch.equal(nb[0], nb[4])
    assert not torch.equal(nb[0], nb[1])


@pytest.mark.parametrize("name", ["retrack", "retrack_all"])
def test_retrack_step_loss_matches_direct(name):
    """The full ReTrack step: λ·L_unlearn (neighbours picked by forget_index) + (1 − λ)·DDPM(retain)."""
    model = tiny_unet(8, torch.float64)
    g = torch.Generator().manual_seed(4)
    retain = torch.rand((12, 1, 8, 8), generator=g, dtype=torch.float64) * 2 - 1
    forget_set = torch.rand((3, 1, 8, 8), generator=g, dtype=torch.float64) * 2 - 1
    lam, seed = 0.3, 17
    if name == "retrack":
        method, hp = ReTrack(), ReTrackHparams(k=4, lam=lam)
    else:
        method, hp = ReTrackAll(), ReTrackAll().Hparams(lam=lam)
    state = method.setup(make_job(retain, forget_set, hp))
    fi = torch.tensor([2, 0, 2, 1])
    x, a = retain[:4], forget_set[fi]

    gen = torch.Generator().manual_seed(seed)
    t_a = torch.randint(0, T, (4,), generator=gen)
    eps_a = torch.randn(a.shape, generator=gen, dtype=a.dtype)
    eps_x = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    t_x = torch.randint(0, T, (4,), generator=gen)
    gam, sig = gamma_sigma(t_a, a.dtype)
    x_a = gam * a + sig * eps_a
    if name == "retrack":
        dist = torch.cdist(forget_set.flatten(1), retain.flatten(1))
        nb = retain.flatten(1)[dist.topk(4, dim=1, largest=False).indices][fi]
    else:
        nb = retain.flatten(1)
    with torch.no_grad():
        unlearn = direct_retrack_loss(model(x_a, t_a).sample, x_a, gam, sig, nb)
        gx, sx = gamma_sigma(t_x, x.dtype)
        keep = ((model(gx * x + sx * eps_x, t_x).sample - eps_x) ** 2).flatten(1).sum(1).mean()
        ref = lam * unlearn + (1 - lam) * keep
        got = method.loss(make_ctx(model, hp, seed, state), Batch(x, a, fi))
    assert float(got) == pytest.approx(float(ref), rel=1e-9)


def test_retrack_all_setup_is_whole_retain_set():
    retain = torch.rand((9, 1, 2, 2))
    state = ReTrackAll().setup(make_job(retain, retain[:2] + 5, ReTrackAll().hparams(MNIST_TSHIRT)))
    assert torch.equal(state, retain.flatten(1))


@pytest.mark.parametrize("chunk_size,k", [(7, 10), (7, 3), (2, 5), (1000, 4)])
def test_knn_search_matches_brute_force(chunk_size, k):
    g = torch.Generator().manual_seed(chunk_size + k)
    database = torch.randn((50, 1, 3, 3), generator=g)
    base = torch.randn((4, 1, 3, 3), generator=g)
    queries = torch.cat([base, base[1:2], base[1:2], base[3:4]])  # with duplicates
    d, i = knn_search(queries, database, k, chunk_size=chunk_size)
    assert d.shape == i.shape == (len(queries), k)
    ref = torch.cdist(queries.flatten(1).double(), database.flatten(1).double()) ** 2
    ref_d, ref_i = ref.topk(k, dim=1, largest=False)
    assert torch.equal(i, ref_i)
    torch.testing.assert_close(d.double(), ref_d, rtol=1e-5, atol=1e-5)
    assert torch.equal(i[1], i[4]) and torch.equal(i[1], i[5]) and torch.equal(i[3], i[6])


def test_knn_search_ties_keep_lower_index_and_k_too_large():
    database = torch.zeros((10, 2))
    database[:, 0] = torch.arange(10, dtype=torch.float32) + 10.0
    database[8] = database[1]  # rows 1 and 8 tie; they fall in different chunks (size 4)
    query = torch.tensor([[11.0, 0.0]])
    for chunk_size in (4, 3, 65536):
        _, i = knn_search(query, database, 3, chunk_size=chunk_size)
        assert i.tolist() == [[1, 8, 0]]  # rows 0 and 2 also tie (distance 1)
    with pytest.raises(ValueError):
        knn_search(query, database, 11)


# --------------------------------------------------------------------------------------------
# 6. NegGrad and naive deletion


def ddpm_loss_replica(model, x0, seed):
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    t = torch.randint(0, T, (len(x0),), generator=g)
    gamma, sigma = gamma_sigma(t, x0.dtype)
    return ((model(gamma * x0 + sigma * eps, t).sample - eps) ** 2).flatten(1).sum(1).mean()


def test_neggrad_loss_is_negated_scaled_forget_ddpm_loss():
    model = tiny_unet(4, torch.float64)
    x, a = tiny_data(4)
    with torch.no_grad():
        for scale in (1.0, 0.01):
            got = NegGrad().loss(make_ctx(model, NegGradHparams(scale=scale), 21), Batch(x, a, torch.zeros(4, dtype=torch.long)))
            ref = -scale * ddpm_loss_replica(model, a, 21)
            assert float(got) == pytest.approx(float(ref), rel=1e-10)
            assert float(got) < 0
            # retain contents do not enter
            got2 = NegGrad().loss(make_ctx(model, NegGradHparams(scale=scale), 21), Batch(x * 0 + 0.3, a, torch.zeros(4, dtype=torch.long)))
            assert float(got2) == float(got)


def test_naive_deletion_is_retain_ddpm_loss_only():
    model = tiny_unet(5, torch.float64)
    x, a = tiny_data(5)
    idx = torch.zeros(4, dtype=torch.long)
    with torch.no_grad():
        got = NaiveDeletion().loss(make_ctx(model, NaiveDeletion().hparams(MNIST_TSHIRT), 8), Batch(x, a, idx))
        other = NaiveDeletion().loss(make_ctx(model, None, 8), Batch(x, torch.randn_like(a) * 3, idx))
        ref = ddpm_loss_replica(model, x, 8)
    assert float(got) == pytest.approx(float(ref), rel=1e-10)
    assert float(other) == float(got)


def test_naive_deletion_run_ignores_forget_contents():
    retain = torch.rand((16, 1, 8, 8)) * 2 - 1
    forget_a = torch.rand((1, 1, 8, 8)).expand(4, -1, -1, -1).clone()
    forget_b = -forget_a
    loop = LoopConfig(steps=2, batch_size=4, lr=1e-3)
    runs = []
    for forget in (forget_a, forget_b):
        model = tiny_unet(6)
        finetune(model, NaiveDeletion(), retain, forget, loop, None, 0, CPU, progress=False)
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(p, q) for p, q in zip(*runs))


# --------------------------------------------------------------------------------------------
# 7. Every fine-tuning method on the shared loop


FINETUNE_METHODS = [name for name in METHODS.names() if getattr(METHODS.get(name), "finetunes", False)]


def test_registry_has_the_fine_tuning_methods():
    assert set(FINETUNE_METHODS) >= {"naive_deletion", "neggrad", "erasediff", "siss", "siss_no_is", "retrack", "retrack_all"}
    assert not METHODS.get("pretrain").finetunes and not METHODS.get("retrain").finetunes
    # the reference rows (the model before unlearning, the oracle) do not fine-tune
    assert all(not METHODS.get(n).finetunes for n in METHODS.names() if METHODS.get(n).role != "unlearning")


def run_method(name, seed=0):
    g = torch.Generator().manual_seed(123)
    retain = torch.rand((32, 1, 8, 8), generator=g) * 2 - 1
    forget = (torch.rand((1, 1, 8, 8), generator=g) * 2 - 1).expand(4, -1, -1, -1).clone()
    method = METHODS.get(name)()
    hparams = method.hparams(MNIST_TSHIRT)
    loop = LoopConfig(steps=2, batch_size=4, lr=1e-3)
    model = tiny_unet(7)
    before = [p.detach().clone() for p in model.parameters()]
    state = method.setup(UnlearnJob(model, retain, forget, loop, hparams, seed, CPU, progress=False))
    log = finetune(model, method, retain, forget, loop, hparams, seed, CPU, state=state, progress=False)
    after = [p.detach().clone() for p in model.parameters()]
    return before, after, log


@pytest.mark.parametrize("name", FINETUNE_METHODS)
def test_finetune_runs_and_is_reproducible(name):
    before, after, log = run_method(name)
    assert len(log.losses) == 2 and all(math.isfinite(v) for v in log.losses)
    assert len(log.grad_norms) == 2 and all(math.isfinite(v) and v > 0 for v in log.grad_norms)
    changed = [not torch.equal(b, a) for b, a in zip(before, after)]
    # SalUn moves only its mask (the top 50% of weights ranked together): whole tensors may stay fixed
    share = 0.3 if name == "salun" else 0.9
    assert sum(changed) >= share * len(changed), f"{name}: only {sum(changed)}/{len(changed)} parameters moved"
    delta = max(float((b - a).abs().max()) for b, a in zip(before, after))
    assert delta > 1e-4
    assert all(torch.isfinite(a).all() for a in after)
    _, again, _ = run_method(name)
    assert all(torch.equal(p, q) for p, q in zip(after, again)), f"{name}: same seed, different parameters"
    _, other_seed, _ = run_method(name, seed=1)
    assert not all(torch.equal(p, q) for p, q in zip(after, other_seed))


# --------------------------------------------------------------------------------------------
# 8. The noise schedule


def test_noise_schedule_matches_diffusers_add_noise():
    scheduler = make_scheduler()
    schedule = NoiseSchedule.from_scheduler(scheduler)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 1, 17, 250, 500, 998, 999])
    x0 = torch.rand((len(t), 1, 8, 8), generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    ref = scheduler.add_noise(x0, eps, t)
    got = schedule.add_noise(x0, eps, t)
    assert got.dtype == x0.dtype and got.shape == x0.shape
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    ref64 = scheduler.add_noise(x0.double(), eps.double(), t)
    torch.testing.assert_close(schedule.add_noise(x0.double(), eps.double(), t), ref64, rtol=1e-12, atol=1e-12)
    # γ² + σ² = 1 and the linear-β schedule's end points
    gam, sig = schedule.gamma(t, x0.double()), schedule.sigma(t, x0.double())
    torch.testing.assert_close(gam**2 + sig**2, torch.ones_like(gam), rtol=1e-12, atol=1e-12)
    assert float(sig.flatten()[0]) == pytest.approx(math.sqrt(1e-4), rel=1e-3)  # ᾱ_0 is float32 in diffusers
    assert schedule.num_timesteps == T
    assert scheduler.config.beta_schedule == "linear" and scheduler.config.prediction_type == "epsilon"


def test_sample_timesteps_range_and_seeding():
    schedule = NoiseSchedule.from_scheduler()
    t1 = schedule.sample_timesteps(4000, torch.Generator().manual_seed(0), CPU)
    t2 = schedule.sample_timesteps(4000, torch.Generator().manual_seed(0), CPU)
    assert torch.equal(t1, t2) and t1.dtype == torch.long
    assert int(t1.min()) >= 0 and int(t1.max()) <= T - 1
    assert int(t1.min()) < 20 and int(t1.max()) > T - 20


def test_one_batched_forward_equals_two_separate_calls() -> None:
    """GroupNorm normalises per sample, so ReTrack may batch its two branches without changing the maths."""
    model = tiny_unet(seed=5)
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(3, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    t1, t2 = torch.randint(0, 1000, (3,), generator=g), torch.randint(0, 1000, (4,), generator=g)
    with torch.no_grad():
        together = model(torch.cat([x1, x2]), torch.cat([t1, t2])).sample
        apart = torch.cat([model(x1, t1).sample, model(x2, t2).sample])
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-5)
