"""KID, the per-cell bootstrap and the leaderboard's comparisons, against hand computations on small inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unlearnbench import metrics as bench_metrics
from unlearnbench import table
from unlearnbench.datasets.mnist_tshirt.classifier import load_classifier
from unlearnbench.metrics import EvalContext, to_uint8
from unlearnbench.registry import METRICS, TASKS, load_all
from unlearnbench.report import _build_group, render_markdown
from unlearnbench.task import TaskData
from unlearnbench.uncertainty import (
    bootstrap_replicates, fid_from_features, fid_replicates, kid_replicates, kid_subset_size, paired_bootstrap,
    percentile_interval, resample_counts, resample_indices,
)

load_all()




def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _ctx(samples: torch.Tensor, retain: torch.Tensor, tmp_path: Path, clf: Path | None,
         **tier_eval: object) -> EvalContext:
    forget = torch.ones(1, 1, 28, 28)
    data = TaskData(retain=retain, forget=forget.repeat(3, 1, 1, 1), forget_image=forget, source={"kind": "test"})
    return EvalContext(sample_sets={"samples": samples}, forget_image=forget, retain=retain, classifier_dir=clf,
                       cache_dir=tmp_path / "cache", device=torch.device("cpu"), task=TASKS.get("mnist_tshirt_mini"),
                       data=data, seed=7, tier_eval=dict(tier_eval))


def _features(clf_dir: Path, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        feats, _ = load_classifier(clf_dir).forward_features(to_uint8(images).float() / 127.5 - 1)
    return feats.double().numpy()


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (a·b / d + 1)³, by explicit loops over pairs (Bińkowski et al. 2018)."""
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return float(xx + yy - 2 * xy)


def test_kid_clf_is_the_unbiased_cubic_mmd2(tmp_path: Path, classifier_dir: Path) -> None:
    """With as many samples as references (< 1000), every KID subset is the whole set: KID = the MMD²."""
    samples, retain = _images(40, 1), _images(40, 2)
    value = METRICS.get("kid_clf").compute(_ctx(samples, retain, tmp_path, classifier_dir, bootstrap=50))
    x, y = _features(classifier_dir, samples), _features(classifier_dir, retain)
    expected = _mmd2_unbiased(x, y)
    assert value.value == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert value.extra["subset_size"] == 40 and value.extra["subsets"] == 100 and value.n_samples == 40
    # the replicates' statistic on the un-resampled set is the same number
    assert kid_replicates(x, y, np.ones((1, 40)))[0] == pytest.approx(expected, rel=1e-9)
    assert len(value.replicates) == 50 and value.interval[0] <= value.interval[1]
    assert "50 replicates, seed 7" in value.interval_method
    # reference features cached as a plain npz, read back: the same number, no reference pass
    cached = list((tmp_path / "cache" / bench_metrics.STATS_DIR).glob("*-features-*.npz"))
    assert len(cached) == 1
    with np.load(cached[0], allow_pickle=False) as data:
        assert sorted(data.files) == ["features", "header"] and data["features"].shape == y.shape
    again = METRICS.get("kid_clf").compute(_ctx(samples, retain, tmp_path, classifier_dir, bootstrap=50))
    assert again.value == value.value and again.replicates == value.replicates


def test_a_foreign_reference_features_file_is_discarded(tmp_path: Path, classifier_dir: Path) -> None:
    samples, retain = _images(30, 3), _images(30, 4)
    first = METRICS.get("kid_clf").compute(_ctx(samples, retain, tmp_path, classifier_dir, bootstrap=0))
    (path,) = (tmp_path / "cache" / bench_metrics.STATS_DIR).glob("*-features-*.npz")
    with np.load(path, allow_pickle=False) as data:
        header = str(data["header"])
    np.savez(path.with_suffix(""), features=np.zeros((30, 5)), header=np.array(header))  # wrong width
    again = METRICS.get("kid_clf").compute(_ctx(samples, retain, tmp_path, classifier_dir, bootstrap=0))
    assert again.value == first.value and first.replicates is None


