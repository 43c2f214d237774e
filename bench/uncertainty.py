"""Honest uncertainty: bootstrap intervals within a cell, and the comparisons leaderboards draw from them.

Within a cell, a metric's sampling error comes from the finite set of generated samples; the
percentile bootstrap (Efron 1979; Efron & Tibshirani 1993) resamples them with replacement and
recomputes the metric on each resample, against the fixed reference set. Across cells, leaderboards
combine the seeds and each cell's replicates by a paired hierarchical bootstrap (``paired_bootstrap``).
``docs/uncertainty.md`` states every definition.
"""
from __future__ import annotations

import numbers
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.stats
import torch

#: Bootstrap replicates per cell when the tier's ``eval["bootstrap"]`` says nothing (0 disables).
DEFAULT_BOOTSTRAP = 200
#: Coverage of every interval the suite reports.
LEVEL = 0.95
#: Replicates of the leaderboards' hierarchical bootstrap (over seeds, then over each cell's replicates).
LEADERBOARD_REPLICATES = 2000
#: The leaderboards' bootstrap seed: a report is a pure function of its records.
LEADERBOARD_SEED = 0


def bootstrap_replicates(tier_eval: Mapping[str, Any]) -> int:
    """The tier's number of bootstrap replicates per cell (``eval["bootstrap"]``, default ``DEFAULT_BOOTSTRAP``)."""
    value = tier_eval.get("bootstrap", DEFAULT_BOOTSTRAP)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"eval setting bootstrap must be a non-negative integer (0 disables), got {value!r}")
    return int(value)


def resample_indices(n: int, replicates: int, seed: int) -> np.ndarray:
    """(replicates, n) indices drawn with replacement from ``range(n)``, by a generator seeded with ``seed``."""
    if n < 1:
        raise ValueError(f"cannot resample {n} samples")
    return np.random.default_rng(seed).integers(0, n, size=(replicates, n))


def resample_counts(n: int, replicates: int, seed: int) -> np.ndarray:
    """(replicates, n) multiplicities of each sample in the resamples of ``resample_indices`` (same draws)."""
    idx = resample_indices(n, replicates, seed)
    return np.stack([np.bincount(row, minlength=n) for row in idx]) if replicates else np.zeros((0, n), dtype=int)


