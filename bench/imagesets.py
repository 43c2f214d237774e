"""Image files for any task: one image opened with a clear error, model-space conversion, and lazy
image folders.

* A folder of ``NNNNN.jpg`` files (CelebA-HQ 256) is read lazily: 30,000 images of 256×256 are
  23.6 GB as float32, so batches are decoded on demand and nothing holds the whole set.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from unlearnbench.validate import DataFileError


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
