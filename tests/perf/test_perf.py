"""Performance suite (pytest-benchmark), off by default. Run it with

    pytest -m perf tests/perf --benchmark-only

Each test times one thing with the ``benchmark`` fixture (pytest-benchmark's table shows the
times) and asserts the issue's threshold for it; the numbers in docs/performance.md come from
the same functions (``unlearnbench.perf``) through ``scripts/perf_report.py``. These are
benchmarks, not unit tests: run them on a quiet machine (``uptime``), and expect them to take
about ten minutes on two cores.

``UNLEARNBENCH_PERF_CELEBA_ROWS`` shrinks the streamed CelebA-HQ-sized retain set (default
30,000 rows, 23.6 GB generated on the fly) for a quick check; ``UNLEARNBENCH_PERF_THREADS``
sets torch's threads for the UNet measurements (default 2).
"""
from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from unlearnbench import perf

#: torch intra-op threads for the UNet measurements (the issue's setting: 2)
THREADS = int(os.environ.get("UNLEARNBENCH_PERF_THREADS", "2"))
STEP_TOLERANCE = 0.10  # measured step ratio within 10 % of the pass-count prediction
#: Methods allowed a larger deviation from the pass-count prediction, with the reason
#: (docs/performance.md §1).
STEP_EXCEPTIONS: dict[str, tuple[float, str]] = {}
#: Methods with non-UNet work per step that pass counts cannot see; their prediction adds that
#: work, timed on its own: retrack_all's softmax target over the whole retain set.
NON_UNET_WORK = {"retrack_all": "whole_retain_s"}
KNN_SPEEDUP = 5.0  # ours vs scikit-learn end to end at MNIST scale
ANN_RECALL, ANN_SECONDS = 0.95, 60.0
CELEBA_PEAK_BYTES = 4e9
#: ours must be at least as fast as the bare diffusers pipeline; both run identical UNet calls
#: and scheduler steps, so the tolerance only absorbs timing noise between paired calls.
SAMPLER_MIN_RATIO = 0.97


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


# ---------------------------------------------------------------------------------------------
# step time per method


@pytest.fixture(scope="module")
def step_inputs() -> dict[str, Any]:
    retain, forget = perf.step_data()
    with perf.torch_threads(THREADS):
        passes = perf.unet_pass_times(64)
        target = perf.retrack_target_times(64, len(retain))
    return {"retain": retain, "forget": forget, "passes": passes, "target": target}


@pytest.mark.perf
@pytest.mark.parametrize("name", perf.STEP_METHODS)
def test_method_step_time_matches_pass_count(benchmark: Any, step_inputs: dict[str, Any], name: str) -> None:
    """13 steps of ``finetune`` (3 warm-up); before each round, untimed, the plain DDPM step for the ratio."""
    retain, forget, passes = step_inputs["retain"], step_inputs["forget"], step_inputs["passes"]
    plain_runs: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []

    def plain() -> None:
        plain_runs.append(perf.run_method_steps(perf.PLAIN_METHOD, retain, forget, seed=len(plain_runs)))

    def steps() -> None:
        runs.append(perf.run_method_steps(name, retain, forget, seed=len(runs)))

    benchmark.group = "unlearning: 13 loop steps (3 warm-up), QUICK_UNET, batch 64"
    with perf.torch_threads(THREADS):
        benchmark.pedantic(steps, setup=plain, rounds=3, iterations=1)
    ratio = _median([r["median_step_s"] / p["median_step_s"] for r, p in zip(runs, plain_runs)])
    forward, backward = runs[0]["forward_per_step"], runs[0]["backward_per_step"]
    plain_s = _median([p["median_step_s"] for p in plain_runs])
    predicted = perf.predicted_ratio(forward, backward, passes["beta"])
    if name in NON_UNET_WORK:
        predicted += step_inputs["target"][NON_UNET_WORK[name]] / plain_s
    benchmark.extra_info.update({
        "step_ms": 1e3 * _median([r["median_step_s"] for r in runs]), "plain_step_ms": 1e3 * plain_s,
        "forward": forward, "backward": backward, "beta": passes["beta"], "ratio": ratio, "predicted": predicted,
    })
    tolerance, why = STEP_EXCEPTIONS.get(name, (STEP_TOLERANCE, "pass counts"))
    assert abs(ratio / predicted - 1) <= tolerance, (
        f"{name}: step = {ratio:.2f} plain steps, its passes (F={forward:g}, B={backward:g}, β={passes['beta']:.2f}) "
        f"predict {predicted:.2f} (allowed ±{tolerance:.0%}: {why}); 1-minute load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; other jobs inflate steps unevenly (the gradient-rule "
        f"methods' many small parameter-sized ops most), so judge this on a quiet machine")