def percentile_interval(replicates: Sequence[float] | np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of ``replicates``: their (1 - level)/2 and (1 + level)/2 quantiles (numpy's
    default linear interpolation)."""
    values = np.asarray(replicates, dtype=float)
    if values.size == 0:
        raise ValueError("no replicates: cannot form an interval")
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def describe(n: int, replicates: int, seed: int, what: str = "generated samples", statistic: str = "") -> str:
    """The ``interval_method`` sentence of a cell's bootstrap interval."""
    return (f"{round(100 * LEVEL)}% percentile bootstrap over the {n} {what}, {replicates} replicates, "
            f"seed {seed}{statistic}")


def proportion_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion (scipy): unlike a bootstrap percentile interval it does not
    collapse to a point when no (or every) sample is a copy."""
    ci = scipy.stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def proportion_bootstrap(indicator: np.ndarray | torch.Tensor, replicates: int, seed: int) -> dict[str, Any]:
    """A per-sample fraction (a forget rate) with its interval and bootstrap replicates, as ``MetricValue``
    fields: the interval is Wilson's (the samples are independent Bernoulli draws), the replicates the
    fraction over resamples of the indicator (what leaderboards combine across seeds)."""
    flags = np.asarray(indicator.cpu() if torch.is_tensor(indicator) else indicator, dtype=float)
    if replicates == 0 or flags.size == 0:
        return {}
    reps = flags[resample_indices(flags.size, replicates, seed)].mean(axis=1)
    return {"interval": proportion_interval(int(flags.sum()), flags.size), "replicates": reps.tolist(),
            "interval_method": f"{round(100 * LEVEL)}% Wilson score interval of {int(flags.sum())} copies in "
                               f"{flags.size} independent samples; replicates: "
                               + describe(flags.size, replicates, seed, "samples' copy indicators")}


# ------------------------------------------------------------------------------------------------ FID


def _sym_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric PSD square root (eigh; negative round-off eigenvalues clipped to 0)."""
    vals, vecs = torch.linalg.eigh(matrix)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def fid_replicates(features: np.ndarray | torch.Tensor, ref_mu: np.ndarray, ref_sigma: np.ndarray,
                   counts: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Fréchet distance of each weighted resample of ``features`` to fixed reference statistics.

    ``counts``: (B, n) multiplicities (``resample_counts``); a row of ones gives the plain FID of the
    features. tr sqrt(S_b S_ref) is computed as the sum of square roots of the eigenvalues of the symmetric
    matrix A S_b A, A = S_ref^(1/2) taken once, instead of a non-symmetric sqrtm per replicate.
    """
    x = torch.as_tensor(np.asarray(features.cpu() if torch.is_tensor(features) else features),
                        dtype=torch.float64, device=device)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"FID needs at least 2 samples, got {n}")
    mu2 = torch.as_tensor(ref_mu, dtype=torch.float64, device=device)
    s2 = torch.as_tensor(ref_sigma, dtype=torch.float64, device=device)
    root = _sym_sqrt(s2)
    tr2 = torch.trace(s2)
    out = []
    for w in torch.as_tensor(np.asarray(counts), dtype=torch.float64, device=device):
        mu1 = w @ x / n
        xc = x - mu1
        s1 = (xc * w[:, None]).T @ xc / (n - 1)
        m = root @ s1 @ root
        tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
        diff = mu1 - mu2
        out.append(float(diff @ diff + torch.trace(s1) + tr2 - 2 * tr_covmean))
    return np.asarray(out)


def fid_from_features(features: np.ndarray | torch.Tensor, ref_mu: np.ndarray, ref_sigma: np.ndarray) -> float:
    """The FID of ``features`` against reference statistics, by the replicates' formula (no resampling)."""
    n = features.shape[0]
    return float(fid_replicates(features, ref_mu, ref_sigma, np.ones((1, n)))[0])


# ------------------------------------------------------------------------------------------------ KID


def kid_subset_size(n_samples: int, n_reference: int) -> int:
    """KID's subset size: torch-fidelity's default 1000, capped by both set sizes."""
    if n_samples < 2 or n_reference < 2:
        raise ValueError(f"KID needs at least 2 samples and 2 reference images, got {n_samples} and {n_reference}")
    return min(1000, n_samples, n_reference)


def _poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch-fidelity's KID kernel: (a·b / d + 1)^3 (Bińkowski et al. 2018)."""
    return (a @ b.T / a.shape[1] + 1) ** 3


def kid_replicates(features: np.ndarray | torch.Tensor, ref_features: np.ndarray | torch.Tensor, counts: np.ndarray,
                   device: torch.device | str = "cpu", chunk: int = 2048) -> np.ndarray:
    """The unbiased MMD² (cubic polynomial kernel) of each weighted resample of ``features`` against all of
    ``ref_features``: the full-set statistic whose expectation torch-fidelity's subset average estimates.

    For a resample with multiplicities w, the sample-sample term sums the kernel over ordered pairs of
    distinct draws, (wᵀKw − Σ wᵢ Kᵢᵢ) / (n(n−1)); the reference terms are fixed. Kernels are computed
    in row chunks, never held whole.
    """
    x = torch.as_tensor(np.asarray(features.cpu() if torch.is_tensor(features) else features),
                        dtype=torch.float64, device=device)
    y = torch.as_tensor(np.asarray(ref_features.cpu() if torch.is_tensor(ref_features) else ref_features),
                        dtype=torch.float64, device=device)
    n, m = x.shape[0], y.shape[0]
    kid_subset_size(n, m)
    w = torch.as_tensor(np.asarray(counts), dtype=torch.float64, device=device)  # (B, n)
    quad = torch.zeros(w.shape[0], dtype=torch.float64, device=device)
    diag = torch.empty(n, dtype=torch.float64, device=device)
    cross = torch.empty(n, dtype=torch.float64, device=device)
    for s in range(0, n, chunk):
        k = _poly_kernel(x[s:s + chunk], x)
        quad += ((k @ w.T) * w[:, s:s + chunk].T).sum(dim=0)
        diag[s:s + chunk] = k.diagonal(offset=s)
        cross[s:s + chunk] = _poly_kernel(x[s:s + chunk], y).sum(dim=1)
    yy = torch.zeros((), dtype=torch.float64, device=device)
    for s in range(0, m, chunk):
        k = _poly_kernel(y[s:s + chunk], y)
        yy += k.sum() - k.diagonal(offset=s).sum()
    xx = (quad - w @ diag) / (n * (n - 1))
    xy = w @ cross / (n * m)
    return (xx + yy / (m * (m - 1)) - 2 * xy).cpu().numpy()


# ------------------------------------------------------------------------------------------------ IS


def isc_replicates(logits: torch.Tensor, indices: np.ndarray, splits: int = 10) -> np.ndarray:
    """The Inception Score (torch-fidelity's formula: shuffled, ``splits`` splits) of each resample of ``logits``."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = logits.cpu()
    return np.asarray([isc_features_to_metric(logits[torch.as_tensor(row)], splits)["inception_score_mean"]
                       for row in indices])


# ------------------------------------------------------------------------------------------------ across cells


def _draws(cells: Sequence[np.ndarray], picks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For (R, K) picked cell positions, one replicate of each picked cell: (R, K) values."""
    counts = np.array([len(c) for c in cells])
    padded = np.zeros((len(cells), counts.max()))
    for i, c in enumerate(cells):
        padded[i, :len(c)] = c
    which = np.floor(rng.random(picks.shape) * counts[picks]).astype(int)
    return padded[picks, which]


#: One cell in the hierarchical bootstrap: its value and its draws (its bootstrap replicates, or its value alone).
Cell = tuple[float, np.ndarray]


def cell_draws(value: float | None, replicates: Sequence[float] | None) -> Cell | None:
    """What one cell contributes to the hierarchical bootstrap (None without a value)."""
    if value is None:
        return None
    return float(value), np.asarray(replicates if replicates else [value], dtype=float)


def paired_bootstrap(a: Mapping[Any, Cell], b: Mapping[Any, Cell] | None = None,
                     replicates: int = LEADERBOARD_REPLICATES, seed: int = LEADERBOARD_SEED,
                     level: float = LEVEL) -> dict[str, Any] | None:
    """The mean over runs of ``a`` (minus ``b``, paired by run key) with its hierarchical bootstrap interval.

    ``a``/``b``: run key (seed, forget set) -> that cell's value and draws (``cell_draws``). The estimate is
    the mean over shared runs of the values' differences. Each replicate draws the shared run keys with
    replacement, then for each drawn key one replicate of each side's cell, and averages the differences.
    Returns ``{"estimate", "interval", "runs", "testable"}`` (None without a shared run); ``testable`` is
    False when nothing varies (one run, no replicates): no interval then.
    """
    keys = sorted(set(a) & set(b), key=repr) if b is not None else sorted(a, key=repr)
    if not keys:
        return None
    ca = [np.asarray(a[k][1], dtype=float) for k in keys]
    cb = [np.asarray(b[k][1], dtype=float) for k in keys] if b is not None else None
    point = np.mean([a[k][0] for k in keys]) - (np.mean([b[k][0] for k in keys]) if b is not None else 0.0)
    varies = len(keys) > 1 or len(ca[0]) > 1 or (cb is not None and len(cb[0]) > 1)
    if not varies:
        return {"estimate": float(point), "interval": None, "runs": len(keys), "testable": False}
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(keys), size=(replicates, len(keys)))
    diff = _draws(ca, picks, rng) - (_draws(cb, picks, rng) if cb is not None else 0.0)
    return {"estimate": float(point), "interval": percentile_interval(diff.mean(axis=1), level), "runs": len(keys),
            "testable": True}


def indistinguishable(comparison: Mapping[str, Any] | None) -> bool | None:
    """Whether a ``paired_bootstrap`` difference is indistinguishable from 0 (its interval holds 0);
    None when it is not testable."""
    if comparison is None or not comparison["testable"]:
        return None
    lo, hi = comparison["interval"]
    return bool(lo <= 0 <= hi)


def distance_to_oracle(gaps: Mapping[str, float], spreads: Mapping[str, float]) -> float | None:
    """The documented aggregate: mean over metrics of |gap to the oracle| / spread of the metric across rows
    (metrics without a gap or with zero spread are left out); None when none remains."""
    terms = [abs(g) / spreads[m] for m, g in gaps.items()
             if g is not None and np.isfinite(g) and spreads.get(m) and np.isfinite(spreads[m])]
    return float(np.mean(terms)) if terms else None
