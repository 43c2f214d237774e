"""SSCD copy-detection descriptors (Pizzi et al., CVPR 2022) from the published TorchScript files.

The suite's memorisation metrics compare a generated image with the forget image by the cosine
similarity of their SSCD descriptors. The weights are not shipped: users download a TorchScript file
(``sscd_disc_mixup.torchscript.pt`` by default) and pass ``--sscd-weights PATH``.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

# Evaluation preprocessing from the SSCD README ("Inference using SSCD models" > "Preprocessing",
# github.com/facebookresearch/sscd-copy-detection): resize the small edge to 288 (torchvision Resize,
# bilinear with antialiasing), then normalise with the ImageNet mean and std.
SMALL_EDGE = 288
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SSCD_MODEL_ZOO = "https://github.com/facebookresearch/sscd-copy-detection#pretrained-models"
DEFAULT_SSCD_FILE = "sscd_disc_mixup.torchscript.pt"

# SSCD similarity above which an image counts as a copy of another: the replication threshold of
# Somepalli et al. 2023, "Diffusion Art or Digital Forgery?" (CVPR), whose code (somepago/DCR,
# diff_retrieval.py) reports the fraction of generations with similarity > 0.5 to the training set.
COPY_THRESHOLD = 0.5


def load_sscd(path: str | Path, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load an SSCD TorchScript model in eval mode; a missing or unreadable file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"SSCD weights not found at {path}: download {DEFAULT_SSCD_FILE} from the SSCD model zoo "
            f"({SSCD_MODEL_ZOO}) and pass --sscd-weights PATH")
    try:
        with warnings.catch_warnings():
            # SSCD publishes TorchScript files, so torch's TorchScript deprecation notice is not actionable here.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=FutureWarning)
            model = torch.jit.load(str(path), map_location=device)
    except RuntimeError as err:
        raise ValueError(f"{path} is not a TorchScript SSCD model (expected e.g. {DEFAULT_SSCD_FILE} from "
                         f"{SSCD_MODEL_ZOO}; pass it with --sscd-weights PATH): {err}") from err
    return model.eval()


def sscd_preprocess(images: Tensor) -> Tensor:
    """Images in [−1, 1], (N, C, H, W) with C in {1, 3}, to SSCD's input: RGB, small edge 288, normalised."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
    x = ((images.float() + 1) / 2).clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    short, long = min(h, w), max(h, w)
    new_long = int(SMALL_EDGE * long / short)
    size = (SMALL_EDGE, new_long) if h <= w else (new_long, SMALL_EDGE)
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.inference_mode()
def sscd_embed(model: torch.nn.Module, images: Tensor, batch_size: int = 64) -> Tensor:
    """L2-normalised SSCD descriptors (N, D), float32 on CPU, of images in [−1, 1], (N, C, H, W)."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    device = _model_device(model)
    out = []
    for chunk in images.split(batch_size):
        desc = model(sscd_preprocess(chunk.to(device))).float()
        out.append(F.normalize(desc, dim=1).cpu())
    return torch.cat(out)


def sscd_similarity(model: torch.nn.Module, a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of SSCD descriptors row by row, (N,); ``b`` may be one image, compared with every row of ``a``."""
    da, db = sscd_embed(model, a), sscd_embed(model, b)
    if len(db) not in (1, len(da)):
        raise ValueError(f"cannot pair {len(da)} images with {len(db)}: give as many, or one")
    return (da * db).sum(dim=1)


SSCD_MISSING = ("SSCD weights not given: pass --sscd-weights PATH/sscd_disc_mixup.torchscript.pt "
                "(facebookresearch/sscd-copy-detection model zoo)")


def sscd_model(ctx: Any) -> torch.jit.ScriptModule:
    """The SSCD model of ``--sscd-weights``, loaded once per cell (an ``EvalContext``) for every metric needing it."""
    if "sscd_model" not in ctx.memo:
        ctx.memo["sscd_model"] = load_sscd(ctx.weights["sscd"], device=ctx.device)
    return ctx.memo["sscd_model"]
