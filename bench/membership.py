"""Membership inference on the forget set: does the model still *remember* the image it no longer generates?

Three white-box attacks from the diffusion membership-inference literature, each an error per image
(lower = more member-like):

* ``loss`` — the denoising loss ‖ε_θ(γ_t x + σ_t ε, t) − ε‖² averaged over fixed timesteps and noise
  draws (Matsumoto et al. 2023, "Membership Inference Attacks against Diffusion Models"; Carlini et al.
  2023, "Extracting Training Data from Diffusion Models").
* ``secmi`` — SecMI's t-error (Duan et al., ICML 2023): the image is carried to x̃_t by deterministic
  DDIM inversion in steps of k, moved one DDIM step forward to t + k and back; the error is
  ‖x̂_t − x̃_t‖².
* ``pia`` — PIA (Kong et al., ICLR 2024): ε₀ = ε_θ(x₀, 0) is the "proximal" initial noise,
  x_t = γ_t x₀ + σ_t ε₀, and the error is ‖ε_θ(x_t, t) − ε₀‖_p (two model calls per image).

One forget image has no AUC, so each attack reports the forget image's **percentile rank** among a
holdout population of images of the same kind that no model trained on (1 = it looks more like a
member than every holdout image, 0.5 = typical of images never trained on), and the gap to the
retrain oracle's rank on the same image, population and noise (0 = indistinguishable from never having
trained on it: the PrivLeak idea of MUSE, Shi et al. 2024). With several forget images the value is the
Mann-Whitney AUC of forget against holdout images, which is the rank's mean over the forget images.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from unlearnbench.diffusion import NoiseSchedule, predict_noise, sum_sq
from unlearnbench.io import atomic_write_bytes, discard_bad_cache

ATTACKS = ("loss", "secmi", "pia")


class MembershipInputError(ValueError):
    """The holdout population or the attack settings cannot give a membership score."""


@dataclass(frozen=True)
class AttackSettings:
    """The attacks' parameters (a tier may override each under its ``eval`` settings, ``mia_<field>``)."""

    #: Timesteps of the loss attack (t ≈ 50-400 is where membership shows in DDPMs, Matsumoto et al. 2023).
    loss_timesteps: tuple[int, ...] = (50, 100, 150, 200, 250, 300, 350, 400)
    #: Noise draws per timestep; the same draws for every image (common random numbers), fixed by the seed.
    loss_draws: int = 1
    #: SecMI's attack timestep and DDIM interval (the paper's DDPM setting: t_sec = 100, k = 10).
    secmi_t: int = 100
    secmi_k: int = 10
    #: PIA's timestep and error norm (the paper's DDPM setting: t = 200, ℓ4 norm).
    pia_t: int = 200
    pia_norm: float = 4.0
    #: Holdout images drawn (seeded, the same for every cell) from the task's population.
    holdout: int = 256
    batch_size: int = 256

    @classmethod
    def from_tier(cls, tier_eval: dict[str, Any]) -> "AttackSettings":
        """Defaults, overridden by the tier's ``mia_<field>`` evaluation settings."""
        values = {f: tier_eval[f"mia_{f}"] for f in cls.__dataclass_fields__ if f"mia_{f}" in tier_eval}
        if "loss_timesteps" in values:
            values["loss_timesteps"] = tuple(int(t) for t in values["loss_timesteps"])
        settings = cls(**values)
        settings.check()
        return settings

    def check(self, num_timesteps: int = 1000) -> None:
        """Raise ``MembershipInputError`` for settings no attack can use."""
        if not self.loss_timesteps or any(not 0 <= t < num_timesteps for t in self.loss_timesteps):
            raise MembershipInputError(f"mia_loss_timesteps {self.loss_timesteps} must be non-empty, within "
                                       f"[0, {num_timesteps})")
        if self.loss_draws < 1 or self.holdout < 2 or self.batch_size < 1:
            raise MembershipInputError(f"mia_loss_draws ({self.loss_draws}) and mia_batch_size ({self.batch_size}) "
                                       f"must be >= 1, mia_holdout ({self.holdout}) >= 2")
        if self.secmi_k < 1 or self.secmi_t % self.secmi_k or self.secmi_t + self.secmi_k >= num_timesteps:
            raise MembershipInputError(f"SecMI needs t_sec ({self.secmi_t}) a multiple of k ({self.secmi_k}) with "
                                       f"t_sec + k < {num_timesteps}")
        if not 0 < self.pia_t < num_timesteps or self.pia_norm <= 0:
            raise MembershipInputError(f"PIA needs 0 < t ({self.pia_t}) < {num_timesteps} and a positive norm")


