"""The task interface: data (retain and forget sets), tiers, and the protocol family whose
published hyper-parameters apply."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor

from unlearnbench.loop import LoopConfig
from unlearnbench.protocols import Protocol
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
    """A tier's domain classifier (MNIST T-Shirt: behind is_clf / fid_clf), trained by ``Task.train_classifier``."""

    arch: str  # "small_cnn" or "resnet18"
    epochs: int
    batch_size: int = 128
    lr: float = 1e-3


@dataclass(frozen=True)
class Tier:
    """One size of a task's protocol: model, base training, unlearning loop, evaluation."""

    name: str
    unet: dict[str, Any]
    base_training: TrainRecipe | None  # None: no oracle can be trained (Stable Diffusion)
    unlearning: LoopConfig
    sampler: SamplerConfig
    classifier: ClassifierRecipe | None
    seeds: tuple[int, ...]
    metrics: tuple[str, ...]
    description: str
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # the tier's own per-method choices
    #: True when per-method settings chosen by ``run_bench.py tune`` ship as ``tuning.json`` in the tier's assets.
    tuned: bool = False
    off_by_default: dict[str, str] = field(default_factory=dict)  # metric -> why this tier skips it
    #: Forget sets run one per cell (CIFAR-10: train indices 10000-10009; SD: prompt ids); None: one fixed set.
    forget_sets: tuple[str, ...] | None = None
    #: The published base model (hub id or folder) this tier unlearns; None: trained by ``prepare``.
    base_model: str | None = None
    base_subfolder: str | None = None
    base_weights: str = "ema"  # "ema" or "raw": which weights of the base model are unlearned
    eval: dict[str, Any] = field(default_factory=dict)  # per-tier evaluation settings (injections, FID reference size, ...)


@dataclass
class TaskData:
    """Clean samples in model space ([−1, 1] pixels) plus where they came from."""

    retain: Tensor
    forget: Tensor
    forget_image: Tensor  # the N distinct forget images, (N, C, H, W)
    source: dict[str, Any]
    retain_labels: Tensor | None = None
    forget_set: str | None = None  # which of the tier's forget sets this is
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific references (prompt, centroids, ...)
    #: Images of the forget image's kind that no model trained on (membership inference's population; a tensor
    #: or a lazy image set), or None with ``holdout_source`` saying why.
    holdout: Any = None
    holdout_source: str = ""
    #: What each distinct forget image is (a file name, a training index), in ``forget_image``'s order.
    forget_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.forget_image.dim() != 4:
            raise ValueError(f"forget_image must be (N, C, H, W), got shape {tuple(self.forget_image.shape)}")
        if self.forget_names and len(self.forget_names) != len(self.forget_image):
            raise ValueError(f"{len(self.forget_names)} forget names for {len(self.forget_image)} forget images")


@dataclass(frozen=True)
class NoOptions:
    """The options of a task that has none (``--set task.NAME=VALUE`` names a field of ``Task.Options``)."""


