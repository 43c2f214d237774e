"""Metrics: each registered with its direction (``higher_is_better``) and implementation.

Sample metrics read an ``EvalContext`` (generated samples plus the task's references); cost
metrics read the unlearning log. A metric that cannot be computed (missing weights) returns
``available=False`` with the reason and the flag that supplies what is missing, never a
substitute number.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from unlearnbench.io import atomic_write_bytes, discard_bad_cache, sha256_file
from unlearnbench.registry import METRICS
from unlearnbench.uncertainty import (
    bootstrap_replicates, describe, fid_replicates, isc_replicates, kid_replicates, kid_subset_size,
    percentile_interval, resample_counts, resample_indices,
)


@dataclass
class MetricValue:
    value: float | None
    n_samples: int | None = None
    reference: str | None = None
    available: bool = True
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Overrides the registered implementation text when the definition is task-specific (forget_rate).
    implementation: str | None = None
    #: A 95% interval of the value within the cell (e.g. a bootstrap over the generated samples), with how it was
    #: computed (``interval_method``) and its replicates (leaderboards combine them across seeds and methods).
    interval: tuple[float, float] | None = None
    interval_method: str | None = None
    replicates: list[float] | None = None


#: Kinds of user-supplied weights (``Metric.weights``), each given by its flag (``--inception-weights`` ...).
INCEPTION, SSCD, CLIP = "inception", "sscd", "clip"


@dataclass(frozen=True)
class Metric:
    """A registered metric: how it is computed and which direction is better."""

    name: str
    higher_is_better: bool
    implementation: str
    compute: Callable[..., MetricValue]
    kind: str = "sample"  # "sample" (needs generated images) or "cost" (reads the unlearning log)
    version: int = 1
    #: The regression gate's slack: a change worse than this (absolute, or relative to the baseline
    #: mean when ``relative``) fails; None: informational only (e.g. machine-dependent wall-clock).
    tolerance: float | None = None
    relative: bool = False
    #: Column position in leaderboards (lower first): forget metrics, then quality, then costs.
    order: int = 1000
    #: Prepared artefacts the metric reads (``"classifier"``, ``"retrain"``): prepared before any cell that scores it.
    needs: tuple[str, ...] = ()
    #: What the task must offer (``Task.offers``, e.g. ``"holdout"``): asking for the metric on a task that does
    #: not is a usage error before anything runs.
    task_needs: tuple[str, ...] = ()
    #: Checks the tier's evaluation settings the metric reads (raises ``ValueError`` with the reason): bad
    #: settings are refused before any cell runs, not found in every record.
    check: Callable[[dict[str, Any]], Any] | None = None
    #: UNet passes the metric adds to a cell beyond sampling: ``(tier_eval) -> (forward, forward+backward)``
    #: per sample (the dry run's cost estimate); None: none.
    #: A function that also takes ``sampler`` and ``loop`` keywords gets the tier's (attacks that fine-tune and sample).
    passes: Callable[..., tuple[float, float]] | None = None
    #: A fraction, shown in % (and its differences in percentage points) by tables and leaderboards.
    percent: bool = False
    #: Decimals tables show (percent metrics: of the percentage).
    digits: int = 2
    #: Leaderboards show its difference to the reference rows (before unlearning, the oracle).
    deltas: bool = False
    #: "oracle" when the right value is the retrain oracle's, not an extreme (membership ranks, NLL): the
    #: distance to the oracle ranks it; None: ``higher_is_better`` does.
    target: str | None = None
    #: A sample-quality metric (FID, KID, IS): collapse floors are declared on such metrics, and a collapsed model
    #: keeps its place on them. Every other sample metric (forget rates, copies, likelihood, membership, relearning)
    #: is a forgetting metric, on which a collapsed model takes no best. Costs are known by ``kind``.
    quality: bool = False
    #: The collapse floor of a quality metric, a ratio to the base model's mean (the ``reference_before`` row): a
    #: leaderboard row whose mean is below ``collapse`` x the base's (``higher_is_better``; a ratio < 1) or above it
    #: (lower is better; a ratio > 1) is marked collapsed and takes no best on the forgetting metrics. None: no floor.
    collapse: float | None = None
    #: Machine-dependent (wall-clock): shown for information with the machine it was measured on, never ranked.
    informational: bool = False
    #: Cost metrics of one unit (e.g. "UNet passes") are ranked together, by the sum of their means.
    cost_unit: str | None = None
    #: The user-supplied weights it reads (``INCEPTION``, ``SSCD``, ``CLIP``): without them it is reported
    #: unavailable with the flag that gives them, and the dry run lists them among the missing inputs.
    weights: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.collapse is not None:
            ok = self.collapse > 0 and (self.collapse < 1 if self.higher_is_better else self.collapse > 1)
            if not self.quality or not ok:
                raise ValueError(f"metric {self.name!r}: a collapse floor is a ratio to the base model's mean on a "
                                 f"quality metric (< 1 when higher is better, > 1 when lower is), got "
                                 f"{self.collapse!r} (quality={self.quality})")


def register_metric(name: str, **fields: Any) -> Callable[[Callable[..., MetricValue]], Callable[..., MetricValue]]:
    """Register the decorated ``compute`` function as metric ``name`` with ``fields`` (those of ``Metric``:
    ``higher_is_better`` and ``implementation`` are required)."""

    def decorator(fn: Callable[..., MetricValue]) -> Callable[..., MetricValue]:
        METRICS.add(name, Metric(name=name, compute=fn, **fields))
        return fn

    return decorator


@dataclass
class EvalContext:
    """Generated samples and everything the sample metrics compare them with."""

    sample_sets: dict[str, Tensor]  # what Task.generate returned; "samples" ([−1, 1], (N, C, H, W)) is scored
    forget_image: Tensor  # the N distinct forget images, (N, C, H, W)
    retain: Tensor  # the reference set for FID
    classifier_dir: Path | None
    cache_dir: Path
    device: torch.device
    task: Any = None  # the Task (task-defined metrics such as forget_rate read it)
    data: Any = None  # the cell's TaskData (forget set, references, ``extra``)
    model: Any = None  # the unlearned model (injection and likelihood metrics run it)
    weights: dict[str, str | None] = field(default_factory=dict)  # user-supplied weights: inception, sscd, clip
    tier_eval: dict[str, Any] = field(default_factory=dict)  # the tier's evaluation settings
    seed: int = 0
    memo: dict[str, Any] = field(default_factory=dict)  # work shared by several metrics of one cell
    _forget_mask: Tensor | None = None

    progress: bool = False
    sampler: Any = None  # the cell's SamplerConfig (attacks that re-generate after relearning use it)
    schedule: Any = None  # the base model's NoiseSchedule (None: the pixel DDPM schedule)
    #: Loads the retrain oracle: ``() -> (model, identity)``; None when the task has no oracle.
    oracle: Callable[[], tuple[Any, dict[str, Any]]] | None = None
    loop: Any = None  # the tier's unlearning LoopConfig (the relearning attack fine-tunes with it)

    @property
    def samples(self) -> Tensor:
        """The generated samples every sample metric scores."""
        return self.sample_sets["samples"]

    @property
    def forget_names(self) -> list[str]:
        """The forget images' names (``TaskData.forget_names``), or their positions when the task names none."""
        names = list(getattr(self.data, "forget_names", ()) or ())
        return names if len(names) == len(self.forget_image) else [str(i) for i in range(len(self.forget_image))]

    @property
    def forget_mask(self) -> Tensor:
        """True where a sample is a copy of the forget image (the task's criterion; quality skips them)."""
        if self._forget_mask is None:
            if self.task is None:  # no task: nothing is excluded
                self._forget_mask = torch.zeros(len(self.samples), dtype=torch.bool)
            else:
                self._forget_mask = self.task.sample_copy_mask(self.samples, self.data)
        return self._forget_mask

    @property
    def kept(self) -> Tensor:
        """Samples that are not copies of the forget image (what quality metrics score)."""
        return self.samples[~self.forget_mask]


