"""Image data in the formats the published datasets come in, read without unpickling code.

* CIFAR-10's python batches (``cifar-10-batches-py/data_batch_1..5``) are pickles of a dict with
  a uint8 array; they are read with an unpickler that only rebuilds plain containers and numpy
  arrays, so a tampered file cannot run code.
* A folder of ``NNNNN.jpg`` files (CelebA-HQ 256) is read lazily: 30,000 images of 256×256 are
  23.6 GB as float32, so batches are decoded on demand and nothing holds the whole set.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

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


def open_image(path: Path, mode: str = "RGB") -> Image.Image:
    """The image at ``path`` decoded in ``mode``; a corrupt or non-image file is a ``DataFileError`` naming it."""
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as err:  # PIL: UnidentifiedImageError, truncated data, broken chunks
        reason = "not an image format PIL reads" if isinstance(err, UnidentifiedImageError) else str(err)
        raise DataFileError(f"{path} is not a readable image: {reason}") from None


def uint8_to_model(images: np.ndarray | Tensor) -> Tensor:
    """uint8 (N, C, H, W) -> float32 in [−1, 1]."""
    x = torch.as_tensor(np.asarray(images))
    return x.float() / 127.5 - 1.0


class ImageFolderSet:
    """A lazily decoded, indexable set of image files in model space ([−1, 1], (3, H, W)).

    Supports what the suite does with a retain set: ``len``, indexing by an int, a slice, a list
    or an index tensor (returns a float tensor batch), and ``flatten(1)``-free streaming through
    slices (the kNN search reads it chunk by chunk).
    """

    def __init__(self, files: Sequence[Path], size: int | None = None) -> None:
        self.files = [Path(f) for f in files]
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, ...]:
        first = self._decode(self.files[0])
        return (len(self), *first.shape)

    def _decode(self, path: Path) -> Tensor:
        img = open_image(path)
        if self.size and img.size != (self.size, self.size):
            raise DataFileError(f"{path} is {img.size[0]}x{img.size[1]}, expected {self.size}x{self.size}")
        return uint8_to_model(np.asarray(img).transpose(2, 0, 1).copy())

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> Tensor:
        if isinstance(index, int):
            return self._decode(self.files[index])
        if isinstance(index, slice):
            picks = range(*index.indices(len(self)))
        else:
            picks = torch.as_tensor(index).reshape(-1).tolist()
        return torch.stack([self._decode(self.files[i]) for i in picks])

    def materialize(self, limit_bytes: int = 4 << 30) -> Tensor:
        """All images as one tensor (refused above ``limit_bytes``: use the lazy set instead)."""
        need = int(np.prod(self.shape)) * 4
        if need > limit_bytes:
            raise MemoryError(f"{len(self)} images need {need / 2**30:.1f} GiB as float32; "
                              f"this operation needs them in memory (limit {limit_bytes / 2**30:.0f} GiB)")
        return self[:]


def as_tensor(data: Tensor | ImageFolderSet) -> Tensor:
    """A retain/forget set as one tensor (lazy sets are decoded, within a memory limit)."""
    return data if isinstance(data, Tensor) else data.materialize()
