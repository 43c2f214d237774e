"""Negative log-likelihood in bits/dim by the probability-flow ODE (Song et al. 2021).

What is computed, exactly (following Song et al. 2021):

* The discrete DDPM schedule (linear β from ``beta_start`` to ``beta_end`` over T steps,
  :data:`unlearnbench.diffusion.SCHEDULER_CONFIG`) is read as a VPSDE on t in [0, 1] with
  β(t) = β_min + t (β_max − β_min), β_min = beta_start·T = 0.1, β_max = beta_end·T = 20.
  Marginal: x_t = m(t) x_0 + σ(t) z with log m(t) = −¼ t² (β_max − β_min) − ½ t β_min and
  σ(t) = sqrt(1 − m(t)²).
* The ε-model is evaluated at the continuous timestep label t·(T − 1) (the DDPM convention of
  the score_sde code; diffusers' sinusoidal embedding accepts float labels, a learned
  ``nn.Embedding`` time embedding does not). Score s(x, t) = −ε_θ(x, t·(T − 1)) / σ(t).
* Probability-flow ODE: dx/dt = f(x, t) = −½ β(t) x − ½ β(t) s(x, t), integrated from
  t = eps (the data, x_eps = x) to t = 1 with ``scipy.integrate.solve_ivp`` (RK45,
  rtol = atol = 1e-5 by default), all images of a call in one ODE whose float64 state is the
  flattened images followed by one accumulated divergence per image.
* Change of variables: log p_eps(x) = log N(x_1; 0, I) + ∫_eps^1 div f(x_t, t) dt, in nats.
  div f = −½ β(t) (D − div ε_θ / σ(t)); div ε_θ is either the Skilling–Hutchinson estimate
  vᵀ (∂ε_θ/∂x) v with ONE fixed Rademacher probe v per image per solve, drawn from a seeded CPU
  ``torch.Generator`` (unbiased, so averages over seeds converge to the exact value), or the
  exact trace by autograd (D backward rows per evaluation: tiny images only).
* Bits/dim: images are 8-bit (x = k/127.5 − 1, k in 0..255). By default they are uniformly
  dequantized, x̃ = (k + u)/256 · 2 − 1 with u ~ U[0, 1) from a seeded generator, and
  bpd = −log p(x̃) / (D ln 2) + 7, the 7 = log2(128) accounting for the [−1, 1] scaling
  (bins of width 2/256). With dequantization this is a stochastic upper bound on the discrete
  8-bit NLL, as in score_sde; with ``dequantize=False`` it is the continuous density at x.

The model runs in its own dtype and device, in eval mode, with its parameters' ``requires_grad``
switched off for the call (both restored afterwards); the drift's linear part and the
divergence bookkeeping are done in float64.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Any, Iterator

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor, nn

from unlearnbench.diffusion import SCHEDULER_CONFIG

#: Offset from nats-per-dim of a density on [−1, 1] to bits/dim of 8-bit data: log2(256 / 2).
BPD_OFFSET = 7.0

#: How many basis probes one exact-trace forward pass carries per image (bounds its batch).
_EXACT_ROWS_PER_PASS = 64


@dataclass(frozen=True)
class VPSDE:
    """The continuous-time reading of a linear-β DDPM schedule (β(t) linear on t in [0, 1])."""

    beta_min: float
    beta_max: float
    num_timesteps: int

    @classmethod
    def from_scheduler_config(cls, config: dict[str, Any] = SCHEDULER_CONFIG) -> "VPSDE":
        """β_min = beta_start·T, β_max = beta_end·T (0.1 and 20 for the benchmark's schedule)."""
        if config.get("beta_schedule", "linear") != "linear":
            raise ValueError("the VPSDE reading needs a linear β schedule")
        t = int(config["num_train_timesteps"])
        return cls(float(config["beta_start"]) * t, float(config["beta_end"]) * t, t)

    def beta(self, t: float) -> float:
        """β(t) = β_min + t (β_max − β_min)."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: float) -> float:
        """log m(t) = −¼ t² (β_max − β_min) − ½ t β_min, the log scale of x_0 in x_t."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def std(self, t: float) -> float:
        """σ(t) = sqrt(1 − m(t)²), the noise scale of x_t."""
        return math.sqrt(-math.expm1(2.0 * self.log_mean_coeff(t)))

    def label(self, t: float) -> float:
        """The discrete model's timestep label for continuous t: t·(T − 1)."""
        return t * (self.num_timesteps - 1)


#: The VPSDE of the benchmark's DDPM schedule (β 0.1 → 20, labels t·999).
SDE = VPSDE.from_scheduler_config()


def nll_bits_per_dim(model: nn.Module, images: Tensor, *, seed: int = 0, rtol: float = 1e-5,
                     atol: float = 1e-5, eps: float = 1e-5, divergence: str = "hutchinson",
                     dequantize: bool = True, device: torch.device | str | None = None) -> Tensor:
    """NLL of 8-bit ``images`` (floats in [−1, 1], batch first) in bits/dim, one float64 value each.

    bpd = −log p(x̃) / (D ln 2) + 7 with x̃ the uniformly dequantized images (or the images
    themselves when ``dequantize`` is False). ``seed`` fixes the dequantization noise and then,
    from the same generator, the Hutchinson probes.
    """
    generator = torch.Generator().manual_seed(seed)
    x = images.detach().to("cpu", torch.float64)
    if dequantize:
        x = dequantize_8bit(x, generator)
    logp, _ = _solve(model, x, generator, rtol=rtol, atol=atol, eps=eps, divergence=divergence, device=device)
    dims = x[0].numel()
    return -logp / (dims * math.log(2.0)) + BPD_OFFSET


def ode_log_likelihood(model: nn.Module, x: Tensor, *, seed: int = 0, rtol: float = 1e-5, atol: float = 1e-5,
                       eps: float = 1e-5, divergence: str = "hutchinson",
                       device: torch.device | str | None = None) -> tuple[Tensor, int]:
    """log p(x) in nats per image (continuous density, no dequantization or offset) and the NFE.

    ``seed`` fixes the Hutchinson probes; the result is a float64 CPU tensor of shape (N,).
    """
    generator = torch.Generator().manual_seed(seed)
    return _solve(model, x.detach().to("cpu", torch.float64), generator, rtol=rtol, atol=atol, eps=eps,
                  divergence=divergence, device=device)


def dequantize_8bit(x: Tensor, generator: torch.Generator) -> Tensor:
    """(k + u)/256 · 2 − 1 for the 8-bit levels k of ``x`` = k/127.5 − 1, u ~ U[0, 1) (float64)."""
    levels = (x.to(torch.float64) + 1.0) * 127.5
    k = levels.round()
    if (levels - k).abs().max() > 1e-2 or k.min() < 0 or k.max() > 255:
        raise ValueError("images must be 8-bit levels scaled to [-1, 1] (k/127.5 - 1); "
                         "pass dequantize=False for continuous data")
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64)
    return (k + u) / 256.0 * 2.0 - 1.0