# ---------------------------------------------------------------------------------------------
# exact kNN at MNIST scale


@pytest.fixture(scope="module")
def mnist_knn() -> dict[str, Any]:
    retain, queries = perf.mnist_scale_data()
    return {"retain": retain, "queries": queries, "comparison": perf.mnist_knn_comparison(repeats=5)}


@pytest.mark.perf
@pytest.mark.parametrize("contender", ["ours", "sklearn", "faiss_flat_no_dedup"])
def test_knn_mnist_scale(benchmark: Any, mnist_knn: dict[str, Any], contender: str) -> None:
    """60,000 × 784, 606 identical queries, k = 10: ours ≥ 5× faster than scikit-learn, identical neighbours."""
    from unlearnbench.neighbours import knn_search

    retain, queries = mnist_knn["retain"], mnist_knn["queries"]
    db, q = retain.flatten(1).numpy(), queries.flatten(1).numpy()
    fn = {"ours": lambda: knn_search(queries, retain, 10), "sklearn": lambda: perf.sklearn_knn(q, db, 10),
          "faiss_flat_no_dedup": lambda: perf.faiss_flat_knn(q, db, 10)}[contender]
    benchmark.group = "kNN: 60,000 x 784, 606 identical queries, k=10 (build + search)"
    benchmark.pedantic(fn, rounds=3, iterations=1)
    comparison = mnist_knn["comparison"]
    benchmark.extra_info.update({"median_s_interleaved": comparison["seconds"][contender],
                                 "speedup_vs_sklearn": comparison["seconds"]["sklearn"] / comparison["seconds"][contender]})
    if contender == "ours":
        assert comparison["identical_indices"], "knn_search's neighbours differ from scikit-learn's"
        assert comparison["speedup_vs_sklearn"] >= KNN_SPEEDUP, (
            f"knn_search is only {comparison['speedup_vs_sklearn']:.1f}× faster than scikit-learn "
            f"({comparison['seconds']})")


# ---------------------------------------------------------------------------------------------
# 1,000,000 items: approximate index


@pytest.fixture(scope="module")
def million() -> dict[str, np.ndarray]:
    db = perf.clustered_points(1_000_000, 64, 1000, seed=0)
    q = perf.clustered_points(1000, 64, 1000, seed=1)
    return {"db": db, "q": q}


@pytest.fixture(scope="module")
def million_exact(million: dict[str, np.ndarray]) -> np.ndarray:
    return perf.exact_faiss(million["db"], million["q"], 10)[2]


@pytest.mark.perf
def test_exact_search_million_items(benchmark: Any, million: dict[str, np.ndarray]) -> None:
    """Exact faiss flat search, 1,000 queries in 1,000,000 × 64 (the reference the recall is measured against)."""
    benchmark.group = "kNN: 1,000,000 x 64 clustered, 1,000 queries, k=10"
    benchmark.pedantic(lambda: perf.exact_faiss(million["db"], million["q"], 10), rounds=1, iterations=1)


