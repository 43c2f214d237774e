"""Metrics against independent direct computations on small hand-made inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from unlearnbench.datasets.mnist_tshirt.classifier import load_classifier
from unlearnbench.metrics import EvalContext, find_inception_weights, to_uint8
from unlearnbench.registry import METRICS, TASKS, load_all
from unlearnbench.task import TaskData

load_all()




def _ctx(samples: torch.Tensor, forget: torch.Tensor, retain: torch.Tensor, tmp_path: Path, clf: Path | None) -> EvalContext:
    """A cell of MNIST T-Shirt (its T-shirt criterion decides which samples are forget copies)."""
    data = TaskData(retain=retain, forget=forget.repeat(3, 1, 1, 1), forget_image=forget, source={"kind": "test"})
    return EvalContext(sample_sets={"samples": samples}, forget_image=forget, retain=retain, classifier_dir=clf,
                       cache_dir=tmp_path / "cache", device=torch.device("cpu"),
                       task=TASKS.get("mnist_tshirt_mini"), data=data)


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, 28, 28), generator=g) * 2 - 1


def test_forget_rate_uses_l2_below_10_on_unit_pixels(tmp_path: Path) -> None:
    forget = torch.zeros(1, 1, 28, 28)  # mid-grey in [−1, 1] = 0.5 in [0, 1]
    near = forget + 2 * 9.9 / 28  # each pixel off by 9.9/28 in [0,1]: L2 = 9.9
    far = forget + 2 * 10.1 / 28  # L2 = 10.1
    samples = torch.cat([near.repeat(3, 1, 1, 1), far.repeat(7, 1, 1, 1)])
    value = METRICS.get("forget_rate").compute(_ctx(samples, forget, samples, tmp_path, None))
    assert value.value == pytest.approx(0.3) and value.n_samples == 10
    # its interval: Wilson's for 3 copies in 10 independent samples, by hand
    z, p, n = 1.959963984540054, 0.3, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert value.interval == pytest.approx((centre - half, centre + half), rel=1e-9)
    assert len(value.replicates) == 200 and "Wilson" in value.interval_method  # the default bootstrap


def _direct_features(clf_dir: Path, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    model = load_classifier(clf_dir)
    with torch.no_grad():
        feats, logits = model.forward_features(to_uint8(images).float() / 127.5 - 1)
    return feats.double().numpy(), logits.double().numpy()


def test_is_clf_matches_the_inception_score_formula(tmp_path: Path, classifier_dir: Path) -> None:
    samples, forget = _images(200, 1), torch.ones(1, 1, 28, 28)
    value = METRICS.get("is_clf").compute(_ctx(samples, forget, samples, tmp_path, classifier_dir))
    _, logits = _direct_features(classifier_dir, samples)
    logits = logits[np.random.RandomState(2020).permutation(len(logits))]  # torch-fidelity's split shuffle
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for chunk in np.array_split(p, 10):
        q = chunk.mean(0, keepdims=True)
        scores.append(np.exp((chunk * (np.log(chunk) - np.log(q))).sum(1).mean()))
    assert value.value == pytest.approx(float(np.mean(scores)), rel=1e-6)
    assert value.n_samples == 200


def test_fid_clf_matches_the_frechet_formula_and_excludes_forget_copies(tmp_path: Path, classifier_dir: Path) -> None:
    forget = torch.ones(1, 1, 28, 28)
    samples = torch.cat([_images(150, 2), forget.repeat(30, 1, 1, 1)])
    retain = _images(300, 3)
    value = METRICS.get("fid_clf").compute(_ctx(samples, forget, retain, tmp_path, classifier_dir))
    f1, _ = _direct_features(classifier_dir, samples[:150])
    f2, _ = _direct_features(classifier_dir, retain)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    assert value.value == pytest.approx(expected, rel=1e-4)
    assert value.n_samples == 150


def test_fid_clf_of_a_set_with_itself_is_zero(tmp_path: Path, classifier_dir: Path) -> None:
    images = _images(120, 4)
    value = METRICS.get("fid_clf").compute(_ctx(images, torch.ones(1, 1, 28, 28), images, tmp_path, classifier_dir))
    assert abs(value.value) < 1e-3


def test_inception_fid_is_unavailable_offline_with_the_flag_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    samples = _images(20, 5)
    value = METRICS.get("fid").compute(_ctx(samples, torch.ones(1, 1, 28, 28), samples, tmp_path, None))
    assert value.value is None and not value.available
    assert "--inception-weights" in value.reason


def test_user_inception_weights_must_load_without_unpickling_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # a pickle that would run code on load
            return (print, ("pwned",))

    bad = tmp_path / "bad.pth"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(Exception):
        find_inception_weights(str(bad))
    with pytest.raises(FileNotFoundError):
        find_inception_weights(str(tmp_path / "missing.pth"))
