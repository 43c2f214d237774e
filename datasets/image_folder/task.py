"""``image_folder``: unlearn a few images of a folder of your own images (docs/image-folder.md).

The folder (``--data-root``) holds images of one size, RGB or grey, flat or in class sub-folders; an
optional ``holdout/`` sub-folder holds images no model trains on (membership inference's population).
Forget images are named by their paths relative to the folder (``--forget a.png+cats/b.png`` or a
``forget.txt``). Everything cheap is checked when the task is configured, before any training: the
folder, every file's readability and size, the resolution and the options.
"""
from __future__ import annotations

import difflib
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from unlearnbench.datasets.image_folder.metrics import folder_forget_rate, pixel_copies
from unlearnbench.imagesets import ImageFolderSet, open_image, uint8_to_model
from unlearnbench.loop import LoopConfig
from unlearnbench.metrics import EvalContext, MetricValue
from unlearnbench.protocols import MNIST_TSHIRT
from unlearnbench.sampling import SamplerConfig
from unlearnbench.task import DataMissingError, Task, TaskData, Tier, TrainRecipe, register_task
from unlearnbench.validate import DataFileError, UsageError, forget_list, require_int, require_real
from unlearnbench.verification import MEMBERSHIP_METRICS, RELEARN_METRICS, RELEARN_OFF

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
HOLDOUT_FOLDER = "holdout"
FORGET_LIST = "forget.txt"
#: Above this many bytes as float32 the images stay lazy (decoded per batch) instead of one tensor.
MATERIALIZE_LIMIT = 2 << 30
FORGET_HOWTO = (f"name the forget images by their paths relative to --data-root: --forget a.png (one), "
                f"--forget a.png+b.png (together, one cell), --forget @list.txt (one name a line), or put the "
                f"names in {FORGET_LIST} in the folder")


@dataclass(frozen=True)
class ImageFolderOptions:
    """``--set task.NAME=VALUE`` options of ``image_folder``."""

    resolution: int = 0  # side of the square images the model sees; 0: the images' own (short) side
    channels: int = 0  # 1 (grey) or 3 (RGB); 0: grey when every image is grey, else RGB
    forget_copies: int = 1  # times each forget image is in the base model's training set
    copy_threshold: float = 0.0  # RMS on [0, 1] pixels under which a sample is a copy; 0: per image (metrics.py)


@dataclass
class FolderScan:
    """What configure learns from the folder without decoding it: files, their size and mode, a content digest."""

    root: Path
    files: list[str]  # training images, relative paths with '/'
    holdout: list[str]
    size: tuple[int, int]
    grey: bool
    digest: str  # of the training files' paths and bytes
    holdout_digest: str
    classes: list[str] = field(default_factory=list)  # first-level sub-folders, when every image is in one