@pytest.mark.perf
def test_approximate_index_million_items(benchmark: Any, million: dict[str, np.ndarray],
                                         million_exact: np.ndarray) -> None:
    """IVF (``approximate_index``, nlist 1024, nprobe 16): build + search under 60 s, recall@10 ≥ 0.95."""
    benchmark.group = "kNN: 1,000,000 x 64 clustered, 1,000 queries, k=10"
    result = benchmark.pedantic(
        lambda: perf.ann_benchmark(million["db"], million["q"], million_exact, 10, nlist=1024, nprobe=16),
        rounds=1, iterations=1)
    benchmark.extra_info.update({k: result[k] for k in ("build_s", "search_s", "total_s", "recall")})
    assert result["recall"] >= ANN_RECALL, result
    assert result["total_s"] < ANN_SECONDS, result


# ---------------------------------------------------------------------------------------------
# CelebA-HQ scale: exact search streaming the retain set


@pytest.mark.perf
def test_celeba_scale_streaming_search(benchmark: Any) -> None:
    """30,000 × 196,608 float32 (23.6 GB) generated chunk by chunk: exact top-10, peak RSS < 4 GB."""
    rows = int(os.environ.get("UNLEARNBENCH_PERF_CELEBA_ROWS", "30000"))
    benchmark.group = "kNN: CelebA-HQ scale, streamed"
    result = benchmark.pedantic(lambda: perf.celeba_stream_measure(rows=rows), rounds=1, iterations=1)
    benchmark.extra_info.update({k: result[k] for k in ("rows", "seconds", "generate_seconds", "search_seconds",
                                                        "peak_rss_bytes", "rss_before_bytes", "correct")})
    assert result["correct"], "the streamed search missed the planted nearest neighbours"
    assert result["peak_rss_bytes"] < CELEBA_PEAK_BYTES, f"peak RSS {result['peak_rss_bytes'] / 1e9:.2f} GB"


# ---------------------------------------------------------------------------------------------
# sampler against a bare diffusers pipeline


@pytest.mark.perf
@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_sampler_at_least_as_fast_as_diffusers(benchmark: Any, kind: str) -> None:
    """QUICK_UNET, batch 128, 25 steps: ``generate`` against the pipeline; before each round, untimed, the pipeline."""
    ours, theirs = perf.sampler_pair(kind, steps=25, batch_size=128)
    t_ours: list[float] = []
    t_theirs: list[float] = []

    def pipeline() -> None:
        t_theirs.append(perf.timed(theirs)[0])

    def generate() -> None:
        t_ours.append(perf.timed(ours)[0])

    benchmark.group = f"sampling: {kind.upper()} 25 steps, batch 128, QUICK_UNET"
    with perf.torch_threads(THREADS):
        diff = perf.same_images(ours(), theirs())  # also the warm-up
        benchmark.pedantic(generate, setup=pipeline, rounds=5, iterations=1)
    ratio = _median([th / o for o, th in zip(t_ours, t_theirs)])
    benchmark.extra_info.update({"ours_samples_per_s": 128 / _median(t_ours),
                                 "diffusers_samples_per_s": 128 / _median(t_theirs), "ratio": ratio})
    assert diff == 0.0, f"images differ from the pipeline's by {diff}"
    assert ratio >= SAMPLER_MIN_RATIO, f"ours reaches {ratio:.3f}× the pipeline's samples/s"


# ---------------------------------------------------------------------------------------------
# end to end: rerunning a finished suite


@pytest.mark.perf
def test_cached_rerun_smoke_suite(benchmark: Any, smoke_run: Path) -> None:
    """``run --tier smoke`` into a finished results folder: every record is reused (the cold run is the fixture)."""
    from unlearnbench.cli import main

    benchmark.group = "end to end: smoke tier, all methods, cached rerun"
    rc = benchmark.pedantic(lambda: main(["run", "--tier", "smoke", "--out", str(smoke_run), "--no-progress"]),
                            rounds=3, iterations=1)
    assert rc == 0
