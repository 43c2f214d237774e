"""PF-ODE likelihood: exactness on Gaussian data (closed form), Hutchinson vs exact trace on a tiny UNet,
determinism, dequantization and the bits/dim offset."""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Iterator

import pytest
import torch
from diffusers import UNet2DModel
from torch import Tensor

import unlearnbench.likelihood as lk

# The protocol's VPSDE (Song et al. 2021), written out here so the Gaussian stand-in does not
# borrow the code under test.
BETA_MIN, BETA_MAX, T = 0.1, 20.0, 1000
EPS = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from threads, and oversubscribed cores make them much slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _log_mean_coeff(t: float) -> float:
    return -0.25 * t * t * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN


class GaussianEps(torch.nn.Module):
    """The exact ε-prediction for data N(μ, Σ) under the VPSDE, called like a diffusers UNet.

    x_t ~ N(m_t μ, C_t), C_t = m_t² Σ + σ_t² I, so ε*(x, t) = σ_t C_t⁻¹ (x − m_t μ).
    """

    def __init__(self, mean: Tensor, cov: Tensor) -> None:
        super().__init__()
        lam, q = torch.linalg.eigh(cov)
        self.register_buffer("mean", mean)
        self.register_buffer("lam", lam)
        self.register_buffer("q", q)

    def cov_eigenvalues(self, t: float) -> Tensor:
        m2 = math.exp(2 * _log_mean_coeff(t))
        return m2 * self.lam + (1 - m2)

    def forward(self, x: Tensor, timestep: Tensor) -> SimpleNamespace:
        labels = timestep.reshape(-1)
        assert torch.all(labels == labels[0]), "one time per ODE evaluation"
        t = float(labels[0]) / (T - 1)
        m, s = math.exp(_log_mean_coeff(t)), math.sqrt(1 - math.exp(2 * _log_mean_coeff(t)))
        centred = x.flatten(1) - m * self.mean
        eps = s * ((centred @ self.q) / self.cov_eigenvalues(t)) @ self.q.T
        return SimpleNamespace(sample=eps.reshape(x.shape))

    def ode_endpoint_logp(self, x: Tensor) -> Tensor:
        """What the PF ODE must return: the flow map is linear, x_1 − m_1 μ = C_1^½ C_eps^-½ (x − m_eps μ),
        so log p = log N(x_1; 0, I) + log det(C_1^½ C_eps^-½) (N(0, I) as prior, like the code)."""
        m0, m1 = math.exp(_log_mean_coeff(EPS)), math.exp(_log_mean_coeff(1.0))
        ratio = (self.cov_eigenvalues(1.0) / self.cov_eigenvalues(EPS)).sqrt()
        x1 = m1 * self.mean + ((x.flatten(1) - m0 * self.mean) @ self.q * ratio) @ self.q.T
        prior = torch.distributions.Normal(0.0, 1.0).log_prob(x1).sum(dim=1)
        return prior + ratio.log().sum()


def _gaussian(dims: int, seed: int, isotropic: bool) -> tuple[GaussianEps, Tensor, Tensor]:
    """A stand-in model, three test points drawn from its data law, and their exact log-density."""
    g = torch.Generator().manual_seed(seed)
    mean = 0.3 * torch.randn(dims, generator=g, dtype=torch.float64)
    if isotropic:
        cov = 0.25 * torch.eye(dims, dtype=torch.float64)
    else:
        a = 0.15 * torch.randn(dims, dims, generator=g, dtype=torch.float64)
        cov = a @ a.T + 0.05 * torch.eye(dims, dtype=torch.float64)
    x = mean + torch.randn(3, dims, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    logp = torch.distributions.MultivariateNormal(mean, cov).log_prob(x)
    return GaussianEps(mean, cov), x.reshape(3, 1, 4, 4), logp


def test_vpsde_is_read_from_the_ddpm_schedule() -> None:
    assert lk.SDE.beta_min == pytest.approx(BETA_MIN) and lk.SDE.beta_max == pytest.approx(BETA_MAX)
    assert lk.SDE.label(1.0) == T - 1
    for t in (1e-5, 0.3, 1.0):
        assert lk.SDE.log_mean_coeff(t) == pytest.approx(_log_mean_coeff(t))
        assert lk.SDE.std(t) ** 2 + math.exp(2 * lk.SDE.log_mean_coeff(t)) == pytest.approx(1.0)


def test_exact_divergence_recovers_the_gaussian_log_density() -> None:
    model, x, logp = _gaussian(16, 0, isotropic=False)
    got, nfev = lk.ode_log_likelihood(model, x, divergence="exact")
    assert got.dtype == torch.float64 and got.shape == (3,) and nfev > 0
    # Against the closed-form flow map: only the ODE solver's error remains.
    torch.testing.assert_close(got, model.ode_endpoint_logp(x), atol=1e-3, rtol=0)
    # Against the data density: the N(0, I) prior ignores m(1)·μ ≈ 0.0066·μ and m(1)²(Σ − I), and
    # the ODE starts at t = eps, not 0: biases of order 1e-3 nats here.
    torch.testing.assert_close(got, logp, atol=1e-2, rtol=0)


def test_hutchinson_is_unbiased_on_gaussian_data() -> None:
    model, x, _ = _gaussian(16, 0, isotropic=False)
    exact, _ = lk.ode_log_likelihood(model, x, divergence="exact")
    probes = 256
    # Each copy of an image gets its own probe: one joint solve gives `probes` independent estimates.
    est, _ = lk.ode_log_likelihood(model, x.repeat(probes, 1, 1, 1), seed=3)
    est = est.reshape(probes, 3)
    stderr = est.std(dim=0) / math.sqrt(probes)
    assert torch.all((est.mean(dim=0) - exact).abs() < 4 * stderr)
    assert torch.all((est.mean(dim=0) - exact).abs() < 0.05 * exact.abs())
    assert torch.all(est.std(dim=0) > 0)


def test_rademacher_probe_is_exact_for_isotropic_gaussian_data() -> None:
    # ∂ε*/∂x is a multiple of I when Σ = s²I, and vᵀ(cI)v = c·D for every ±1 probe.
    model, x, logp = _gaussian(16, 1, isotropic=True)
    exact, _ = lk.ode_log_likelihood(model, x, divergence="exact")
    hutch, _ = lk.ode_log_likelihood(model, x, seed=5)
    torch.testing.assert_close(hutch, exact, atol=1e-6, rtol=0)
    torch.testing.assert_close(exact, logp, atol=1e-2, rtol=0)


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       norm_num_groups=4, layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))