def test_kid_subset_size_is_capped_and_small_sets_are_refused() -> None:
    assert kid_subset_size(5000, 20000) == 1000 and kid_subset_size(64, 500) == 64 and kid_subset_size(900, 32) == 32
    with pytest.raises(ValueError, match="at least 2"):
        kid_subset_size(1, 100)
    with pytest.raises(ValueError, match="at least 2"):
        kid_replicates(np.ones((1, 4)), np.ones((10, 4)), np.ones((1, 1)))


@pytest.mark.parametrize("bad", [-1, 1.5, "200", True])
def test_bootstrap_setting_must_be_a_non_negative_integer(bad: object) -> None:
    with pytest.raises(ValueError, match="bootstrap must be a non-negative integer"):
        bootstrap_replicates({"bootstrap": bad})
    assert bootstrap_replicates({}) == 200 and bootstrap_replicates({"bootstrap": 0}) == 0


def test_bootstrap_percentile_interval_by_hand() -> None:
    """999 resamples of (1, 2, 3, 4, 10): the interval is the 2.5% / 97.5% order statistics, interpolated."""
    data = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    idx = resample_indices(5, 999, seed=3)
    assert idx.shape == (999, 5) and (idx == resample_indices(5, 999, seed=3)).all()  # seeded: reruns identical
    means = np.sort(data[idx].mean(axis=1))
    lo = means[24] + 0.95 * (means[25] - means[24])  # position 0.025 * 998 = 24.95
    hi = means[973] + 0.05 * (means[974] - means[973])  # position 0.975 * 998 = 973.05
    assert percentile_interval(data[idx].mean(axis=1)) == pytest.approx((lo, hi), rel=1e-12)
    counts = resample_counts(5, 999, seed=3)
    assert (counts.sum(axis=1) == 5).all() and (counts[0] == np.bincount(idx[0], minlength=5)).all()
    with pytest.raises(ValueError):
        percentile_interval([])


def test_fast_fid_equals_torch_fidelity() -> None:
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 48, generator=g, dtype=torch.float64) @ torch.randn(48, 48, generator=g, dtype=torch.float64)
    y = torch.randn(500, 48, generator=g, dtype=torch.float64) * 1.5 + 0.3
    sx, sy = fid_features_to_statistics(x), fid_features_to_statistics(y)
    expected = fid_statistics_to_metric(sx, sy, verbose=False)["frechet_inception_distance"]
    assert fid_from_features(x, sy["mu"], sy["sigma"]) == pytest.approx(expected, rel=1e-9)
    # a replicate with multiplicities is the FID of the resampled set
    idx = resample_indices(300, 2, seed=1)
    reps = fid_replicates(x, sy["mu"], sy["sigma"], resample_counts(300, 2, seed=1))
    for rep, row in zip(reps, idx):
        direct = fid_statistics_to_metric(fid_features_to_statistics(x[torch.as_tensor(row)]), sy, verbose=False)
        assert rep == pytest.approx(direct["frechet_inception_distance"], rel=1e-9)


def test_fid_clf_and_is_clf_carry_seeded_bootstrap_intervals(tmp_path: Path, classifier_dir: Path) -> None:
    samples, retain = _images(60, 5), _images(80, 6)
    out = {m: METRICS.get(m).compute(_ctx(samples, retain, tmp_path, classifier_dir, bootstrap=40))
           for m in ("fid_clf", "is_clf", "forget_rate")}
    again = METRICS.get("fid_clf").compute(_ctx(samples, retain, tmp_path, classifier_dir, bootstrap=40))
    for name, value in out.items():
        assert len(value.replicates) == 40, name
        assert value.interval[0] <= value.interval[1], name
    assert again.replicates == out["fid_clf"].replicates  # seeded from the cell seed
    assert out["fid_clf"].interval == percentile_interval(out["fid_clf"].replicates)
    assert "95% percentile bootstrap over the 60 non-forget generated samples" in out["is_clf"].interval_method
    assert "Wilson" in out["forget_rate"].interval_method


# ------------------------------------------------------------------------------------------ leaderboards