def _batched(fn: Callable[[Tensor], Tensor], images: Tensor, batch_size: int, device: torch.device) -> Tensor:
    return torch.cat([fn(images[i : i + batch_size].to(device)).float().cpu()
                      for i in range(0, len(images), batch_size)])


def _timestep(t: int, x: Tensor) -> Tensor:
    return torch.full((len(x),), t, dtype=torch.long, device=x.device)


@torch.inference_mode()
def loss_errors(model: Any, schedule: NoiseSchedule, images: Tensor, timesteps: tuple[int, ...], noises: Tensor,
                batch_size: int = 256, device: torch.device | str = "cpu") -> Tensor:
    """Per image, the pixel-summed ‖ε_θ(x_t, t) − ε‖² averaged over ``timesteps`` × ``noises``
    (draws, C, H, W): every image sees the same noise draws."""
    device = torch.device(device)

    def one(x: Tensor) -> Tensor:
        total = torch.zeros(len(x), device=device, dtype=torch.float64)
        for t in timesteps:
            tt = _timestep(t, x)
            for eps in noises.to(device):
                eps = eps.expand_as(x)
                total += sum_sq(predict_noise(model, schedule.add_noise(x, eps, tt), tt) - eps).double()
        return total / (len(timesteps) * len(noises))

    return _batched(one, images, batch_size, device)


def ddim_move(model: Any, schedule: NoiseSchedule, x: Tensor, t_from: int, t_to: int) -> Tensor:
    """One deterministic DDIM step (η = 0) from timestep ``t_from`` to ``t_to`` (either direction)."""
    a_from = schedule.alphas_cumprod[t_from].item()
    a_to = schedule.alphas_cumprod[t_to].item()
    eps = predict_noise(model, x, _timestep(t_from, x))
    x0 = (x - (1 - a_from) ** 0.5 * eps) / a_from ** 0.5
    return a_to ** 0.5 * x0 + (1 - a_to) ** 0.5 * eps


@torch.inference_mode()
def secmi_errors(model: Any, schedule: NoiseSchedule, images: Tensor, t_sec: int = 100, k: int = 10,
                 batch_size: int = 256, device: torch.device | str = "cpu") -> Tensor:
    """SecMI's t-error per image: ‖ψ(φ(x̃_t, t), t + k) − x̃_t‖², with x̃_t from DDIM inversion
    0 → k → … → t."""
    device = torch.device(device)

    def one(x: Tensor) -> Tensor:
        for t in range(0, t_sec, k):
            x = ddim_move(model, schedule, x, t, t + k)
        back = ddim_move(model, schedule, ddim_move(model, schedule, x, t_sec, t_sec + k), t_sec + k, t_sec)
        return sum_sq(back - x)

    return _batched(one, images, batch_size, device)


@torch.inference_mode()
def pia_errors(model: Any, schedule: NoiseSchedule, images: Tensor, t: int = 200, p: float = 4.0,
               batch_size: int = 256, device: torch.device | str = "cpu") -> Tensor:
    """PIA's error per image: ‖ε_θ(γ_t x₀ + σ_t ε₀, t) − ε₀‖_p with ε₀ = ε_θ(x₀, 0)."""
    device = torch.device(device)

    def one(x: Tensor) -> Tensor:
        eps0 = predict_noise(model, x, _timestep(0, x))
        tt = _timestep(t, x)
        diff = predict_noise(model, schedule.add_noise(x, eps0, tt), tt) - eps0
        return diff.flatten(1).abs().pow(p).sum(dim=1).pow(1 / p)

    return _batched(one, images, batch_size, device)


def attack_noises(settings: AttackSettings, shape: tuple[int, ...], seed: int) -> Tensor:
    """The loss attack's noise draws (draws, C, H, W), fixed by the cell's seed."""
    return torch.randn((settings.loss_draws, *shape), generator=torch.Generator().manual_seed(seed * 7919 + 17))