def to_unit(x: Tensor) -> Tensor:
    return (x.float() + 1) / 2


def to_uint8(x: Tensor) -> Tensor:
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def content_hash(*tensors: Tensor, salt: str = "") -> str:
    """A cache name derived from content (never from a user-chosen label)."""
    h = hashlib.sha256(salt.encode())
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:24]


class _Images(torch.utils.data.Dataset):
    """Images as uint8 tensors, as torch-fidelity wants them (lazily converted: works on lazy sets too)."""

    def __init__(self, images: Any, channels: int | None = None) -> None:
        self.images = images
        self.channels = channels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        img = to_uint8(self.images[i])
        return img.expand(self.channels, -1, -1).contiguous() if self.channels else img


class _Concat:
    """Two (possibly lazy) image sets read as one, indexable by an int or an index tensor."""

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __getitem__(self, i: Any) -> Tensor:
        if torch.is_tensor(i) and i.ndim:
            return torch.stack([self[int(j)] for j in i])
        i = int(i)
        return self.first[i] if i < len(self.first) else self.second[i - len(self.first)]


#: The FID reference sets a tier may declare as ``eval["fid_reference"]`` (recorded in its config).
FID_REFERENCES = {
    "retain": "training images without the forget set",
    "all": "all training images, the forget set included (the reference of the official ReTrack evaluator)",
}


