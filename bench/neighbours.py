"""Exact k-nearest-neighbour search of forget samples in the retain set (faiss, flat L2).

Identical queries are searched once, and the retain set is streamed in chunks so memory
stays bounded whatever its size.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import faiss
import numpy as np
import torch
from torch import Tensor


def unique_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Distinct rows of ``x`` (flattened per sample) and the index of each row's distinct copy."""
    flat = x.flatten(1)
    uniq, inverse = torch.unique(flat, dim=0, return_inverse=True)
    return uniq, inverse


CHUNK_BYTES = 512 << 20  # retain rows read per chunk: bounded memory whatever the image size


def knn_search(queries: Tensor, database: Tensor, k: int, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Squared L2 distances and indices of the ``k`` nearest ``database`` rows of each query.

    Exact (faiss brute-force ``knn``, no index built) over database chunks, merged with a top-k;
    ties keep the lower index. Deduplicates identical queries before searching.
    """
    if k > len(database):
        raise ValueError(f"k = {k} exceeds the retain set size {len(database)}")
    uniq, inverse = unique_rows(queries)
    q = np.ascontiguousarray(uniq.numpy().astype(np.float32))
    chunk_size = chunk_size or max(1, min(65536, CHUNK_BYTES // (q.shape[1] * 4)))
    best_d = torch.full((len(q), 0), float("inf"))
    best_i = torch.zeros((len(q), 0), dtype=torch.long)
    for start in range(0, len(database), chunk_size):
        # A view when the retain set is already contiguous float32: no copy, no index to build.
        chunk = np.ascontiguousarray(database[start : start + chunk_size].flatten(1).numpy(), dtype=np.float32)
        d, i = faiss.knn(q, chunk, min(k, len(chunk)))
        best_d = torch.cat([best_d, torch.from_numpy(d)], dim=1)
        best_i = torch.cat([best_i, torch.from_numpy(i).long() + start], dim=1)
        order = torch.argsort(best_d, dim=1, stable=True)[:, :k]
        best_d, best_i = best_d.gather(1, order), best_i.gather(1, order)
    return best_d[inverse], best_i[inverse]


def approximate_index(database: np.ndarray, nlist: int | None = None, nprobe: int = 32,
                      train_size: int = 100_000, seed: int = 0) -> faiss.Index:
    """An IVF-flat index for retain sets of millions of items (exact search within probed cells).

    ``nlist`` defaults to about 4·sqrt(N) cells; recall against exact search is measured in
    docs/performance.md and grows with ``nprobe``.
    """
    data = np.ascontiguousarray(database, dtype=np.float32)
    n, d = data.shape
    nlist = nlist or max(1, int(4 * np.sqrt(n)))
    quantizer = faiss.IndexFlatL2(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist)
    rng = np.random.default_rng(seed)
    sample = data[rng.choice(n, size=min(n, max(train_size, 39 * nlist)), replace=False)]
    index.train(sample)
    index.add(data)
    index.nprobe = nprobe
    return index


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact k nearest neighbours that an approximate search returned."""
    k = exact.shape[1]
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact)]))


def cached_knn_search(queries: Tensor, database: Tensor, k: int, cache: Path | None) -> tuple[Tensor, Tensor]:
    """``knn_search`` memoised on disk by a hash of the retain set, the queries and k.

    The retain set's preprocessing is part of its bytes (model-space pixels or latents), so a
    change of preprocessing is a different key.
    """
    if cache is None:
        return knn_search(queries, database, k)
    h = hashlib.sha256()
    h.update(str((len(database), *queries.shape[1:])).encode())
    for start in range(0, len(database), 4096):  # chunked: lazily decoded retain sets stream too
        h.update(database[start : start + 4096].contiguous().numpy().tobytes())
    uniq = unique_rows(queries)[0]
    h.update(uniq.contiguous().numpy().tobytes())
    h.update(f"k={k}".encode())
    path = Path(cache) / f"knn-{h.hexdigest()[:24]}.npz"
    uniq, inverse = unique_rows(queries)
    if path.exists():
        stored = np.load(path)
        return torch.from_numpy(stored["dist"])[inverse], torch.from_numpy(stored["index"])[inverse]
    dist, index = knn_search(uniq, database, k)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, dist=dist.numpy(), index=index.numpy())
    tmp.replace(path)
    return dist[inverse], index[inverse]