def attack_errors(attack: str, model: Any, schedule: NoiseSchedule, images: Tensor, settings: AttackSettings,
                  seed: int, device: torch.device | str = "cpu") -> Tensor:
    """The per-image error of ``attack`` (one of ``ATTACKS``)."""
    if attack == "loss":
        return loss_errors(model, schedule, images, settings.loss_timesteps,
                           attack_noises(settings, tuple(images.shape[1:]), seed), settings.batch_size, device)
    if attack == "secmi":
        return secmi_errors(model, schedule, images, settings.secmi_t, settings.secmi_k, settings.batch_size, device)
    if attack == "pia":
        return pia_errors(model, schedule, images, settings.pia_t, settings.pia_norm, settings.batch_size, device)
    raise MembershipInputError(f"unknown attack {attack!r}; use one of {ATTACKS}")


def percentile_rank(forget: Tensor | np.ndarray, holdout: Tensor | np.ndarray) -> float:
    """Mean over forget images of the fraction of holdout images with a larger error (ties count half):
    the Mann-Whitney AUC of "member" vs holdout, which for one forget image is its percentile rank."""
    f = np.asarray(forget, dtype=np.float64).reshape(-1, 1)
    h = np.asarray(holdout, dtype=np.float64).reshape(1, -1)
    if f.size == 0 or h.size == 0:
        raise MembershipInputError("a percentile rank needs at least one forget and one holdout error")
    return float(((h > f) + 0.5 * (h == f)).mean())


def bootstrap_ranks(forget: np.ndarray, holdout: np.ndarray, replicates: int, seed: int) -> np.ndarray:
    """``percentile_rank`` over ``replicates`` resamplings of the holdout population (seeded)."""
    from unlearnbench.uncertainty import resample_indices

    h = np.asarray(holdout, dtype=np.float64)
    f = np.asarray(forget, dtype=np.float64).reshape(-1, 1)
    above = ((h[None, :] > f) + 0.5 * (h[None, :] == f)).mean(axis=0)  # per holdout image, over forget images
    return above[resample_indices(len(h), replicates, seed)].mean(axis=1)


def select_holdout(population: Tensor, size: int, like: Tensor) -> Tensor:
    """A seeded subset of ``size`` holdout images (the same for every cell), checked against the forget image."""
    if population is None or len(population) == 0:
        raise MembershipInputError("the holdout population is empty: membership inference needs images of the "
                                   "forget image's kind that no model trained on")
    if tuple(population.shape[1:]) != tuple(like.shape[1:]):
        raise MembershipInputError(f"holdout images are {tuple(population.shape[1:])} but forget images are "
                                   f"{tuple(like.shape[1:])}: they must be the same kind and size")
    if len(population) < 2:
        raise MembershipInputError(f"the holdout population has {len(population)} image; a rank needs at least 2")
    if len(population) <= size:
        return population[:]
    index = torch.randperm(len(population), generator=torch.Generator().manual_seed(0))[:size].sort().values
    return torch.stack([population[int(i)] for i in index])


def cache_key(*parts: Any) -> str:
    """A cache file name from the settings and content hashes that determine an oracle's errors."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


def load_errors(path: Path, attacks: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """Cached (forget, holdout) errors per attack, or None after discarding a file that fails its checks."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {a: (data[f"{a}_forget"].astype(np.float64), data[f"{a}_holdout"].astype(np.float64))
                   for a in attacks}
        if any(f.ndim != 1 or h.ndim != 1 or not np.isfinite(f).all() or not np.isfinite(h).all()
               for f, h in out.values()):
            raise ValueError("non-finite or misshapen arrays")
        return out
    except Exception as err:  # a cache is repaired, never trusted
        discard_bad_cache(path, "membership cache", err)
        return None


def save_errors(path: Path, errors: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    buf = io.BytesIO()
    arrays = {f"{a}_{part}": arr for a, (f, h) in errors.items() for part, arr in (("forget", f), ("holdout", h))}
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def describe(settings: AttackSettings) -> dict[str, Any]:
    """The settings as recorded with each value."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}