class _Subset:
    """A seeded random subset of a (possibly lazy) image set: the FID reference when a tier caps its size."""

    def __init__(self, images: Any, size: int | None, seed: int = 0, label: str = FID_REFERENCES["retain"]) -> None:
        self.images = images
        self.label = label
        n = len(images)
        if size is None or size >= n:
            self.index = torch.arange(n)
        else:
            self.index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Tensor:
        return self.images[int(self.index[i])]

    def describe(self) -> str:
        total = len(self.images)
        return (f"{total} images: {self.label}" if len(self) == total
                else f"{len(self)} of {total} images (seeded random subset): {self.label}")


def fid_reference(ctx: "EvalContext") -> _Subset:
    """The FID reference set the tier declares (``eval["fid_reference"]``, default ``retain``), capped by its
    ``fid_reference_size``. ``all`` adds the forget samples to the retain images, as the training set had them."""
    kind = ctx.tier_eval.get("fid_reference", "retain")
    if kind not in FID_REFERENCES:
        raise ValueError(f"unknown fid_reference {kind!r}; use one of {sorted(FID_REFERENCES)}")
    images = ctx.retain if kind == "retain" else _Concat(ctx.retain, ctx.data.forget)
    return _Subset(images, ctx.tier_eval.get("fid_reference_size"), label=FID_REFERENCES[kind])


FIDELITY_OPTIONS: dict[str, Any] = dict(isc_splits=10, kid_subsets=100, batch_size=256, save_cpu_ram=True,
                                        verbose=False, cache=False)
#: The suite's own cache of reference-set FID statistics, a folder of ``ctx.cache_dir``: non-executable ``.npz``.
STATS_DIR = "fid-stats"
STATS_FORMAT = 1


def fidelity(ctx: EvalContext, extractor: str, weights: str | None, isc: bool = False, fid: bool = False,
             kid: bool = False, channels: int | None = None, salt: str = "", **options: Any) -> dict[str, Any]:
    """IS, FID and/or KID of the cell's kept samples by torch-fidelity's own functions, the numbers of
    ``torch_fidelity.calculate_metrics``, each with its bootstrap over the kept samples
    (``"<isc|fid|kid>_bootstrap"``: ``MetricValue`` fields; absent when the tier's ``bootstrap`` is 0).

    torch-fidelity's cache is never used: it unpickles ``.pt`` files (``torch.load(weights_only=False)``),
    so a planted file in the cache folder would run code. The samples' features are extracted once per
    cell (memoised: IS, FID and KID read the same pass); the reference set's statistics and features come
    from ``_reference_statistics`` / ``_reference_features``, the suite's npz cache. KID reads the features
    of FID's layer.
    """
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_featuresdict_to_metric
    from torch_fidelity.metric_kid import kid_featuresdict_to_metric

    kwargs = _fidelity_kwargs(ctx, extractor, weights, options)
    layers = _feature_layers(kwargs)
    feat, features = _sample_features(ctx, kwargs, layers, channels, salt)
    replicates = bootstrap_replicates(ctx.tier_eval)
    n = len(features[layers["fid"]])
    out: dict[str, Any] = {}
    if isc:
        out.update(isc_featuresdict_to_metric(features, layers["isc"], **kwargs))
        if replicates:
            reps = isc_replicates(features[layers["isc"]], resample_indices(n, replicates, ctx.seed),
                                  kwargs["isc_splits"])
            out["isc_bootstrap"] = _bootstrap_fields(reps, n, replicates, ctx.seed)
    if fid:
        stats = fid_featuresdict_to_statistics(features, layers["fid"])
        ref = _reference_statistics(ctx, feat, kwargs, layers["fid"], channels, salt, like=stats)
        out.update(fid_statistics_to_metric(stats, ref, verbose=False))
        if replicates:
            reps = fid_replicates(features[layers["fid"]], ref["mu"], ref["sigma"],
                                  resample_counts(n, replicates, ctx.seed), ctx.device)
            out["fid_bootstrap"] = _bootstrap_fields(reps, n, replicates, ctx.seed)
    if kid:
        layer = layers["fid"]
        ref_features = _reference_features(ctx, feat, kwargs, layer, channels, salt, like=features[layer])
        size = kid_subset_size(n, len(ref_features))
        out.update(kid_featuresdict_to_metric({layer: features[layer]}, {layer: ref_features}, layer,
                                              **{**kwargs, "kid_subset_size": size}))
        out["kid_subset_size"] = size
        if replicates:
            reps = kid_replicates(features[layer], ref_features, resample_counts(n, replicates, ctx.seed), ctx.device)
            out["kid_bootstrap"] = _bootstrap_fields(
                reps, n, replicates, ctx.seed,
                "; each replicate is the unbiased MMD² of the resample against the whole reference set, the "
                "statistic whose expectation the subset average estimates")
    return out


