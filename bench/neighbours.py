"""Exact k-nearest-neighbour search of forget samples in the retain set (faiss, flat L2).

Identical queries are searched once, and the retain set is streamed in chunks so memory
stays bounded whatever its size.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import faiss
import numpy as np
import torch
from torch import Tensor

from unlearnbench.io import atomic_write_bytes, discard_bad_cache


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
    change of preprocessing is a different key. A cache file that does not load as the expected
    arrays is named in a warning, deleted and rewritten: a bad file never fails a cell twice.
    """
    if cache is None:
        return knn_search(queries, database, k)
    uniq, inverse = unique_rows(queries)
    path = Path(cache) / f"knn-{_knn_key(uniq, database, k, queries.shape[1:])}.npz"
    stored = _load_knn(path, len(uniq), k, len(database)) if path.exists() else None
    if stored is not None:
        return stored[0][inverse], stored[1][inverse]
    dist, index = knn_search(uniq, database, k)
    _save_knn(path, dist, index)
    return dist[inverse], index[inverse]


def _knn_key(uniq: Tensor, database: Tensor, k: int, shape: tuple[int, ...]) -> str:
    """Hash of the retain set (streamed in chunks: lazily decoded sets stream too), the distinct queries and k."""
    h = hashlib.sha256()
    h.update(str((len(database), *shape)).encode())
    for start in range(0, len(database), 4096):
        h.update(database[start : start + 4096].contiguous().numpy().tobytes())
    h.update(uniq.contiguous().numpy().tobytes())
    h.update(f"k={k}".encode())
    return h.hexdigest()[:24]


def _load_knn(path: Path, rows: int, k: int, n_database: int) -> tuple[Tensor, Tensor] | None:
    """The cached (dist, index) of ``path``, or None after warning about and deleting a file that fails a check.

    Loaded without unpickling; checked: exactly the arrays ``dist`` (float) and ``index`` (integer), both
    ``rows`` x ``k``, every index within the retain set.
    """
    try:
        with np.load(path, allow_pickle=False) as stored:
            if sorted(stored.files) != ["dist", "index"]:
                raise ValueError(f"holds {sorted(stored.files)}, expected ['dist', 'index']")
            dist, index = stored["dist"], stored["index"]
        if dist.dtype.kind != "f" or index.dtype.kind not in "iu":
            raise ValueError(f"dtypes {dist.dtype}/{index.dtype}, expected float/integer")
        if dist.shape != (rows, k) or index.shape != (rows, k):
            raise ValueError(f"shapes {dist.shape}/{index.shape}, expected {(rows, k)}")
        if index.size and (index.min() < 0 or index.max() >= n_database):
            raise ValueError(f"indices outside the retain set of {n_database}")
    except Exception as err:  # any unreadable or foreign file: a cache is repaired, never trusted
        discard_bad_cache(path, "kNN cache", err)
        return None
    return torch.from_numpy(dist), torch.from_numpy(index.astype(np.int64))


def _save_knn(path: Path, dist: Tensor, index: Tensor) -> None:
    """Write the cache atomically under a unique temporary name (concurrent writers never share one)."""
    buf = io.BytesIO()
    np.savez(buf, dist=dist.numpy(), index=index.numpy())
    atomic_write_bytes(path, buf.getvalue())
