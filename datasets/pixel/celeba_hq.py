"""CelebA-HQ 256 (ReTrack/SISS protocol): forget ONE face per run, 10001.jpg ... 10010.jpg.

Data: a folder of ``NNNNN.jpg`` images under ``--data-root`` (read lazily: 30,000 faces are
23.6 GB as float32). Base model: ``google/ddpm-ema-celebahq-256`` (EMA weights, UNet at the root).
"""
from __future__ import annotations

import re
from pathlib import Path

from unlearnbench.imagesets import ImageFolderSet
from unlearnbench.loop import LoopConfig
from unlearnbench.datasets.pixel.task import PIXEL_METRICS, PixelTask, forget_members, smoke_tier
from unlearnbench.protocols import CELEBA_HQ
from unlearnbench.sampling import SamplerConfig
from unlearnbench.task import DataMissingError, TaskData, Tier, TrainRecipe, register_task

FORGET_FILES = tuple(str(i) for i in range(10001, 10011))
NAME = re.compile(r"^\d+\.jpe?g$", re.IGNORECASE)
#: Sub-folder of the data root holding faces the base model never trained on (membership inference's population).
HOLDOUT_FOLDER = "holdout"

#: google/ddpm-ema-celebahq-256's UNet (113.7M parameters): for the oracle's recipe and cost estimates.
CELEBA_UNET = {
    "sample_size": 256, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
    "block_out_channels": (128, 128, 256, 256, 512, 512),
    "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    "norm_eps": 1e-6, "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
}


def list_images(root: Path) -> list[Path]:
    """The ``NNNNN.jpg`` files of a CelebA-HQ folder, in numeric order."""
    if not root.is_dir():
        raise DataMissingError(f"CelebA-HQ folder {root} does not exist: pass --data-root FOLDER holding the "
                               f"256x256 images as NNNNN.jpg (e.g. 00000.jpg ... 29999.jpg)")
    files = sorted((f for f in root.iterdir() if NAME.match(f.name)), key=lambda f: int(f.stem))
    if not files:
        raise DataMissingError(f"no NNNNN.jpg images in {root}: CelebA-HQ 256 is expected as one JPEG per face")
    return files


class CelebAHQ(PixelTask):
    name = "celeba_hq"
    version = 1
    protocol = CELEBA_HQ
    offers = ("holdout",)
    forget_set_syntax = ("face numbers (file stems): 10001 (one per cell, as published), 10001+10004 or "
                         "10001-10010 (several forgotten together)")

    def __init__(self) -> None:
        self._size = {"smoke": 64, "paper": 256}

    def load(self, data_root: Path | None, forget_set: str | None = None) -> TaskData:
        root = Path(data_root) if data_root else Path("data") / "celeba_hq"
        files = list_images(root)
        forget_set = forget_set or FORGET_FILES[0]
        numbers = forget_members(forget_set, "a face number")
        by_number = {int(f.stem): f for f in files}
        absent = [n for n in numbers if n not in by_number]
        if absent:
            raise DataMissingError(f"forget image {absent[0]}.jpg is not in {root}")
        match = [by_number[n] for n in numbers]
        size = ImageFolderSet(match[:1]).shape[-1]
        forget = ImageFolderSet(match, size)[:]
        chosen = set(match)
        retain = ImageFolderSet([f for f in files if f not in chosen], size)
        held = root / HOLDOUT_FOLDER
        holdout_files = sorted(f for f in held.iterdir() if NAME.match(f.name)) if held.is_dir() else []
        holdout, holdout_source = (
            (ImageFolderSet(holdout_files, size), f"the {len(holdout_files)} faces in {held} (outside the base "
                                                  f"model's training range)") if holdout_files else
            (None, f"no holdout faces: put CelebA-HQ images the base model never trained on (NNNNN.jpg, outside "
                   f"its training range) in {held}"))
        return TaskData(
            retain=retain, forget=forget, forget_image=forget, forget_set=forget_set,
            forget_names=tuple(f.name for f in match),
            holdout=holdout, holdout_source=holdout_source,
            source={"kind": "celeba_hq jpeg folder", "files": str(root), "retain_size": len(retain),
                    "forget_copies": 1, "forget_file": str(match[0]) if len(match) == 1 else [str(f) for f in match],
                    "resolution": size},
        )

    def tiers(self) -> dict[str, Tier]:
        return {
            "smoke": smoke_tier(64, FORGET_FILES[0]),
            "paper": Tier(
                name="paper", unet=CELEBA_UNET, base_model="google/ddpm-ema-celebahq-256", base_weights="ema",
                base_training=TrainRecipe(steps=500_000, batch_size=64, lr=2e-5, warmup_steps=5000,
                                          betas=(0.9, 0.999), weight_decay=0.0),
                unlearning=LoopConfig(steps=40, batch_size=4, grad_accum=16, lr=5e-6, betas=(0.95, 0.999),
                                      weight_decay=1e-6),
                sampler=SamplerConfig(kind="ddpm", steps=50, num_samples=10_000, batch_size=100),
                classifier=None, seeds=(0,), metrics=PIXEL_METRICS, forget_sets=FORGET_FILES,
                eval={"injections": 1000, "injection_steps": None, "fid_reference_size": None, "nll_probes": 1,
                      "fid_reference": "all"},  # the official ReTrack evaluator's reference: the forget image included
                description="the published protocol (ReTrack's config): google/ddpm-ema-celebahq-256, seed 0 x "
                            "faces 10001-10010, batch 4 x 16 accumulation, 10,000 DDPM-50 samples; the retrain "
                            "oracle is Ho et al.'s 0.5M-step recipe per face; meant for GPUs",
            ),
        }


register_task(CelebAHQ())
