"""Exact k-nearest-neighbour search of forget samples in the retain set (faiss, flat L2).

Identical queries are searched once, and the retain set is streamed in chunks so memory
stays bounded whatever its size.
"""
from __future__ import annotations

import faiss
import numpy as np
import torch
from torch import Tensor


def unique_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Distinct rows of ``x`` (flattened per sample) and the index of each row's distinct copy."""
    flat = x.flatten(1)
    uniq, inverse = torch.unique(flat, dim=0, return_inverse=True)
    return uniq, inverse


def knn_search(queries: Tensor, database: Tensor, k: int, chunk_size: int = 65536) -> tuple[Tensor, Tensor]:
    """Squared L2 distances and indices of the ``k`` nearest ``database`` rows of each query.

    Exact (faiss ``IndexFlatL2``) over database chunks, merged with a top-k; ties keep the
    lower index. Deduplicates identical queries before searching.
    """
    if k > len(database):
        raise ValueError(f"k = {k} exceeds the retain set size {len(database)}")
    uniq, inverse = unique_rows(queries)
    q = np.ascontiguousarray(uniq.numpy().astype(np.float32))
    best_d = torch.full((len(q), 0), float("inf"))
    best_i = torch.zeros((len(q), 0), dtype=torch.long)
    for start in range(0, len(database), chunk_size):
        chunk = database[start : start + chunk_size].flatten(1).numpy().astype(np.float32)
        index = faiss.IndexFlatL2(chunk.shape[1])
        index.add(np.ascontiguousarray(chunk))
        d, i = index.search(q, min(k, len(chunk)))
        best_d = torch.cat([best_d, torch.from_numpy(d)], dim=1)
        best_i = torch.cat([best_i, torch.from_numpy(i).long() + start], dim=1)
        order = torch.argsort(best_d, dim=1, stable=True)[:, :k]
        best_d, best_i = best_d.gather(1, order), best_i.gather(1, order)
    return best_d[inverse], best_i[inverse]
