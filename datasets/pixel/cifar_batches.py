"""CIFAR-10's python batches (``cifar-10-batches-py/data_batch_1..5``), read without unpickling code.

They are pickles of a dict with a uint8 array; they are read with an unpickler that only rebuilds
plain containers and numpy arrays, so a tampered file cannot run code.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from unlearnbench.validate import DataFileError


class UnsafePickleError(pickle.UnpicklingError, DataFileError):
    """A CIFAR batch that asks to rebuild something other than arrays and lists (refused, not run)."""


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, bytes and numpy arrays; refuses every other global."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise UnsafePickleError(f"refusing to load {module}.{name}: a CIFAR batch holds only arrays and lists")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 3, 32, 32) and int64 labels of one CIFAR-10 python batch file."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayOnlyUnpickler(io.BufferedReader(f), encoding="bytes").load()
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{path}: {err}") from None
    except FileNotFoundError:
        raise
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            MemoryError) as err:  # a corrupt length field can ask for an absurd allocation
        raise DataFileError(f"{path} is not a readable CIFAR-10 python batch (truncated or corrupt): {err}") from None
    data = batch.get(b"data", batch.get("data")) if isinstance(batch, dict) else None
    labels = batch.get(b"labels", batch.get("labels")) if isinstance(batch, dict) else None
    if data is None or labels is None:
        raise DataFileError(f"{path} is not a CIFAR-10 python batch (no 'data'/'labels' entries)")
    try:
        return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)
    except (ValueError, TypeError) as err:
        raise DataFileError(f"{path}: CIFAR-10 images must be rows of 3x32x32 uint8 values ({err})") from None