class Task:
    """Base class of benchmark tasks (one package per task family in ``datasets/``, registered with
    ``register_task``)."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    protocol: ClassVar[Protocol]  # the published protocol whose settings apply (``unlearnbench.protocols``)
    default_tier: ClassVar[str] = "quick"
    #: Method roles (``unlearnbench.method.ROLES``) that cannot run on this task, with the reason (e.g. no
    #: oracle for Stable Diffusion).
    unsupported_roles: ClassVar[dict[str, str]] = {}
    #: True when ``load_base`` always supplies the base model (nothing for ``prepare`` to train).
    loads_own_base: ClassVar[bool] = False
    #: What the task's data offer to metrics that need it (``Metric.task_needs``): ``"holdout"`` = a population
    #: of images of the forget image's kind that no model trained on (``TaskData.holdout``).
    offers: ClassVar[tuple[str, ...]] = ()
    #: Why the task lacks what it does not offer (shown when such a metric is asked for).
    offers_note: ClassVar[str] = ""
    #: How ``--forget`` names this task's forget sets (shown in help and errors); "" = one fixed forget set.
    #: Image tasks read ``+`` as "these images together, in one cell".
    forget_set_syntax: ClassVar[str] = ""
    #: The task's own options, a frozen dataclass set with ``--set task.NAME=VALUE`` (written into every cell's config).
    Options: ClassVar[type] = NoOptions
    _options: Any = None

    @property
    def options(self) -> Any:
        """This task's options (the ``Options`` defaults until ``configure`` sets them)."""
        return self._options if self._options is not None else self.Options()

    @property
    def cache_name(self) -> str:
        """The folder name of this task's prepared artefacts (a task whose data are the user's names them by content)."""
        return self.name

    def configure(self, options: dict[str, Any], data_root: Path | None) -> "Task":
        """A copy of this task with ``options`` applied (the registered task stays as it is).

        Tasks whose data depend on ``data_root`` (a user's image folder) override this to bind and check it."""
        from unlearnbench.validate import UsageError, did_you_mean

        known = {f.name for f in dataclasses.fields(self.Options)}
        for key in options:
            if key not in known:
                raise UsageError(f"--set task.{key}: task {self.name!r} has no option {key!r}; "
                                 f"{did_you_mean(key, known)}options: {', '.join(sorted(known)) or 'none'}")
        bound = copy.copy(self)
        bound._options = dataclasses.replace(self.options, **options)
        return bound

    def option_values(self) -> dict[str, Any]:
        """The task's options as written into every cell's config (empty for a task without options)."""
        return dataclasses.asdict(self.options)

    def unsupported(self, method: str) -> str | None:
        """Why the registered method ``method`` cannot run on this task (by its role), or None."""
        from unlearnbench.registry import METHODS

        return self.unsupported_roles.get(METHODS.get(method).role)

    def tiers(self) -> dict[str, Tier]:
        raise NotImplementedError

    def tier(self, name: str) -> Tier:
        """The tier called ``name``; an unknown name is a ``UsageError`` suggesting the closest tier."""
        from unlearnbench.validate import UsageError, did_you_mean

        tiers = self.tiers()
        if name not in tiers:
            raise UsageError(f"task {self.name!r} has no tier {name!r}; {did_you_mean(name, tiers)}"
                             f"tiers: {', '.join(tiers)}")
        return tiers[name]

    def forget_sets(self, tier: Tier, data_root: Path | None) -> tuple[str | None, ...]:
        """The forget sets of ``tier``, one cell each (default: the tier's list, or one fixed set)."""
        return tier.forget_sets or (None,)

    def load(self, data_root: Path | None, forget_set: str | None = None) -> TaskData:
        """Retain and forget samples in model space for ``forget_set``."""
        raise NotImplementedError

    def load_base(self, tier: Tier, path: str | None, subfolder: str | None, device: Any) -> tuple[Any, dict[str, Any]] | None:
        """A base model the task loads itself (e.g. a text-conditioned UNet wrapper), or None for the default
        path (a diffusers ``UNet2DModel`` from ``--base-model`` / the tier's hub id / prepared artefacts)."""
        return None

    def noise_schedule(self, tier: Tier) -> Any:
        """γ_t/σ_t of the base model's training schedule (default: the pixel DDPM schedule of Ho et al. 2020)."""
        from unlearnbench.diffusion import NoiseSchedule

        return NoiseSchedule.from_scheduler()

    def bind(self, model: Any, data: TaskData) -> Any:
        """The cell's copy of the base model, attached to what the forget set needs (e.g. its prompt)."""
        return model

    def check_model(self, model: Any, data: TaskData) -> None:
        """Raise if ``model`` cannot serve this task's data (e.g. a different image size)."""

    def train_classifier(self, recipe: ClassifierRecipe, data: TaskData, device: Any, folder: Path,
                         data_root: Path | None, progress: bool) -> dict[str, Any]:
        """Train the tier's domain classifier into ``folder`` (for tasks whose tiers declare one); its info."""
        raise NotImplementedError(f"task {self.name!r} has no classifier")

    def sample_copy_mask(self, samples: Tensor, data: TaskData) -> Tensor:
        """True where a generated sample is a copy of the forget image; quality metrics score the rest.

        Default: nothing is excluded (tasks whose forget rate is measured by injections)."""
        import torch

        return torch.zeros(len(samples), dtype=torch.bool)

    def forget_rate(self, ctx: Any) -> Any:
        """The task's forget-rate ``MetricValue`` (its definition goes in ``implementation``)."""
        raise NotImplementedError(f"task {self.name!r} defines no forget rate")

    def generate(self, model: Any, sampler: SamplerConfig, seed: int, device: Any, data: TaskData,
                 progress: bool = True) -> dict[str, Tensor]:
        """Named sets of generated images in [−1, 1]; ``"samples"`` is the one every sample metric scores."""
        from unlearnbench.sampling import generate

        return {"samples": generate(model, sampler, seed=seed, device=device, progress=progress)}


def register_task(task: Task) -> Task:
    """Register ``task`` under its own ``name`` (the name is written once, on the task)."""
    from unlearnbench.registry import TASKS

    TASKS.add(task.name, task)
    return task