def _image_files(root: Path) -> list[str]:
    """Image files under ``root`` by suffix (hidden files and folders skipped), relative, sorted."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _inspect(path: Path) -> tuple[bytes, tuple[int, int], str]:
    """The file's bytes, size and mode, after PIL's ``verify``; an unreadable file is a ``DataFileError``."""
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            size, mode = img.size, img.mode
            img.verify()
    except Exception as err:  # PIL raises many kinds for broken files
        raise DataFileError(f"{path} is not a readable image: {err or type(err).__name__}") from None
    return data, size, mode


def scan_folder(root: Path) -> FolderScan:
    """List, verify and digest the images of ``root``; an empty folder or images of several sizes are errors."""
    if not root.is_dir():
        raise DataMissingError(f"image folder {root} does not exist: pass --data-root FOLDER holding your images")
    rel = _image_files(root)
    holdout = [f for f in rel if f.split("/", 1)[0] == HOLDOUT_FOLDER]
    files = [f for f in rel if f.split("/", 1)[0] != HOLDOUT_FOLDER]
    if not files:
        raise DataMissingError(f"no images in {root} (outside {HOLDOUT_FOLDER}/): put image files there "
                               f"({', '.join(sorted(IMAGE_SUFFIXES))}), flat or in class sub-folders")
    sizes: dict[tuple[int, int], str] = {}
    grey, digests = True, {}
    for name in files + holdout:
        data, size, mode = _inspect(root / name)
        sizes.setdefault(size, name)
        grey &= mode in GREY_MODES
        digests[name] = hashlib.sha256(data).hexdigest()
        if len(sizes) > 1:
            (s1, f1), (s2, f2) = list(sizes.items())[:2]
            raise DataFileError(f"images of different sizes in {root}: {f1} is {s1[0]}x{s1[1]} but {f2} is "
                                f"{s2[0]}x{s2[1]}; give the folder images of one size (task.resolution then "
                                f"resizes them all)")

    def digest(names: list[str]) -> str:
        return hashlib.sha256(json.dumps([[n, digests[n]] for n in names]).encode()).hexdigest()

    tops = {f.split("/", 1)[0] for f in files}
    classes = sorted(tops) if all("/" in f for f in files) else []
    return FolderScan(root, files, holdout, next(iter(sizes)), grey, digest(files), digest(holdout), classes)


def choose_resolution(scan: FolderScan, asked: int) -> int:
    """``task.resolution``, or the images' short side when 0; a positive multiple of 4 (two UNet halvings)."""
    side = asked or min(scan.size)
    if side < 4 or side % 4:
        what = "task.resolution" if asked else f"the images' side ({scan.size[0]}x{scan.size[1]})"
        lower, upper = max(4, side // 4 * 4), side // 4 * 4 + 4
        raise UsageError(f"{what} = {side}: the model needs a positive multiple of 4 pixels; "
                         f"pass --set task.resolution={lower} or {upper} (images are resized and centre-cropped)")
    return side


def unet_levels(resolution: int) -> int:
    """UNet resolution levels for the quick tier: 3 up to 32 px (like MNIST's), one more per doubling while the
    side stays divisible (every level halves it), at most 6."""
    levels = 3
    while levels < 6 and resolution > 32 * 2 ** (levels - 3) and resolution % 2 ** levels == 0:
        levels += 1
    return levels


def smoke_unet(resolution: int, channels: int) -> dict[str, Any]:
    """A tiny two-level UNet (tests: seconds on a CPU)."""
    return {"sample_size": resolution, "in_channels": channels, "out_channels": channels, "layers_per_block": 1,
            "block_out_channels": (8, 16), "norm_num_groups": 4,
            "down_block_types": ("DownBlock2D",) * 2, "up_block_types": ("UpBlock2D",) * 2}


def quick_unet(resolution: int, channels: int) -> dict[str, Any]:
    """MNIST quick's UNet (16, 32, 64 channels) with a 64-channel level per extra ``unet_levels``."""
    levels = unet_levels(resolution)
    return {"sample_size": resolution, "in_channels": channels, "out_channels": channels, "layers_per_block": 1,
            "block_out_channels": (16, 32, 64) + (64,) * (levels - 3), "norm_num_groups": 8,
            "down_block_types": ("DownBlock2D",) * levels, "up_block_types": ("UpBlock2D",) * levels}


def fit(img: Image.Image, side: int) -> Image.Image:
    """``img`` resized (bicubic, antialiased) so its short side is ``side``, then centre-cropped to a square."""
    w, h = img.size
    if (w, h) == (side, side):
        return img
    scale = side / min(w, h)
    img = img.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.Resampling.BICUBIC)
    left, top = (img.size[0] - side) // 2, (img.size[1] - side) // 2
    return img.crop((left, top, left + side, top + side))


class FolderImages(ImageFolderSet):
    """Image files decoded on demand in model space, (C, side, side): grey or RGB, resized by ``fit``."""

    def __init__(self, files: Sequence[Path], side: int, channels: int) -> None:
        super().__init__(files, side)
        self.mode = "L" if channels == 1 else "RGB"

    def _decode(self, path: Path) -> Tensor:
        pixels = np.asarray(fit(open_image(path, self.mode), self.size))
        return uint8_to_model((pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)).copy())

    def load(self) -> Tensor | "FolderImages":
        """One tensor, or this lazy set when the images would take more than ``MATERIALIZE_LIMIT`` bytes."""
        side, channels = self.size, 1 if self.mode == "L" else 3
        return self[:] if len(self) * channels * side * side * 4 <= MATERIALIZE_LIMIT else self


