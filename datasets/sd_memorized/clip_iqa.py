"""CLIP-IQA (Wang, Chan and Loy, AAAI 2023): image quality as CLIP's preference for "Good photo." over "Bad photo.".

score = softmax(100 · [cos(img, "Good photo."), cos(img, "Bad photo.")])[0], in [0, 1], higher is better.
The factor 100 is CLIP's trained logit scale, which every implementation applies (torchmetrics
``_clip_iqa_compute``, piq, IQA-PyTorch). The CLIP weights are a Hugging Face ``CLIPModel`` folder or hub
id given with ``--clip-weights`` (e.g. openai/clip-vit-base-patch32), with its tokenizer and image
processor. The ReTrack/SISS evaluations used torchmetrics' default ``clip_iqa`` model (piq's CLIP RN50),
so absolute values match theirs only with those weights; comparisons within this suite are unaffected.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from unlearnbench.metrics import to_uint8

PROMPT_PAIR = ("Good photo.", "Bad photo.")
LOGIT_SCALE = 100.0


@dataclass
class ClipIQA:
    """A loaded CLIP model with its tokenizer and image processor."""

    model: Any
    tokenizer: Any
    processor: Any
    source: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_clip(path: str | None, device: torch.device | str = "cpu") -> ClipIQA:
    """Load CLIP from a folder or hub id; absent weights are an error naming ``--clip-weights``."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    if not path:
        raise FileNotFoundError("CLIP-IQA needs CLIP weights: pass --clip-weights PATH (a CLIPModel folder or hub id, "
                                "e.g. openai/clip-vit-base-patch32)")
    kwargs = {"local_files_only": True} if os.environ.get("HF_HUB_OFFLINE") == "1" else {}
    try:
        model = CLIPModel.from_pretrained(str(path), **kwargs).to(device).eval()
        tokenizer = CLIPTokenizer.from_pretrained(str(path), **kwargs)
        processor = CLIPImageProcessor.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"--clip-weights {path}: not a loadable CLIPModel folder or hub id with tokenizer and "
                                f"image processor ({type(err).__name__}: {err})") from err
    return ClipIQA(model, tokenizer, processor, str(path))


@torch.inference_mode()
def clip_iqa_scores(clip: ClipIQA, images: Tensor, batch_size: int = 64) -> Tensor:
    """Per-image CLIP-IQA (N,) float32 on CPU for images in [−1, 1], (N, 3, H, W)."""
    text = clip.tokenizer(list(PROMPT_PAIR), padding=True, return_tensors="pt").to(clip.device)
    out = []
    for chunk in images.split(batch_size):
        pixels = clip.processor(images=list(to_uint8(chunk).cpu()), return_tensors="pt")["pixel_values"].to(clip.device)
        # CLIPModel.forward returns L2-normalised embeddings (a stable API across transformers versions).
        res = clip.model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
        cos = res.image_embeds.float() @ res.text_embeds.float().T
        out.append((LOGIT_SCALE * cos).softmax(dim=-1)[:, 0].cpu())
    return torch.cat(out)
