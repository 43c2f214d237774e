"""Random-weight STAND-INS in the real weight-file formats, for tests only.

They exercise the loading and plumbing paths (torch-fidelity's Inception extractor, SSCD's TorchScript
files) offline; any number computed with them is meaningless, which their file names say.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from unittest import mock

import torch
from torch import Tensor, nn

STANDIN_INCEPTION_FILE = "standin-random-inception-v3-compat.pth"
STANDIN_SSCD_FILE = "standin-random-sscd.torchscript.pt"


def write_standin_inception(folder: Path) -> Path:
    """Write a randomly initialised state_dict of torch-fidelity's ``inception-v3-compat`` extractor.

    A plain dict of tensors, so it loads with ``torch.load(weights_only=True)`` and as
    ``feature_extractor_weights_path``. The extractor's constructor always loads weights: it is given an
    empty file and its ``load_state_dict`` is patched out, leaving the random init.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    folder.mkdir(parents=True, exist_ok=True)
    empty = folder / "empty-state-dict.pth"
    torch.save({}, empty)
    with torch.random.fork_rng(devices=[]), mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"):
        torch.manual_seed(0)
        model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    empty.unlink()
    out = folder / STANDIN_INCEPTION_FILE
    torch.save(dict(model.state_dict()), out)
    return out


class StandinSSCD(nn.Module):
    """conv → ReLU → global average pool → linear; unnormalised output, like a descriptor head."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=3, stride=4, padding=1)
        self.head = nn.Linear(8, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def write_standin_sscd(path: Path, dim: int = 512) -> Path:
    """Write a random TorchScript stand-in for an SSCD model; ``path`` is a folder or a file name containing "standin"."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / STANDIN_SSCD_FILE
    if "standin" not in path.name:
        raise ValueError(f"stand-in file names must contain 'standin': {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = StandinSSCD(dim).eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.(script|save)` is deprecated", category=FutureWarning)
        torch.jit.save(torch.jit.script(model), str(path))
    return path


def write_standin_classifier(folder: Path) -> Path:
    """A random-weight ``small_cnn`` in the suite's classifier format (``model.safetensors`` + ``arch.json``)."""
    import json

    from safetensors.torch import save_file

    from unlearnbench.datasets.mnist_tshirt.classifier import build_classifier

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_classifier("small_cnn")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "arch.json").write_text(json.dumps({"arch": "small_cnn"}))
    return folder