def _record(method: str, seed: int, values: dict[str, float], spread: float = 0.01) -> dict:
    """A record with bootstrap replicates around each value."""
    rng = np.random.default_rng(seed + 100 * len(method))
    metrics = {m: {"value": v, "higher_is_better": METRICS.get(m).higher_is_better,
                   "replicates": list(v + spread * rng.standard_normal(50))} for m, v in values.items()}
    return {"cell": {"task": "t", "tier": "x", "method": method, "seed": seed}, "config": {"method": method, "seed": seed},
            "status": "ok", "metrics": metrics}


def test_marks_oracle_and_best_on_synthetic_records() -> None:
    truth = {"pretrain": 0.30, "naive_deletion": 0.10, "erasediff": 0.0205, "retrack": 0.02, "retrain": 0.02}
    quality = {"pretrain": 5.0, "naive_deletion": 9.0, "erasediff": 5.0, "retrack": 5.0, "retrain": 5.0}
    items = []
    for method in truth:
        for seed in range(3):
            noise = 0.002 * (seed - 1)
            fr = truth[method] + noise
            if method == "retrack":
                fr = truth["retrain"] + noise  # the same per-seed values as the oracle
            items.append((_record(method, seed, {"forget_rate": fr, "fid_clf": quality[method] + noise}), None))
    group = _build_group("t", "x", items)
    rows = {r.method: i for i, r in enumerate(group.rows)}
    fr = group.marks["forget_rate"]
    assert "oracle" in fr.get(rows["retrack"], set())
    assert "oracle" not in fr.get(rows["naive_deletion"], set()) and "oracle" not in fr.get(rows["pretrain"], set())
    # retrack has the best forget rate: erasediff (0.05 pp off, within noise) is indistinguishable from it,
    # naive_deletion (8 pp off) is not; the best row itself carries no mark
    assert "best" in fr.get(rows["erasediff"], set())
    assert "best" not in fr.get(rows["naive_deletion"], set()) and "best" not in fr.get(rows["retrack"], set())
    assert "best" not in group.marks["fid_clf"].get(rows["naive_deletion"], set())
    gap = group.distances[rows["naive_deletion"]]["gaps"]["forget_rate"]
    assert gap["estimate"] == pytest.approx(0.08) and gap["interval"][0] > 0
    assert group.distances[rows["retrack"]]["distance"] == pytest.approx(0.0, abs=1e-12)
    assert group.distances[rows["naive_deletion"]]["distance"] > group.distances[rows["retrack"]]["distance"]
    md = render_markdown([group], Path("."))
    assert "Test: a paired hierarchical bootstrap" in md and "distance to oracle" in md
    assert "0.02 [" in md or "2.0% [" in md


def test_metrics_targeting_the_oracle_get_no_best_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    items = [(_record(m, s, {"fid_clf": v + 0.001 * s}), None)
             for m, v in (("naive_deletion", 1.0), ("retrack", 1.0), ("retrain", 3.0)) for s in range(3)]
    rows, _ = table.build_rows(items, ["fid_clf"], failed_rows=False)
    found, _ = table.marks(rows, ["fid_clf"], [0, 1])
    assert any("best" in v for v in found["fid_clf"].values())
    monkeypatch.setattr(table, "target", lambda metric: "oracle")
    found, _ = table.marks(rows, ["fid_clf"], [0, 1])
    assert not any("best" in v for v in found["fid_clf"].values())


def test_one_seed_without_replicates_is_not_testable() -> None:
    items = [({"cell": {"task": "t", "tier": "x", "method": m, "seed": 0}, "config": {"seed": 0}, "status": "ok",
               "metrics": {"forget_rate": {"value": v, "higher_is_better": False}}}, None)
             for m, v in (("retrack", 0.1), ("retrain", 0.1))]
    group = _build_group("t", "x", items)
    assert not group.marks["forget_rate"]
    assert any("not testable" in n and "retrack vs retrain" in n for n in group.notes)
    assert paired_bootstrap({0: (1.0, np.array([1.0]))}, {0: (1.0, np.array([1.0]))})["testable"] is False
