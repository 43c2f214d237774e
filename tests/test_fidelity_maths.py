"""torch-fidelity's FID and Inception-Score maths against closed-form cases.

The suite reports FID and IS through torch-fidelity; these tests call its own statistics functions
(no network, no weights) so a change in its maths, or in how we feed it, shows up here.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric

FID = "frechet_inception_distance"
IS_MEAN, IS_STD = "inception_score_mean", "inception_score_std"


def _fid(stat_1: dict[str, np.ndarray], stat_2: dict[str, np.ndarray]) -> float:
    return fid_statistics_to_metric(stat_1, stat_2, False)[FID]


def _diag_gaussian_fid(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Closed form for diagonal covariances: ||μ1−μ2||² + Σ (s1 + s2 − 2√(s1 s2))."""
    return float(((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum())


MU1, S1 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 4.0, 0.25, 2.0])
MU2, S2 = np.array([1.0, -1.0, 0.0, 0.5]), np.array([9.0, 1.0, 1.0, 0.5])


def test_fid_diagonal_gaussians_from_statistics_is_closed_form() -> None:
    got = _fid({"mu": MU1, "sigma": np.diag(S1)}, {"mu": MU2, "sigma": np.diag(S2)})
    want = _diag_gaussian_fid(MU1, S1, MU2, S2)
    assert want == pytest.approx(9.0 + 18.75 - 2 * 6.5)  # ||Δμ||² + Σ(s1 + s2) − 2 Σ √(s1 s2), by hand
    assert got == pytest.approx(want, rel=1e-10)


def test_fid_of_identical_statistics_is_zero() -> None:
    stat = {"mu": MU1, "sigma": np.diag(S1)}
    assert _fid(stat, stat) == pytest.approx(0.0, abs=1e-10)


def test_fid_from_sampled_features_matches_closed_form() -> None:
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    f1 = torch.from_numpy(MU1) + torch.randn(n, 4, generator=gen, dtype=torch.float64) * torch.from_numpy(np.sqrt(S1))
    f2 = torch.from_numpy(MU2) + torch.randn(n, 4, generator=gen, dtype=torch.float64) * torch.from_numpy(np.sqrt(S2))
    stat_1, stat_2 = fid_features_to_statistics(f1), fid_features_to_statistics(f2)
    assert stat_1["mu"].shape == (4,) and stat_1["sigma"].shape == (4, 4)
    assert _fid(stat_1, stat_2) == pytest.approx(_diag_gaussian_fid(MU1, S1, MU2, S2), rel=0.01)


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    m = rng.normal(size=(d, d))
    return m @ m.T + 0.1 * np.eye(d)


def test_fid_with_full_non_commuting_covariances_matches_scipy_sqrtm() -> None:
    rng = np.random.default_rng(0)
    d = 6
    a, b = _random_spd(rng, d), _random_spd(rng, d)
    assert not np.allclose(a @ b, b @ a)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    covmean = scipy.linalg.sqrtm(a @ b)
    want = float(((mu1 - mu2) ** 2).sum() + np.trace(a) + np.trace(b) - 2 * np.trace(covmean).real)
    got = _fid({"mu": mu1, "sigma": a}, {"mu": mu2, "sigma": b})
    assert got == pytest.approx(want, rel=1e-8)
    assert _fid({"mu": mu2, "sigma": b}, {"mu": mu1, "sigma": a}) == pytest.approx(got, rel=1e-8)


def test_is_of_uniform_predictions_is_one() -> None:
    out = isc_features_to_metric(torch.zeros(100, 10), splits=10)
    assert out[IS_MEAN] == pytest.approx(1.0, abs=1e-12)
    assert out[IS_STD] == pytest.approx(0.0, abs=1e-12)


def _confident_logits(k: int, per_class: int) -> torch.Tensor:
    """One-hot predictions (large logits), labels cycling 0..k−1 so every contiguous block of k is balanced."""
    labels = torch.arange(k * per_class) % k
    return 100.0 * torch.nn.functional.one_hot(labels, k).float()


@pytest.mark.parametrize("shuffle", [False, True])
def test_is_of_confident_predictions_spread_over_k_classes_is_k_one_split(shuffle: bool) -> None:
    out = isc_features_to_metric(_confident_logits(7, 30), splits=1, shuffle=shuffle)
    assert out[IS_MEAN] == pytest.approx(7.0, rel=1e-9)


def test_is_of_confident_predictions_is_k_in_each_of_ten_balanced_splits() -> None:
    out = isc_features_to_metric(_confident_logits(7, 30), splits=10, shuffle=False)
    assert out[IS_MEAN] == pytest.approx(7.0, rel=1e-9)
    assert out[IS_STD] == pytest.approx(0.0, abs=1e-9)


def test_is_with_shuffled_splits_is_at_most_k() -> None:
    """Shuffled splits are unbalanced, so each split's score is below K (the maximum), yet close to it."""
    out = isc_features_to_metric(_confident_logits(7, 300), splits=10, shuffle=True)
    assert 6.5 < out[IS_MEAN] <= 7.0


def test_is_hand_computed_two_samples() -> None:
    """p(y|x1) = (0.9, 0.1), p(y|x2) = (0.2, 0.8): p(y) = (0.55, 0.45), IS = exp(mean KL(p(y|x) || p(y)))."""
    kl1 = 0.9 * math.log(0.9 / 0.55) + 0.1 * math.log(0.1 / 0.45)
    kl2 = 0.2 * math.log(0.2 / 0.55) + 0.8 * math.log(0.8 / 0.45)
    want = math.exp((kl1 + kl2) / 2)
    assert want == pytest.approx(1.3170522760, rel=1e-9)
    logits = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float64).log()
    out = isc_features_to_metric(logits, splits=1, shuffle=False)
    assert out[IS_MEAN] == pytest.approx(want, rel=1e-12)


def test_is_takes_logits_not_probabilities() -> None:
    """torch-fidelity applies the softmax itself: probabilities passed as features give a different (wrong) score."""
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float64)
    assert isc_features_to_metric(probs, splits=1, shuffle=False)[IS_MEAN] < 1.1
