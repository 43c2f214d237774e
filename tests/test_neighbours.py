"""Neighbour search: exact streaming search, the approximate index's recall, and the on-disk cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import unlearnbench.neighbours as nb


def _clustered(n: int, d: int, centers: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32) * 4
    return (c[rng.integers(0, centers, n)] + rng.standard_normal((n, d)).astype(np.float32)).astype(np.float32)


def test_approximate_index_recall_against_exact_search() -> None:
    db = _clustered(20_000, 16, 50, 0)
    q = _clustered(200, 16, 50, 1)
    _, exact = nb.knn_search(torch.from_numpy(q), torch.from_numpy(db), 10)
    index = nb.approximate_index(db, nprobe=32)
    _, found = index.search(q, 10)
    assert nb.recall_at_k(found, exact.numpy()) >= 0.95
    assert nb.recall_at_k(exact.numpy(), exact.numpy()) == 1.0


def test_cache_returns_identical_neighbours_without_searching_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    retain = torch.randn(300, 1, 4, 4, generator=g)
    forget = torch.randn(1, 1, 4, 4, generator=g).repeat(5, 1, 1, 1)
    first = nb.cached_knn_search(forget, retain, 7, tmp_path)
    assert torch.equal(first[1], nb.knn_search(forget, retain, 7)[1])
    monkeypatch.setattr(nb, "knn_search", lambda *a, **k: pytest.fail("the cache should have answered"))
    second = nb.cached_knn_search(forget, retain, 7, tmp_path)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert len(list(tmp_path.glob("knn-*.npz"))) == 1


def test_cache_key_changes_with_the_retain_set(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    retain = torch.randn(100, 8, generator=g)
    forget = torch.randn(2, 8, generator=g)
    nb.cached_knn_search(forget, retain, 3, tmp_path)
    nb.cached_knn_search(forget, retain * 2, 3, tmp_path)  # e.g. another preprocessing
    assert len(list(tmp_path.glob("knn-*.npz"))) == 2