def _bootstrap_fields(replicates: np.ndarray, n: int, count: int, seed: int, statistic: str = "") -> dict[str, Any]:
    """``MetricValue``'s interval fields from a cell's bootstrap replicates over its non-forget samples."""
    return {"interval": percentile_interval(replicates), "replicates": [float(v) for v in replicates],
            "interval_method": describe(n, count, seed, "non-forget generated samples", statistic)}


def _fidelity_kwargs(ctx: EvalContext, extractor: str, weights: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """torch-fidelity's keyword arguments for one extractor (its cache off)."""
    return dict(feature_extractor=extractor, feature_extractor_weights_path=weights, isc=True, fid=True,
                cuda=ctx.device.type == "cuda", **FIDELITY_OPTIONS, **options)


def _feature_layers(kwargs: dict[str, Any]) -> dict[str, str]:
    """The extractor's feature layer for IS and for FID, as torch-fidelity resolves them."""
    from torch_fidelity.utils import resolve_feature_layer_for_metric

    return {metric: resolve_feature_layer_for_metric(metric, **kwargs) for metric in ("isc", "fid")}


def _sample_features(ctx: EvalContext, kwargs: dict[str, Any], layers: dict[str, str], channels: int | None,
                     salt: str) -> tuple[Any, dict[str, Tensor]]:
    """The extractor and the features of the kept samples (both layers), once per cell and extractor."""
    from torch_fidelity.utils import create_feature_extractor, extract_featuresdict_from_input_id

    key = ("fidelity", kwargs["feature_extractor"], salt, channels,
           tuple(sorted((k, str(v)) for k, v in kwargs.items() if k.startswith("feature_layer"))))
    if key not in ctx.memo:
        feat = create_feature_extractor(kwargs["feature_extractor"], sorted(set(layers.values())), **kwargs)
        features = extract_featuresdict_from_input_id(1, feat, input1=_Images(ctx.kept, channels), **kwargs)
        ctx.memo[key] = (feat, features)
    return ctx.memo[key]


def _reference_statistics(ctx: EvalContext, feat: Any, kwargs: dict[str, Any], layer: str, channels: int | None,
                          salt: str, like: dict[str, Any]) -> dict[str, Any]:
    """FID statistics (mu, sigma) of the reference set: read from the npz cache (``_cache_entry``), or computed
    and cached."""
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics

    header, path = _cache_entry(ctx, kwargs, layer, channels, salt, "statistics")
    stats = load_statistics(path, header, like) if path.exists() else None
    if stats is None:
        stats = fid_featuresdict_to_statistics(_reference_featuresdict(ctx, feat, kwargs, channels, salt), layer)
        save_statistics(path, stats, header)
    return stats


def _reference_features(ctx: EvalContext, feat: Any, kwargs: dict[str, Any], layer: str, channels: int | None,
                        salt: str, like: Tensor) -> Tensor:
    """The reference set's features of ``layer`` (KID reads them whole): from the npz cache, or extracted and
    cached, keyed and checked like ``_reference_statistics``."""
    header, path = _cache_entry(ctx, kwargs, layer, channels, salt, "features")
    features = load_features(path, header, like) if path.exists() else None
    if features is None:
        features = _reference_featuresdict(ctx, feat, kwargs, channels, salt)[layer]
        save_features(path, features, header)
    return features


def _cache_entry(ctx: EvalContext, kwargs: dict[str, Any], layer: str, channels: int | None, salt: str,
                 kind: str) -> tuple[dict[str, Any], Path]:
    """The header and file of a cached reference quantity (``statistics`` or ``features``).

    Keyed by a hash of the header (extractor, layer, weights hash, reference content hash, n), which
    the file also stores and must match on load.
    """
    ref = fid_reference(ctx)
    header = {"format": STATS_FORMAT, "extractor": kwargs["feature_extractor"], "layer": layer, "weights": salt,
              "channels": channels, "reference": _memo_reference_hash(ctx, ref), "n": len(ref)}
    if kind == "features":  # statistics files keep their header (and so their names) from before features
        header["kind"] = kind
    name = hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()[:24]
    suffix = "" if kind == "statistics" else f"-{kind}"
    return header, ctx.cache_dir / STATS_DIR / f"{header['extractor']}-{layer}{suffix}-{name}.npz"


def _reference_featuresdict(ctx: EvalContext, feat: Any, kwargs: dict[str, Any], channels: int | None,
                            salt: str) -> dict[str, Tensor]:
    """The reference set's features (every layer of ``feat``), extracted once per cell and extractor."""
    from torch_fidelity.utils import extract_featuresdict_from_input_id

    key = ("reference-features", kwargs["feature_extractor"], salt, channels, tuple(feat.features_list))
    if key not in ctx.memo:
        ctx.memo[key] = extract_featuresdict_from_input_id(2, feat, input2=_Images(fid_reference(ctx), channels),
                                                           **kwargs)
    return ctx.memo[key]


def load_statistics(path: Path, header: dict[str, Any], like: dict[str, Any]) -> dict[str, Any] | None:
    """Cached FID statistics of ``path``, or None after warning about and deleting a file that fails a check.

    Loaded without unpickling (``allow_pickle=False``); checked: exactly the arrays ``mu``, ``sigma`` and
    ``header``, the stored header equal to ``header``, float ``mu`` (d,) and ``sigma`` (d, d) of the
    dtypes and size of ``like`` (the samples' statistics they are compared with).
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            if sorted(data.files) != ["header", "mu", "sigma"]:
                raise ValueError(f"holds {sorted(data.files)}, expected ['header', 'mu', 'sigma']")
            stored, mu, sigma = data["header"], data["mu"], data["sigma"]
        if stored.dtype.kind != "U" or stored.ndim != 0 or json.loads(stored.item()) != header:
            raise ValueError("its header does not match this reference set, extractor and weights")
        d = like["mu"].shape[0]
        if mu.shape != (d,) or sigma.shape != (d, d):
            raise ValueError(f"shapes {mu.shape}/{sigma.shape}, expected {(d,)}/{(d, d)}")
        if mu.dtype != like["mu"].dtype or sigma.dtype != like["sigma"].dtype:
            raise ValueError(f"dtypes {mu.dtype}/{sigma.dtype}, expected {like['mu'].dtype}/{like['sigma'].dtype}")
    except Exception as err:  # any unreadable or foreign file: a cache is repaired, never trusted
        discard_bad_cache(path, "metric cache", err)
        return None
    return {"mu": mu, "sigma": sigma}


def save_statistics(path: Path, stats: dict[str, Any], header: dict[str, Any]) -> None:
    """Write FID statistics as npz (plain arrays, the header as a JSON string), atomically under a unique
    temporary name: concurrent cells never share one."""
    buf = io.BytesIO()
    np.savez(buf, mu=stats["mu"], sigma=stats["sigma"], header=np.array(json.dumps(header, sort_keys=True)))
    atomic_write_bytes(path, buf.getvalue())


def load_features(path: Path, header: dict[str, Any], like: Tensor) -> Tensor | None:
    """Cached reference features of ``path``, or None after warning about and deleting a file that fails a check.

    Loaded without unpickling (``allow_pickle=False``); checked: exactly the arrays ``features`` and
    ``header``, the stored header equal to ``header``, float features (header n, d) of the dtype and width of
    ``like`` (the samples' features they are compared with), all finite.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            if sorted(data.files) != ["features", "header"]:
                raise ValueError(f"holds {sorted(data.files)}, expected ['features', 'header']")
            stored, features = data["header"], data["features"]
        if stored.dtype.kind != "U" or stored.ndim != 0 or json.loads(stored.item()) != header:
            raise ValueError("its header does not match this reference set, extractor and weights")
        expected = (header["n"], like.shape[1])
        if features.shape != expected:
            raise ValueError(f"shape {features.shape}, expected {expected}")
        if features.dtype != like.cpu().numpy().dtype:
            raise ValueError(f"dtype {features.dtype}, expected {like.cpu().numpy().dtype}")
        if not np.isfinite(features).all():
            raise ValueError("holds non-finite values")
    except Exception as err:  # any unreadable or foreign file: a cache is repaired, never trusted
        discard_bad_cache(path, "metric cache", err)
        return None
    return torch.from_numpy(features)


def save_features(path: Path, features: Tensor, header: dict[str, Any]) -> None:
    """Write reference features as npz (a plain array, the header as a JSON string), atomically."""
    buf = io.BytesIO()
    np.savez(buf, features=features.cpu().numpy(), header=np.array(json.dumps(header, sort_keys=True)))
    atomic_write_bytes(path, buf.getvalue())


def _memo_reference_hash(ctx: EvalContext, ref: _Subset) -> str:
    """``_reference_hash`` of the FID reference set, once per cell (it streams the whole set)."""
    if "reference_hash" not in ctx.memo:
        ctx.memo["reference_hash"] = _reference_hash(ref, "")
    return ctx.memo["reference_hash"]


def _reference_hash(ref: _Subset, salt: str) -> str:
    """Content hash of a reference set, streamed in chunks (lazy sets are never held whole)."""
    h = hashlib.sha256(salt.encode())
    h.update(str(len(ref)).encode())
    for start in range(0, len(ref), 1024):
        idx = ref.index[start : start + 1024]
        h.update(content_hash(ref.images[idx]).encode())
    return h.hexdigest()[:24]


@register_metric("forget_rate", check=bootstrap_replicates,
                 higher_is_better=False, tolerance=0.01, order=10, percent=True, digits=1, deltas=True,
                 implementation="task-defined (each value records its definition in its implementation)")
def forget_rate(ctx: EvalContext) -> MetricValue:
    """The task's forget rate: each task defines what counts as remembering its forget set."""
    if ctx.task is None:
        raise ValueError("forget_rate is task-defined: the evaluation context names no task")
    return ctx.task.forget_rate(ctx)


INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


def find_inception_weights(explicit: str | None) -> tuple[str | None, str]:
    """Path of torch-fidelity's Inception-v3 weights, or None with the reason.

    Order: ``--inception-weights``, torch's hub cache, torch-fidelity's download when online.
    A given file must load with ``torch.load(weights_only=True)`` (no pickled code).
    """
    if explicit:
        path = Path(explicit)
        if not path.exists():
            raise FileNotFoundError(f"--inception-weights {path} does not exist")
        torch.load(path, map_location="cpu", weights_only=True)
        return str(path), f"--inception-weights {path}"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.exists():
        torch.load(cached, map_location="cpu", weights_only=True)
        return str(cached), f"torch hub cache {cached}"
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _online():
        return None, (f"Inception-v3 weights not found (no --inception-weights, nothing at {cached}) and offline; "
                      f"pass --inception-weights PATH/{INCEPTION_FILE}")
    return None, "download"


def _online() -> bool:
    try:
        socket.create_connection(("github.com", 443), timeout=3).close()
        return True
    except OSError:
        return False


@register_metric("fid", check=bootstrap_replicates, weights=(INCEPTION,),
                 higher_is_better=False, tolerance=0.10, relative=True, order=110, deltas=True, quality=True,
                 collapse=10.0,
                 implementation="Inception-v3 FID (torch-fidelity inception-v3-compat, 2048-d pool features; grayscale "
                                "repeated to 3 channels), non-forget samples vs the training (retain) images")
def fid(ctx: EvalContext) -> MetricValue:
    weights, how = inception_weights(ctx)
    if weights is None and how != "download":
        return MetricValue(None, available=False, reason=how)
    layer = str(ctx.tier_eval.get("fid_feature_layer", "2048"))
    out = _inception(ctx, weights)
    implementation = None
    if layer != "2048":  # a test tier's shortcut, stated in the record: FID of a smaller Inception layer
        implementation = f"Inception-v3 FID on the {layer}-d feature layer (not the standard 2048-d pool), " \
                         "non-forget samples vs the training images"
    return MetricValue(out["frechet_inception_distance"], n_samples=len(ctx.kept),
                       reference=fid_reference(ctx).describe(), extra={"weights": how, "feature_layer": layer},
                       implementation=implementation, **out.get("fid_bootstrap", {}))


def _inception_ready(ctx: EvalContext, minimum: int, why: str) -> MetricValue | tuple[str | None, str]:
    """The Inception weights (path, how found) when they exist and ``minimum`` samples are kept; else the
    unavailable value saying which is missing."""
    weights, how = inception_weights(ctx)
    if weights is None and how != "download":
        return MetricValue(None, available=False, reason=how)
    if len(ctx.kept) < minimum:
        return MetricValue(None, n_samples=len(ctx.kept), available=False,
                           reason=f"only {len(ctx.kept)} non-forget samples ({why})")
    return weights, how


def inception_weights(ctx: EvalContext) -> tuple[str | None, str]:
    """``find_inception_weights`` once per cell: the file is verified (and the network probed) once, not per metric."""
    if "inception_weights" not in ctx.memo:
        ctx.memo["inception_weights"] = find_inception_weights(ctx.weights.get("inception"))
    return ctx.memo["inception_weights"]


def _weights_salt(ctx: EvalContext, weights: str | None) -> str:
    """Hash of the Inception weights file (a cache-key salt), read once per cell, streamed."""
    if not weights:
        return "download"
    key = f"weights_salt:{weights}"
    if key not in ctx.memo:
        ctx.memo[key] = sha256_file(weights)[:16]
    return ctx.memo[key]


def _inception(ctx: EvalContext, weights: str | None, kid: bool = False) -> dict[str, Any]:
    """FID and IS (or, with ``kid``, KID) of the cell's samples from ONE Inception pass over them (memoised:
    the metrics share it)."""
    key = "inception-kid" if kid else "inception"
    if key not in ctx.memo:
        channels = 3 if ctx.samples.shape[1] == 1 else None
        isc = len(ctx.kept) >= 10 and not kid
        ctx.memo[key] = fidelity(
            ctx, "inception-v3-compat", weights, isc=isc, fid=not kid, kid=kid, channels=channels,
            salt=_weights_salt(ctx, weights), feature_layer_fid=str(ctx.tier_eval.get("fid_feature_layer", "2048")))
    return ctx.memo[key]


@register_metric("kid", check=bootstrap_replicates, weights=(INCEPTION,),
                 higher_is_better=False, tolerance=0.005, order=111, deltas=True, quality=True,
                 implementation="Kernel Inception Distance (torch-fidelity kid: unbiased MMD² with the cubic "
                                "polynomial kernel, mean over 100 subsets of min(1000, samples, references)) of "
                                "FID's Inception-v3 features, non-forget samples vs the FID reference images")
def kid(ctx: EvalContext) -> MetricValue:
    ready = _inception_ready(ctx, 2, "KID needs at least 2")
    if isinstance(ready, MetricValue):
        return ready
    weights, how = ready
    layer = str(ctx.tier_eval.get("fid_feature_layer", "2048"))
    out = _inception(ctx, weights, kid=True)
    implementation = None
    if layer != "2048":  # a test tier's shortcut, stated in the record
        implementation = f"KID (torch-fidelity, cubic polynomial kernel) on Inception-v3's {layer}-d feature layer " \
                         "(not the standard 2048-d pool), non-forget samples vs the FID reference images"
    return MetricValue(out["kernel_inception_distance_mean"], n_samples=len(ctx.kept),
                       reference=fid_reference(ctx).describe(), implementation=implementation,
                       extra={"weights": how, "feature_layer": layer, "subset_size": out["kid_subset_size"],
                              "subsets": FIDELITY_OPTIONS["kid_subsets"],
                              "std_over_subsets": out["kernel_inception_distance_std"]},
                       **out.get("kid_bootstrap", {}))


@register_metric("inception_score", check=bootstrap_replicates, weights=(INCEPTION,),
                 higher_is_better=True, tolerance=0.05, relative=True, order=130, quality=True, collapse=0.5,
                 implementation="Inception Score (torch-fidelity isc, inception-v3-compat logits, 10 splits) of the "
                                "generated samples that are not copies of the forget image")
def inception_score(ctx: EvalContext) -> MetricValue:
    ready = _inception_ready(ctx, 10, "10 splits need at least 10")
    if isinstance(ready, MetricValue):
        return ready
    weights, how = ready
    out = _inception(ctx, weights)
    return MetricValue(out["inception_score_mean"], n_samples=len(ctx.kept), reference="none (unary)",
                       extra={"weights": how, "std_over_splits": out["inception_score_std"]},
                       **out.get("isc_bootstrap", {}))


#: Model evaluations of one NLL (RK45 at rtol = atol = 1e-5 on a 28x28 UNet, measured): the dry run's estimate.
NLL_EVALUATIONS = 1000


def _nll_passes(tier_eval: dict[str, Any]) -> tuple[float, float]:
    """One NLL integrates ~``NLL_EVALUATIONS`` forward+backward passes (Hutchinson divergence), per probe."""
    return 0.0, NLL_EVALUATIONS * tier_eval.get("nll_probes", 1)


@register_metric("nll", higher_is_better=True, tolerance=0.05, relative=True, order=90, passes=_nll_passes,
                 target="oracle",
                 implementation="negative log-likelihood of the forget image in bits/dim under the unlearned model: "
                                "probability-flow ODE (VPSDE beta 0.1 -> 20), scipy RK45 rtol = atol = 1e-5, "
                                "Hutchinson divergence, uniform dequantization (bench/likelihood.py)")
def nll(ctx: EvalContext) -> MetricValue:
    from unlearnbench.likelihood import nll_bits_per_dim

    probes = int(ctx.tier_eval.get("nll_probes", 1))
    tol = float(ctx.tier_eval.get("nll_tolerance", 1e-5))
    values = torch.cat([nll_bits_per_dim(ctx.model, ctx.forget_image, seed=ctx.seed * 1000 + i, device=ctx.device,
                                         rtol=tol, atol=tol) for i in range(probes)])
    implementation = None
    if tol != 1e-5:  # a test tier's shortcut, stated in the record
        implementation = (f"NLL of the forget image in bits/dim by the probability-flow ODE, RK45 at rtol = atol = "
                          f"{tol:g} (the protocol's 1e-5 loosened for speed), Hutchinson divergence, dequantized")
    return MetricValue(float(values.mean()), n_samples=probes, reference="the forget image",
                       extra={"per_probe": [round(float(v), 5) for v in values], "tolerance": tol},
                       implementation=implementation)


def _cost_metric(key: str, name: str, implementation: str, order: int, tolerance: float | None = None,
                 **fields: Any) -> None:
    def compute(log: Any) -> MetricValue:
        return MetricValue(float(getattr(log, key)))

    METRICS.add(name, Metric(name, False, implementation, compute, "cost", tolerance=tolerance, order=order, digits=1,
                             **fields))


_cost_metric("seconds", "unlearn_seconds", "wall-clock of the unlearning method only (evaluation excluded, CUDA "
             "synchronised); retrain: the oracle's training time", order=170, informational=True)
_cost_metric("unet_forward", "unet_forward", "UNet forward passes in units of one batch-per-branch (samples forwarded "
             "/ batch size), counted by a forward hook", order=180, tolerance=0.0, cost_unit="UNet passes")
_cost_metric("unet_backward", "unet_backward", "UNet backward passes in units of one batch-per-branch, counted by a "
             "gradient hook on the UNet output", order=190, tolerance=0.0, cost_unit="UNet passes")


def _deletion_step(log: Any) -> MetricValue:
    for ev in log.evaluations:
        if ev.get("forget_rate") == 0.0:
            return MetricValue(float(ev["step"]))
    if not log.evaluations:
        return MetricValue(None, available=False, reason="no evaluation during unlearning (use --eval-every N)")
    return MetricValue(None, available=True, reason="forget rate never reached 0 within the budget")


METRICS.add("deletion_step", Metric("deletion_step", False, "first unlearning step at which the forget rate "
            "(evaluated every --eval-every steps) is 0", _deletion_step, "cost", order=160, digits=1))