def _solve(model: nn.Module, x: Tensor, generator: torch.Generator, *, rtol: float, atol: float, eps: float,
           divergence: str, device: torch.device | str | None) -> tuple[Tensor, int]:
    """Integrate the PF ODE jointly for the float64 CPU batch ``x``; returns (log p, nfev)."""
    if divergence not in ("hutchinson", "exact"):
        raise ValueError(f"divergence must be 'hutchinson' or 'exact', not {divergence!r}")
    dtype, model_device = _dtype_and_device(model)
    device = torch.device(device) if device is not None else model_device
    n, shape, dims = x.shape[0], x.shape, x[0].numel()
    probe = None
    if divergence == "hutchinson":
        probe = (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(device, dtype)

    def rhs(t: float, state: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(state[:-n]).reshape(shape)
        sigma, beta = SDE.std(t), SDE.beta(t)
        eps_pred, div_eps = _eps_and_divergence(model, xt.to(device, dtype), SDE.label(t), probe)
        drift = -0.5 * beta * (xt - eps_pred / sigma)
        div_drift = -0.5 * beta * (dims - div_eps / sigma)
        return np.concatenate([drift.reshape(-1).numpy(), div_drift.numpy()])

    with _frozen(model):
        y0 = np.concatenate([x.reshape(-1).numpy(), np.zeros(n)])
        solution = solve_ivp(rhs, (eps, 1.0), y0, method="RK45", rtol=rtol, atol=atol)
    if not solution.success:
        raise RuntimeError(f"probability-flow ODE failed: {solution.message}")
    final = solution.y[:, -1]
    z = torch.from_numpy(final[:-n]).reshape(n, dims)
    prior_logp = -0.5 * dims * math.log(2 * math.pi) - 0.5 * z.pow(2).sum(dim=1)
    return prior_logp + torch.from_numpy(final[-n:]).clone(), int(solution.nfev)


def _eps_and_divergence(model: nn.Module, x: Tensor, label: float, probe: Tensor | None) -> tuple[Tensor, Tensor]:
    """ε_θ(x) and div_x ε_θ per image (Hutchinson with ``probe``, exact when it is None), float64 CPU."""
    if probe is None:
        return _exact_divergence(model, x, label)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        eps_pred = _predict(model, x, label)
        (row,) = torch.autograd.grad((eps_pred * probe).sum(), x)
    div = (row * probe).flatten(1).sum(dim=1)
    return eps_pred.detach().cpu().double(), div.cpu().double()


def _exact_divergence(model: nn.Module, x: Tensor, label: float) -> tuple[Tensor, Tensor]:
    """ε_θ(x) and tr(∂ε_θ/∂x) per image, by one backward per chunk of basis vectors.

    The batch is repeated once per basis vector in the chunk, which relies on the model
    treating batch elements independently (true for a UNet in eval mode).
    """
    n, dims = x.shape[0], x[0].numel()
    eps_pred = None
    total = torch.zeros(n, dtype=torch.float64)
    for start in range(0, dims, _EXACT_ROWS_PER_PASS):
        rows = torch.arange(start, min(start + _EXACT_ROWS_PER_PASS, dims), device=x.device)
        basis = torch.zeros(len(rows), n, dims, dtype=x.dtype, device=x.device)
        basis[torch.arange(len(rows), device=x.device), :, rows] = 1
        with torch.enable_grad():
            xr = x.detach().expand(len(rows), *x.shape).reshape(-1, *x.shape[1:]).requires_grad_(True)
            out = _predict(model, xr, label).reshape(len(rows), n, dims)
            (grad,) = torch.autograd.grad((out * basis).sum(), xr)
        total += (grad.reshape(len(rows), n, dims) * basis).sum(dim=(0, 2)).cpu().double()
        if eps_pred is None:
            eps_pred = out[0].detach().reshape(x.shape).cpu().double()
    return eps_pred, total


def _predict(model: nn.Module, x: Tensor, label: float) -> Tensor:
    """ε_θ(x, label) with the float label broadcast over the batch."""
    return model(x, torch.full((x.shape[0],), label, device=x.device)).sample


def _dtype_and_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The model's floating dtype and device (from its first parameter or buffer)."""
    for tensor in chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
    return torch.get_default_dtype(), torch.device("cpu")


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients for the duration, then the caller's state back."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)