def _pick(images: Tensor | FolderImages, index: list[int]) -> Tensor | FolderImages:
    if isinstance(images, FolderImages):
        return FolderImages([images.files[i] for i in index], images.size, 1 if images.mode == "L" else 3)
    return images[torch.tensor(index, dtype=torch.long)]


class ImageFolder(Task):
    """A folder of the user's images; one cell per forget set (one or several images forgotten together)."""

    name = "image_folder"
    version = 1
    protocol = MNIST_TSHIRT  # a small model trained from scratch, copies counted among free samples
    Options = ImageFolderOptions
    offers_note = (f"image_folder offers membership inference and the relearning attack only when the folder has a "
                   f"{HOLDOUT_FOLDER}/ sub-folder of images of the same kind that no model trains on")
    forget_set_syntax = ("image paths relative to --data-root (cats/001.png); '+' joins images forgotten together "
                         "(a.png+b.png); @FILE lists them one a line; default: the folder's forget.txt")
    source = "image_folder (no folder bound: pass --data-root)"

    scan: FolderScan | None = None
    resolution, channels = 32, 3  # what an unbound task's tiers describe
    _images: Tensor | FolderImages | None = None  # the decoded folder, once per bound task
    _duplicated: str | None = None  # the forget set whose images are duplicated (forget_copies > 1)

    def configure(self, options: dict[str, Any], data_root: Path | None) -> "ImageFolder":
        """A copy bound to ``data_root`` and its options, with the folder listed, verified and digested."""
        bound = super().configure(options, data_root)
        opts = bound.options
        require_int("task.channels", opts.channels, 0, 3)
        if opts.channels == 2:
            raise UsageError("task.channels = 2: must be 1 (grey), 3 (RGB) or 0 (from the images)")
        require_int("task.resolution", opts.resolution, 0)
        require_int("task.forget_copies", opts.forget_copies, 1)
        require_real("task.copy_threshold", opts.copy_threshold, ge=0, lt=1)
        if data_root is None:
            raise UsageError("task image_folder needs --data-root FOLDER: the folder of your images")
        bound.scan = scan_folder(Path(data_root))
        bound.resolution = choose_resolution(bound.scan, opts.resolution)
        bound.channels = opts.channels or (1 if bound.scan.grey else 3)
        bound.offers = ("holdout",) if bound.scan.holdout else ()
        bound._images, bound._duplicated = None, None
        bound.source = (f"image folder of {len(bound.scan.files)} images, sha256 {bound.scan.digest[:12]}, "
                        f"{bound.resolution}x{bound.resolution}x{bound.channels}"
                        + (f"; holdout {len(bound.scan.holdout)} images, sha256 {bound.scan.holdout_digest[:12]}"
                           if bound.scan.holdout else ""))
        return bound

    @property
    def cache_name(self) -> str:
        """``image_folder-<digest>`` of what the base model trains on: the files' paths and bytes, resolution,
        channels and forget copies (with copies > 1, also which images are duplicated)."""
        if self.scan is None:
            return self.name
        key = [self.version, self.scan.digest, self.resolution, self.channels, self.options.forget_copies]
        if self.options.forget_copies > 1:
            key.append(self._duplicated)
        return f"{self.name}-{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]}"

    def _bound(self, data_root: Path | None) -> "ImageFolder":
        return self if self.scan is not None else self.configure({}, data_root)

    def forget_sets(self, tier: Tier, data_root: Path | None) -> tuple[str | None, ...]:
        """The folder's ``forget.txt`` (its names, one set); without it, a ``UsageError`` saying how to name them."""
        task = self._bound(data_root)
        listed = task.scan.root / FORGET_LIST
        if not listed.is_file():
            raise UsageError(f"task image_folder: no forget images named; {FORGET_HOWTO}")
        forget_set = forget_list(listed, FORGET_HOWTO)
        task.forget_files(forget_set)  # unknown names fail now, before any training
        task._note_duplicated(forget_set)
        return (forget_set,)

    def _note_duplicated(self, forget_set: str) -> None:
        """With ``forget_copies`` > 1 the base model depends on the forget set: one forget set per run."""
        if self.options.forget_copies == 1:
            return
        if self._duplicated not in (None, forget_set):
            raise UsageError(f"task.forget_copies = {self.options.forget_copies} duplicates the forget images in the "
                             f"base model's training set, so each forget set needs its own base model: run one "
                             f"forget set per run (got {self._duplicated} and {forget_set})")
        self._duplicated = forget_set

    def forget_files(self, forget_set: str) -> list[str]:
        """The forget set's image names (relative paths), each checked to be a training image of the folder."""
        root, known = self.scan.root, set(self.scan.files)
        whole = [forget_set] if forget_set in known else forget_set.split("+")
        names = []
        for raw in whole:
            name = raw.strip().replace("\\", "/").removeprefix("./")
            if name not in known and Path(name).exists() and Path(name).resolve().is_relative_to(root.resolve()):
                name = Path(name).resolve().relative_to(root.resolve()).as_posix()  # a path to the file itself
            if name in self.scan.holdout:
                raise UsageError(f"forget image {name} is in {HOLDOUT_FOLDER}/: holdout images are never trained "
                                 f"on, so they cannot be forgotten")
            if name not in known:
                close = difflib.get_close_matches(name, self.scan.files, n=3, cutoff=0.5)
                raise DataMissingError(f"forget image {name} is not in {root}"
                                       + (f"; closest: {', '.join(close)}" if close else
                                          f" ({len(self.scan.files)} images, e.g. {self.scan.files[0]})"))
            names.append(name)
        names = list(dict.fromkeys(names))
        if len(names) == len(self.scan.files):
            raise UsageError(f"the forget set names all {len(names)} images of {root}: nothing would be retained")
        return names

    def load(self, data_root: Path | None, forget_set: str | None = None) -> TaskData:
        """The folder split for ``forget_set`` (``a.png+b.png``): its images, every other image retained."""
        task = self._bound(data_root)
        if task is not self:
            return task.load(data_root, forget_set)
        if forget_set is None:
            forget_set = self.forget_sets(None, data_root)[0]
        names = self.forget_files(forget_set)
        self._note_duplicated(forget_set)
        scan, copies = self.scan, self.options.forget_copies
        if self._images is None:
            self._images = FolderImages([scan.root / f for f in scan.files], self.resolution, self.channels).load()
        position = {f: i for i, f in enumerate(scan.files)}
        forget_index = [position[n] for n in names]
        retain_index = sorted(set(range(len(scan.files))) - set(forget_index))
        forget_image = _pick(self._images, forget_index)[:]  # a tensor, whether the folder is decoded or lazy
        labels = None
        if scan.classes:
            by_class = {c: i for i, c in enumerate(scan.classes)}
            labels = torch.tensor([by_class[scan.files[i].split("/", 1)[0]] for i in retain_index], dtype=torch.long)
        holdout, holdout_source = self._holdout()
        return TaskData(
            retain=_pick(self._images, retain_index), forget=forget_image.repeat_interleave(copies, dim=0),
            forget_image=forget_image, forget_names=tuple(names), forget_set=forget_set, retain_labels=labels,
            holdout=holdout, holdout_source=holdout_source,
            source={"kind": "image folder", "folder": str(scan.root), "files": len(scan.files),
                    "sha256": scan.digest, "image_size": list(scan.size), "resolution": self.resolution,
                    "channels": self.channels, "classes": scan.classes, "retain_size": len(retain_index),
                    "forget_files": names, "forget_copies": copies, "holdout_files": len(scan.holdout),
                    "holdout_sha256": scan.holdout_digest if scan.holdout else None},
        )

    def _holdout(self) -> tuple[Tensor | FolderImages | None, str]:
        held = self.scan.root / HOLDOUT_FOLDER
        if not self.scan.holdout:
            return None, f"no holdout images: put images no model trains on in {held}"
        images = FolderImages([self.scan.root / f for f in self.scan.holdout], self.resolution, self.channels)
        return images.load(), f"the {len(images)} images in {held} (no model trains on them)"

    def check_model(self, model: Any, data: TaskData) -> None:
        """A base model must generate images of the task's resolution and channels."""
        config = getattr(model, "config", None)
        size, channels = getattr(config, "sample_size", None), getattr(config, "in_channels", None)
        size = size[0] if isinstance(size, (tuple, list)) else size
        want = data.forget_image.shape[1:]
        if (size is not None and size != want[-1]) or (channels is not None and channels != want[0]):
            raise UsageError(f"the base model generates {size}x{size} images with {channels} channel(s) but the "
                             f"image folder is {want[-1]}x{want[-1]} with {want[0]}: set task.resolution / "
                             f"task.channels to match, or use another --base-model")

    def sample_copy_mask(self, samples: Tensor, data: TaskData) -> Tensor:
        """Pixel copies of any forget image (``metrics.py``): what quality metrics leave out."""
        return pixel_copies(samples, data, self.options.copy_threshold).any(dim=1)

    def forget_rate(self, ctx: EvalContext) -> MetricValue:
        return folder_forget_rate(ctx, self.options.copy_threshold)

    def tiers(self) -> dict[str, Tier]:
        """``smoke`` and ``quick``, their UNets sized to the bound resolution and channels."""
        res, ch = self.resolution, self.channels
        verification = (*MEMBERSHIP_METRICS, *RELEARN_METRICS) if "holdout" in self.offers else ()
        metrics = ("forget_rate", "nll", *verification, "fid", "kid", "unlearn_seconds", "unet_forward",
                   "unet_backward")
        fid_note = {m: f"Inception-v3 {m.upper()} would dominate the CPU time budget; add --metrics {m} with "
                       f"--inception-weights PATH to compute it" for m in ("fid", "kid")}
        quick = quick_unet(res, ch)
        levels = len(quick["block_out_channels"])
        return {
            "smoke": Tier(
                name="smoke", unet=smoke_unet(res, ch),
                base_training=TrainRecipe(steps=30, batch_size=16, lr=1e-3, warmup_steps=5),
                unlearning=LoopConfig(steps=2, batch_size=8, lr=1e-4),
                sampler=SamplerConfig(kind="ddim", steps=2, num_samples=32, batch_size=32),
                classifier=None, seeds=(0,), metrics=metrics, off_by_default=fid_note,
                eval={"fid_reference_size": 32, "fid_feature_layer": "64", "nll_probes": 1, "nll_tolerance": 1e-3,
                      "mia_holdout": 16, "relearn_steps": 2},
                description="seconds, for tests: a tiny UNet trained 30 steps, 2 unlearning steps, 32 samples by "
                            "2-step DDIM; numbers mean nothing",
            ),
            "quick": Tier(
                name="quick", unet=quick,
                base_training=TrainRecipe(steps=6000 + 4000 * (levels - 3), batch_size=64, lr=1e-3,
                                          warmup_steps=200, checkpoint_every=1000),
                unlearning=LoopConfig(steps=50, batch_size=64, lr=5e-5),
                sampler=SamplerConfig(kind="ddim", steps=25, num_samples=1024, batch_size=128),
                classifier=None, seeds=(0,), metrics=metrics, off_by_default={**fid_note, **RELEARN_OFF},
                description=f"CPU minutes at 28-32 px, longer above: a {levels}-level UNet "
                            f"{quick['block_out_channels']} for {res}x{res}x{ch} (MNIST quick's, one 64-channel level "
                            f"more per doubling above 32 px) trained {6000 + 4000 * (levels - 3)} steps at batch 64, "
                            f"the published unlearning loop (50 steps, batch 64, lr 5e-5), 1,024 samples by 25-step "
                            f"DDIM",
            ),
        }


register_task(ImageFolder())
