"""The task interface: data (retain and forget sets), tiers, and the protocol family whose
published hyper-parameters apply."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor

from unlearnbench.loop import LoopConfig
from unlearnbench.sampling import SamplerConfig


class DataMissingError(FileNotFoundError):
    """Data files are absent; the message names them and says how to get them."""


@dataclass(frozen=True)
class TrainRecipe:
    """How a base model (and the retrain oracle, with the same recipe) is trained from scratch."""

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 1e-6
    ema_inv_gamma: float = 1.0
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    checkpoint_every: int = 0  # 0: only the final model


@dataclass(frozen=True)
class ClassifierRecipe:
    """The MNIST classifier behind is_clf / fid_clf."""

    arch: str  # "small_cnn" or "resnet18"
    epochs: int
    batch_size: int = 128
    lr: float = 1e-3


@dataclass(frozen=True)
class Tier:
    """One size of a task's protocol: model, base training, unlearning loop, evaluation."""

    name: str
    unet: dict[str, Any]
    base_training: TrainRecipe
    unlearning: LoopConfig
    sampler: SamplerConfig
    classifier: ClassifierRecipe
    seeds: tuple[int, ...]
    metrics: tuple[str, ...]
    description: str
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. tuned lr per method
    off_by_default: dict[str, str] = field(default_factory=dict)  # metric -> why this tier skips it


@dataclass
class TaskData:
    """Clean samples in model space ([−1, 1] pixels) plus where they came from."""

    retain: Tensor
    forget: Tensor
    forget_image: Tensor  # the distinct forget image, (1, C, H, W)
    source: dict[str, Any]
    retain_labels: Tensor | None = None


class Task:
    """Base class of benchmark tasks (one file per task in ``datasets/``)."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    protocol: ClassVar[str] = ""  # the family in protocols.md §2 whose published settings apply
    default_tier: ClassVar[str] = "quick"

    def tiers(self) -> dict[str, Tier]:
        raise NotImplementedError

    def tier(self, name: str) -> Tier:
        tiers = self.tiers()
        if name not in tiers:
            raise ValueError(f"task {self.name!r} has no tier {name!r}; tiers: {', '.join(tiers)}")
        return tiers[name]

    def load(self, data_root: Path | None) -> TaskData:
        raise NotImplementedError
