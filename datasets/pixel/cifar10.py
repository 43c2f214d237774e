"""CIFAR-10 (ReTrack/SISS protocol): forget ONE training image per run, indices 10000-10009.

Data: torchvision's python batches (``cifar-10-batches-py/data_batch_1..5`` under
``--data-root``, or the batch files directly in it), downloaded through torchvision when online.
Base model: the DDPM of Ho et al. as ``google/ddpm-cifar10-32`` (EMA weights, UNet at the repo root).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unlearnbench.datasets.pixel.cifar_batches import read_cifar_batch
from unlearnbench.imagesets import uint8_to_model
from unlearnbench.loop import LoopConfig
from unlearnbench.datasets.pixel.task import PIXEL_METRICS, PixelTask, forget_members, smoke_tier
from unlearnbench.protocols import CIFAR10
from unlearnbench.sampling import SamplerConfig
from unlearnbench.task import DataMissingError, TaskData, Tier, TrainRecipe, register_task
from unlearnbench.validate import UsageError

BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"  # the test split: membership inference's holdout population
FORGET_INDICES = tuple(str(i) for i in range(10000, 10010))

#: google/ddpm-cifar10-32's UNet (Ho et al. 2020, 35.7M parameters); used to retrain the oracle
#: and to estimate costs; the published weights themselves are loaded from the hub or a folder.
CIFAR_UNET = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
    "block_out_channels": (128, 256, 256, 256),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "norm_eps": 1e-6, "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "dropout": 0.1,
}


def find_batches(root: Path) -> list[Path]:
    """The five training batch files under ``root`` (torchvision layout or flat)."""
    for folder in (root / "cifar-10-batches-py", root):
        files = [folder / name for name in BATCHES]
        if all(f.exists() for f in files):
            return files
    raise DataMissingError(
        f"CIFAR-10 python batches not found under {root}: need cifar-10-batches-py/data_batch_1 ... data_batch_5 "
        f"(or those files directly in {root}). Get them online with\n"
        f"  python -c \"import torchvision; torchvision.datasets.CIFAR10('{root}', train=True, download=True)\""
    )


class Cifar10(PixelTask):
    name = "cifar10"
    version = 1
    protocol = CIFAR10
    offers = ("holdout",)
    forget_set_syntax = ("training indices: 10000 (one per cell, as published), 10000+10003 or 10000-10009 "
                         "(several forgotten together)")

    def load(self, data_root: Path | None, forget_set: str | None = None) -> TaskData:
        root = Path(data_root) if data_root else Path("data")
        try:
            files = find_batches(root)
        except DataMissingError as missing:
            try:
                import torchvision

                torchvision.datasets.CIFAR10(str(root), train=True, download=True)
            except Exception as err:  # offline: say what is missing, not only the socket error
                raise DataMissingError(f"{missing}\n(downloading into {root} failed: {type(err).__name__}: {err})") from None
            files = find_batches(root)
        parts = [read_cifar_batch(f) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        forget_set = forget_set or FORGET_INDICES[0]
        indices = forget_members(forget_set, "a training index")
        outside = [i for i in indices if not 0 <= i < len(images)]
        if outside:
            raise UsageError(f"forget index {outside[0]} is outside the {len(images)} CIFAR-10 training images")
        keep = np.ones(len(images), dtype=bool)
        keep[indices] = False
        forget = uint8_to_model(images[indices])
        test = files[0].parent / TEST_BATCH
        holdout, holdout_source = (
            (uint8_to_model(read_cifar_batch(test)[0]), f"the 10,000 images of the CIFAR-10 test split ({test})")
            if test.exists() else
            (None, f"the CIFAR-10 test split ({test}, the holdout population) is missing: get it with\n  python -c "
                   f"\"import torchvision; torchvision.datasets.CIFAR10('{root}', train=False, download=True)\""))
        one = len(indices) == 1
        return TaskData(
            retain=uint8_to_model(images[keep]), forget=forget, forget_image=forget,
            retain_labels=torch.from_numpy(labels[keep]), forget_set=forget_set,
            forget_names=tuple(map(str, indices)), holdout=holdout, holdout_source=holdout_source,
            source={"kind": "cifar10 python batches", "files": [str(f) for f in files], "retain_size": int(keep.sum()),
                    "forget_copies": 1, "forget_index": indices[0] if one else indices,
                    "forget_label": int(labels[indices[0]]) if one else [int(labels[i]) for i in indices]},
        )

    def tiers(self) -> dict[str, Tier]:
        return {
            "smoke": smoke_tier(32, FORGET_INDICES[0]),
            "paper": Tier(
                name="paper", unet=CIFAR_UNET, base_model="google/ddpm-cifar10-32", base_weights="ema",
                base_training=TrainRecipe(steps=800_000, batch_size=128, lr=2e-4, warmup_steps=5000,
                                          betas=(0.9, 0.999), weight_decay=0.0),
                unlearning=LoopConfig(steps=60, batch_size=128, lr=2e-5, betas=(0.95, 0.999), weight_decay=1e-6),
                sampler=SamplerConfig(kind="ddpm", steps=1000, num_samples=10_000, batch_size=500),
                classifier=None, seeds=(0,), metrics=PIXEL_METRICS, forget_sets=FORGET_INDICES,
                # SalUn and Selective Amnesia published CIFAR-10 DDPM configs (class forgetting): Adam lr 1e-4 at
                # batch 128, clip 1.0, as this tier; their 500 / 20,000 iterations are not kept (docs/methods.md)
                method_overrides={"salun": {"lr": 1e-4}, "selective_amnesia": {"lr": 1e-4}},
                eval={"injections": 1000, "injection_steps": None, "fid_reference_size": None, "nll_probes": 1,
                      "fid_reference": "all"},  # the official ReTrack evaluator's reference: the forget image included
                description="the published protocol (ReTrack's config): google/ddpm-cifar10-32, seed 0 x forget "
                            "images 10000-10009, 10,000 DDPM-1000 samples; the retrain oracle is Ho et al.'s "
                            "800k-step recipe per forget image; meant for GPUs",
            ),
        }


register_task(Cifar10())
