"""On-disk caches: FID statistics and kNN results are plain arrays, checked on load, repaired when bad;
nothing in a cache folder is ever unpickled, and metric caches are not shipped to Ray nodes."""
from __future__ import annotations

import io
import json
import os
import tarfile
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch_fidelity

import unlearnbench.neighbours as nb
from unlearnbench import metrics
from unlearnbench.datasets.mnist_tshirt.classifier import TORCH_FIDELITY_NAME
from unlearnbench.metrics import EvalContext, _Images, fid_reference
from unlearnbench.registry import METRICS, TASKS, load_all
from unlearnbench.task import TaskData

from tests.standins import write_standin_inception

load_all()

FIDELITY = dict(isc=True, fid=True, isc_splits=10, batch_size=256, save_cpu_ram=True, verbose=False, cuda=False,
                cache=False)


class Planted:
    """A pickle payload: unpickling it creates ``marker`` (the proof that code ran)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))




def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _ctx(tmp_path: Path, clf: Path | None, **kw: Any) -> EvalContext:
    """150 samples of which 30 are forget copies (MNIST T-Shirt's criterion: quality skips them), 300 retain images."""
    forget = torch.ones(1, 1, 28, 28)
    samples = torch.cat([_images(150, 2), forget.repeat(30, 1, 1, 1)])
    retain = _images(300, 3)
    data = TaskData(retain=retain, forget=forget.repeat(3, 1, 1, 1), forget_image=forget, source={"kind": "test"})
    return EvalContext(sample_sets={"samples": samples}, forget_image=forget, retain=retain, classifier_dir=clf,
                       cache_dir=tmp_path / "cache", device=torch.device("cpu"),
                       task=TASKS.get("mnist_tshirt_mini"), data=data, **kw)


def _classifier_values(ctx: EvalContext) -> tuple[float, float, float]:
    is_clf = METRICS.get("is_clf").compute(ctx)
    fid_clf = METRICS.get("fid_clf").compute(ctx)
    return is_clf.value, is_clf.extra["std_over_splits"], fid_clf.value


def _stats_files(ctx: EvalContext) -> list[Path]:
    return sorted((ctx.cache_dir / metrics.STATS_DIR).glob("*.npz"))


def test_classifier_metrics_equal_torch_fidelity_uncached_and_from_the_cache(
    tmp_path: Path, classifier_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """is_clf and fid_clf are bit-identical to ``torch_fidelity.calculate_metrics(cache=False)``, computed
    and read back from the statistics cache; only an npz is written, nothing in torch-fidelity's format."""
    ctx = _ctx(tmp_path, classifier_dir)
    expected = torch_fidelity.calculate_metrics(
        input1=_Images(ctx.kept), input2=_Images(fid_reference(ctx)), feature_extractor=TORCH_FIDELITY_NAME,
        feature_extractor_weights_path=str(classifier_dir), **FIDELITY)
    want = (expected["inception_score_mean"], expected["inception_score_std"], expected["frechet_inception_distance"])
    assert _classifier_values(ctx) == want
    assert len(_stats_files(ctx)) == 1
    assert not list(ctx.cache_dir.rglob("*.pt"))
    passes = _count_feature_passes(monkeypatch)
    assert _classifier_values(_ctx(tmp_path, classifier_dir)) == want  # a fresh cell: statistics from the npz
    assert passes == [1]  # one pass over the samples for both metrics, none over the reference set


def _count_feature_passes(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The input ids (1: samples, 2: reference) torch-fidelity extracts features of from now on."""
    import torch_fidelity.utils

    passes: list[Any] = []
    real = torch_fidelity.utils.extract_featuresdict_from_input_id
    monkeypatch.setattr(torch_fidelity.utils, "extract_featuresdict_from_input_id",
                        lambda input_id, *a, **k: passes.append(input_id) or real(input_id, *a, **k))
    return passes


def test_inception_fid_and_is_equal_torch_fidelity_uncached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fid and inception_score (one Inception pass, grayscale as 3 channels) on the random Inception
    stand-in equal ``torch_fidelity.calculate_metrics(cache=False)``, computed and from the cache."""
    weights = str(write_standin_inception(tmp_path / "weights"))
    forget = torch.ones(1, 1, 28, 28)
    samples = torch.cat([_images(10, 5), forget])  # Inception runs at 299 x 299: as few images as IS allows
    retain = _images(20, 6)
    data = TaskData(retain=retain, forget=forget, forget_image=forget, source={"kind": "test"})

    def ctx() -> EvalContext:
        return EvalContext(sample_sets={"samples": samples}, forget_image=forget, retain=retain,
                           classifier_dir=None, cache_dir=tmp_path / "cache", device=torch.device("cpu"),
                           weights={"inception": weights}, task=TASKS.get("mnist_tshirt_mini"), data=data,
                           tier_eval={"fid_reference_size": 5, "fid_feature_layer": "64"})

    first = ctx()
    assert len(first.kept) == 10  # the forget copy is not scored
    expected = torch_fidelity.calculate_metrics(
        input1=_Images(first.kept, 3), input2=_Images(fid_reference(first), 3), feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=weights, feature_layer_fid="64", **FIDELITY)
    assert METRICS.get("fid").compute(first).value == expected["frechet_inception_distance"]
    assert METRICS.get("inception_score").compute(first).value == expected["inception_score_mean"]
    assert len(_stats_files(first)) == 1
    again = ctx()  # the reference statistics from the npz; the samples' features reused (no third Inception pass)
    again.memo = {k: v for k, v in first.memo.items() if k != "inception"}
    passes = _count_feature_passes(monkeypatch)
    assert METRICS.get("fid").compute(again).value == expected["frechet_inception_distance"]
    assert passes == []


def test_inception_weights_are_hashed_once_per_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The weights salt is memoised in the cell's memo: a second metric does not re-read the file."""
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x" * 1000)
    reads = []
    real = metrics.sha256_file
    monkeypatch.setattr(metrics, "sha256_file", lambda p: reads.append(p) or real(p))
    ctx = _ctx(tmp_path, None)
    assert metrics._weights_salt(ctx, str(weights)) == metrics._weights_salt(ctx, str(weights))
    assert len(reads) == 1


def _plant(cache: Path, marker: Path) -> None:
    """Every file of the cache overwritten by a payload, plus torch-fidelity-format .pt files and an
    object-array npz: each one would create ``marker`` if it were unpickled."""
    fidelity = cache / "torch-fidelity"
    fidelity.mkdir(parents=True, exist_ok=True)
    targets = [p for p in cache.rglob("*") if p.is_file()]
    targets += [fidelity / f"s0-{TORCH_FIDELITY_NAME}-features-{layer}.pt"
                for layer in ("penultimate", "logits_unbiased")]
    targets += [cache / metrics.STATS_DIR / "planted.npz"]
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".npz":
            obj = np.empty(1, dtype=object)
            obj[0] = Planted(marker)
            np.savez(path, mu=obj, sigma=obj, header=obj)
        else:
            torch.save({"features": Planted(marker)}, path)


def test_planted_pickles_in_the_metric_cache_never_run(tmp_path: Path, classifier_dir: Path) -> None:
    """After a first run, every cache file is replaced by a pickle payload (a .pt as torch-fidelity
    writes them, an npz holding object arrays): the next cell runs none of them, reports the bad
    statistics file by name, and computes the same values."""
    want = _classifier_values(_ctx(tmp_path, classifier_dir))
    marker = tmp_path / "code-ran"
    ctx = _ctx(tmp_path, classifier_dir)
    stats = _stats_files(ctx)
    _plant(ctx.cache_dir, marker)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            got: Any = _classifier_values(ctx)
        except Exception as err:  # what a payload's result does next is secondary: first, did code run?
            got = err
    assert not marker.exists(), "a planted pickle was unpickled"
    assert got == want
    assert len(stats) == 1 and any(f"metric cache {stats[0]} is unusable" in str(w.message) for w in caught)
    with np.load(stats[0], allow_pickle=False) as data:  # repaired: plain arrays again
        assert data["sigma"].dtype == np.float64


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong_keys", "header_mismatch", "wrong_shape"])
def test_a_bad_statistics_file_is_named_replaced_and_the_value_unchanged(
    tmp_path: Path, classifier_dir: Path, damage: str
) -> None:
    want = _classifier_values(_ctx(tmp_path, classifier_dir))
    ctx = _ctx(tmp_path, classifier_dir)
    [path] = _stats_files(ctx)
    good = path.read_bytes()
    with np.load(path, allow_pickle=False) as data:
        mu, sigma, header = data["mu"], data["sigma"], json.loads(data["header"].item())
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    elif damage == "wrong_keys":
        np.savez(path, mu=mu, sigma=sigma)
    elif damage == "header_mismatch":
        np.savez(path, mu=mu, sigma=sigma, header=np.array(json.dumps({**header, "n": header["n"] + 1})))
    else:
        np.savez(path, mu=mu[:-1], sigma=sigma[:-1, :-1], header=np.array(json.dumps(header)))
    with pytest.warns(RuntimeWarning, match="metric cache") as caught:
        assert _classifier_values(ctx) == want
    assert any(str(path) in str(w.message) for w in caught)
    assert path.read_bytes() == good  # rewritten: the same statistics as the first run
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _classifier_values(_ctx(tmp_path, classifier_dir)) == want  # and trusted again


# --- kNN cache ---------------------------------------------------------------------------------

def _knn_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    retain = torch.randn(200, 1, 4, 4, generator=g)
    forget = torch.randn(3, 1, 4, 4, generator=g).repeat(2, 1, 1, 1)  # 6 queries, 3 distinct
    return forget, retain


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape", "index_out_of_range", "object_array"])
def test_a_bad_knn_cache_is_named_deleted_and_rewritten(tmp_path: Path, damage: str) -> None:
    forget, retain = _knn_inputs()
    exact = nb.knn_search(forget, retain, 5)
    nb.cached_knn_search(forget, retain, 5, tmp_path)
    [path] = tmp_path.glob("knn-*.npz")
    good = path.read_bytes()
    with np.load(path, allow_pickle=False) as data:
        dist, index = data["dist"], data["index"]
    if damage == "garbage":
        path.write_bytes(os.urandom(2048))
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "wrong_shape":
        np.savez(path, dist=dist[:, :3], index=index[:, :3])
    elif damage == "index_out_of_range":
        np.savez(path, dist=dist, index=index + len(retain))
    else:
        obj = np.empty(1, dtype=object)
        obj[0] = Planted(tmp_path / "code-ran")
        np.savez(path, dist=obj, index=obj)
    with pytest.warns(RuntimeWarning, match="kNN cache") as caught:
        got = nb.cached_knn_search(forget, retain, 5, tmp_path)
    assert any(str(path) in str(w.message) for w in caught)
    assert torch.equal(got[0], exact[0]) and torch.equal(got[1], exact[1])
    assert path.read_bytes() == good and not (tmp_path / "code-ran").exists()


def test_two_knn_writers_never_share_a_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second writer finishes the same cache entry while the first is about to rename its temporary:
    with one fixed temporary name the second's rename would take the first's file away."""
    forget, retain = _knn_inputs()
    exact = nb.knn_search(forget, retain, 5)
    real_replace = os.replace
    sources: list[str] = []

    def replace(src: Any, dst: Any) -> None:
        sources.append(str(src))
        if len(sources) == 1:  # the first writer, just before its rename: a second writer runs to the end
            assert all(torch.equal(a, b) for a, b in zip(nb.cached_knn_search(forget, retain, 5, tmp_path), exact))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    got = nb.cached_knn_search(forget, retain, 5, tmp_path)
    assert torch.equal(got[0], exact[0]) and torch.equal(got[1], exact[1])
    assert len(sources) == 2 and sources[0] != sources[1]
    [entry] = tmp_path.iterdir()  # the entry only, no temporary left behind
    assert entry.name.startswith("knn-") and entry.suffix == ".npz"


def test_concurrent_knn_writers_in_threads_agree(tmp_path: Path) -> None:
    forget, retain = _knn_inputs()
    exact = nb.knn_search(forget, retain, 5)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(nb.cached_knn_search(forget, retain, 5, tmp_path)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(torch.equal(r[1], exact[1]) for r in results)
    assert [p.suffix for p in tmp_path.iterdir()] == [".npz"]


# --- Ray artefact bundle -----------------------------------------------------------------------

def test_the_artefact_bundle_ships_artefacts_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from unlearnbench.executors import _artifact_bundle

    monkeypatch.setenv("UNLEARNBENCH_CACHE", str(tmp_path))
    root = tmp_path / "task" / "tier"
    shipped = ["base/unet_ema/diffusion_pytorch_model.safetensors", "retrain-f0/unet_ema/config.json",
               "classifier/model.safetensors", "manifest.json"]
    kept_back = ["torch-fidelity/s0-inception-v3-compat-features-2048.pt", f"{metrics.STATS_DIR}/x-2048-abc.npz",
                 "notes.txt", "scratch/file.bin", "base/.hidden.tmp"]
    for rel in shipped + kept_back:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    bench = SimpleNamespace(task_name="task", task=SimpleNamespace(cache_name="task"), tier=SimpleNamespace(name="tier"))
    bundle = _artifact_bundle(bench)
    with tarfile.open(fileobj=io.BytesIO(bundle["tar"])) as tar:
        assert sorted(tar.getnames()) == sorted(shipped)
