"""The MNIST classifier behind ``is_clf`` and ``fid_clf``, trained by the suite itself.

``resnet18``: a grayscale ResNet-18 (3×3 stem, no max-pool) as SISS uses for the paper tier;
``small_cnn``: a three-convolution net for the CPU tiers. Both expose logits and penultimate
features, and are plugged into torch-fidelity as a registered feature extractor.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from unlearnbench.progress import bar
from unlearnbench.task import ClassifierRecipe, TaskData

NUM_CLASSES = 10
TORCH_FIDELITY_NAME = "unlearnbench-mnist-classifier"


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, NUM_CLASSES)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.features(x)
        return feats, self.head(feats)


class ResNet18Gray(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        net = torchvision.models.resnet18(num_classes=NUM_CLASSES)
        net.conv1 = nn.Conv2d(1, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        self.head = net.fc
        net.fc = nn.Identity()
        self.body = net

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.body(x)
        return feats, self.head(feats)


ARCHS = {"small_cnn": SmallCNN, "resnet18": ResNet18Gray}


def build_classifier(arch: str) -> nn.Module:
    if arch not in ARCHS:
        raise ValueError(f"unknown classifier arch {arch!r}; known: {sorted(ARCHS)}")
    return ARCHS[arch]()


@torch.inference_mode()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, device: torch.device, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        _, logits = model.forward_features(x[i : i + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == y[i : i + batch_size]).sum())
    return correct / len(x)


def train_classifier(
    recipe: ClassifierRecipe, data: TaskData, device: torch.device, out_dir: Path,
    data_root: Path | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Train on the retain digits (10% held out), save safetensors, return accuracies."""
    from unlearnbench.datasets.mnist_tshirt.task import load_mnist_idx, to_model_space

    if data.retain_labels is None:
        raise ValueError("the classifier needs labelled retain samples")
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data.retain), generator=generator)
    n_val = len(order) // 10
    val, train = order[:n_val], order[n_val:]
    x, y = data.retain, data.retain_labels
    torch.manual_seed(0)
    model = build_classifier(recipe.arch).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    for _ in bar(range(recipe.epochs), "train classifier", progress):
        model.train()
        perm = train[torch.randperm(len(train), generator=generator)]
        for i in range(0, len(perm), recipe.batch_size):
            idx = perm[i : i + recipe.batch_size]
            xb = x[idx]
            shift = torch.randint(-2, 3, (2,), generator=generator).tolist()  # light augmentation
            xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            _, logits = model.forward_features(xb.to(device))
            loss = F.cross_entropy(logits, y[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    info: dict[str, Any] = {"arch": recipe.arch, "epochs": recipe.epochs, "train_size": len(train),
                            "heldout_accuracy": accuracy(model, x[val], y[val], device), "heldout_size": n_val}
    test_root = data_root or Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"
    try:
        images, labels, files = load_mnist_idx(Path(test_root), split="test")
        info["mnist_test_accuracy"] = accuracy(model, to_model_space(images), torch.from_numpy(labels.astype("int64")), device)
        info["mnist_test_files"] = files
    except FileNotFoundError:
        info["mnist_test_accuracy"] = None
        info["mnist_test_note"] = f"MNIST test IDX files not found under {test_root}"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(out_dir / "model.safetensors"))
    (out_dir / "arch.json").write_text(json.dumps({"arch": recipe.arch}))
    return info


def load_classifier(folder: str | Path) -> nn.Module:
    """Load a classifier saved by ``train_classifier`` (safetensors; no unpickling)."""
    folder = Path(folder)
    arch = json.loads((folder / "arch.json").read_text())["arch"]
    model = build_classifier(arch)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()


class ClassifierFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor: uint8 grayscale images -> penultimate features, logits.

    ``feature_extractor_weights_path`` is the classifier folder (``model.safetensors`` + ``arch.json``).
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError("the classifier feature extractor needs feature_extractor_weights_path (its folder)")
        self.model = load_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("penultimate", "logits_unbiased")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits_unbiased", "fid": "penultimate", "kid": "penultimate", "prc": "penultimate"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> Tensor:
        return torch.zeros(1, 1, 28, 28, dtype=torch.uint8)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        feats, logits = self.model.forward_features(x.float() / 127.5 - 1.0)
        out = {"penultimate": feats.double(), "logits_unbiased": logits.double()}
        return tuple(out[name] for name in self.features_list)


if TORCH_FIDELITY_NAME not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(TORCH_FIDELITY_NAME, ClassifierFeatureExtractor)