@pytest.fixture(scope="module")
def images() -> Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (2, 1, 8, 8), generator=g) / 127.5 - 1


FAST = {"rtol": 1e-3, "atol": 1e-3}


def test_exact_trace_matches_the_autograd_jacobian(unet: UNet2DModel, images: Tensor) -> None:
    x, label = images[:1] + 0.1, 321.5
    eps, div = lk._exact_divergence(unet.eval(), x, label)
    jac = torch.autograd.functional.jacobian(lambda y: unet(y, torch.tensor([label])).sample, x)
    torch.testing.assert_close(div, jac.reshape(64, 64).trace().double().reshape(1), rtol=1e-4, atol=1e-4)
    # float32 convolutions differ slightly between the repeated batch and a batch of one.
    torch.testing.assert_close(eps, unet(x, torch.tensor([label])).sample.detach().double(), rtol=1e-5, atol=1e-5)


def test_hutchinson_estimate_is_unbiased_at_a_point(unet: UNet2DModel, images: Tensor) -> None:
    probes, label = 2048, 500.0
    _, exact = lk._exact_divergence(unet.eval(), images, label)
    v = torch.randint(0, 2, (probes, *images.shape), generator=torch.Generator().manual_seed(0)) * 2.0 - 1
    _, est = lk._eps_and_divergence(unet, images.repeat(probes, 1, 1, 1), label, v.reshape(-1, 1, 8, 8))
    est = est.reshape(probes, 2)
    assert torch.all((est.mean(dim=0) - exact).abs() < 4 * est.std(dim=0) / math.sqrt(probes))


def test_hutchinson_agrees_with_exact_trace_on_a_unet(unet: UNet2DModel, images: Tensor) -> None:
    exact, _ = lk.ode_log_likelihood(unet, images, divergence="exact", **FAST)
    probes = 32
    # Each copy of an image gets its own probe: one joint solve gives `probes` independent estimates.
    est, _ = lk.ode_log_likelihood(unet, images.repeat(probes, 1, 1, 1), seed=7, **FAST)
    est = est.reshape(probes, 2)
    stderr = est.std(dim=0) / math.sqrt(probes)
    # Stated tolerance: four standard errors of the probe average (the estimator is unbiased) plus
    # 1% for the different adaptive step sequences of the two solves at rtol = atol = 1e-3.
    assert torch.all((est.mean(dim=0) - exact).abs() < 4 * stderr + 0.01 * exact.abs())


def test_bits_per_dim_is_deterministic_finite_and_positive(unet: UNet2DModel, images: Tensor) -> None:
    first = lk.nll_bits_per_dim(unet, images, seed=11, **FAST)
    again = lk.nll_bits_per_dim(unet, images, seed=11, **FAST)
    other = lk.nll_bits_per_dim(unet, images, seed=12, **FAST)
    assert first.dtype == torch.float64 and first.shape == (2,) and first.device.type == "cpu"
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.all(torch.isfinite(first)) and torch.all(first > 0)


def test_bits_per_dim_is_the_offset_log_density(unet: UNet2DModel, images: Tensor) -> None:
    bpd = lk.nll_bits_per_dim(unet, images, seed=2, dequantize=False, **FAST)
    logp, _ = lk.ode_log_likelihood(unet, images, seed=2, **FAST)
    torch.testing.assert_close(bpd, -logp / (64 * math.log(2)) + 7, rtol=0, atol=1e-12)
    dequantized = lk.nll_bits_per_dim(unet, images, seed=2, **FAST)
    assert not torch.allclose(dequantized, bpd)


def test_dequantization_stays_in_each_pixels_bin(images: Tensor) -> None:
    deq = lk.dequantize_8bit(images, torch.Generator().manual_seed(0))
    offset = (deq + 1) * 128 - (images.double() + 1) * 127.5
    assert deq.dtype == torch.float64
    assert torch.all(offset >= -1e-9) and torch.all(offset < 1 + 1e-9) and offset.std() > 0.1
    with pytest.raises(ValueError, match="8-bit"):
        lk.dequantize_8bit(images + 1e-3, torch.Generator())


def test_the_models_state_is_restored(unet: UNet2DModel, images: Tensor) -> None:
    unet.train()
    lk.ode_log_likelihood(unet, images[:1], **FAST)
    assert unet.training and all(p.requires_grad and p.grad is None for p in unet.parameters())
    unet.eval()
