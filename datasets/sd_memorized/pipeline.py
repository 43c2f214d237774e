"""Stable Diffusion plumbing for the memorized-prompt task: loading, conditioning, sampling, prompt folders.

One loader serves the real ``CompVis/stable-diffusion-v1-4`` and the tiny pipelines the tests save with
``save_pretrained``: both are diffusers folders (or hub ids) with ``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/`` and ``scheduler/``. Only the UNet is ever trained; VAE and text encoder stay frozen.

A prompt folder (``write_prompt_folder`` / ``read_prompt_folder``) is our own safe format: JSON, PNG and
NPZ, nothing that is unpickled::

    <id>/prompt.json     {"format", "id", "original", "modified", "n_images", "seed", "feature", "k",
                          "memorized_cluster", "cluster_sizes", "cluster_spreads", "reference_image", ...}
    <id>/images/NNNN.png the generated images (RGB)
    <id>/labels.json     {"NNNN.png": 1 if memorized else 0}
    <id>/centroids.npz   "centroids": (k, D) float32, the k-means centroids in the feature space
    <id>/reference.png   the reference memorized image (what SSCD similarity compares with)

The classifier is nearest-centroid in the feature space (what scikit-learn's ``KMeans.predict`` does);
an image is memorized when its nearest centroid is ``memorized_cluster``.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from unlearnbench.io import sha256_file
from unlearnbench.metrics import to_uint8
from unlearnbench.progress import bar
from unlearnbench.task import DataMissingError

FOLDER_FORMAT = "unlearnbench-sd-prompt/1"
#: Raw pixel values in [0, 255], channels last, flattened: the feature of the published ReTrack/SISS k-means
#: classifiers (they call ``predict(255 * image.permute(0, 2, 3, 1).flatten(1))``), so centroids carry over.
PIXELS = "pixels"
#: L2-normalised SSCD descriptors: robust to small shifts; used by ``prepare`` when SSCD weights are given.
SSCD = "sscd"
FEATURES = (PIXELS, SSCD)
PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


# ---------------------------------------------------------------------------------------------- loading


def _pretrained_kwargs() -> dict[str, Any]:
    """``local_files_only`` when the hub is declared offline, so a missing cache fails at once."""
    return {"local_files_only": True} if os.environ.get("HF_HUB_OFFLINE") == "1" else {}


def _load(cls: Any, path: str, subfolder: str, **kwargs: Any) -> Any:
    try:
        return cls.from_pretrained(str(path), subfolder=subfolder, **_pretrained_kwargs(), **kwargs)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"cannot load {subfolder}/ of the Stable Diffusion pipeline {path!r} ({type(err).__name__}: {err}). "
            f"Pass --base-model FOLDER, a diffusers pipeline folder with {', '.join(p + '/' for p in PIPELINE_PARTS)} "
            f"(e.g. a local copy of CompVis/stable-diffusion-v1-4)") from err


@dataclass
class FrozenParts:
    """The frozen components of a pipeline: everything but the UNet."""

    path: str
    vae: Any  # AutoencoderKL
    text_encoder: Any  # CLIPTextModel
    tokenizer: Any  # CLIPTokenizer
    scheduler_config: dict[str, Any]

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)


def load_frozen_parts(path: str, device: torch.device | str = "cpu") -> FrozenParts:
    """VAE, text encoder, tokenizer and scheduler config of the pipeline at ``path`` (folder or hub id)."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    vae = _load(AutoencoderKL, path, "vae").to(device).eval().requires_grad_(False)
    text_encoder = _load(CLIPTextModel, path, "text_encoder").to(device).eval().requires_grad_(False)
    tokenizer = _load(CLIPTokenizer, path, "tokenizer")
    # Latents are not bounded to [−1, 1]: Stable Diffusion's samplers never clip x̂_0 (SD v1.4 ships a PNDM
    # config, which DDPMScheduler would otherwise read with its default clip_sample=True).
    scheduler = _load(DDPMScheduler, path, "scheduler", clip_sample=False)
    return FrozenParts(str(path), vae, text_encoder, tokenizer, dict(scheduler.config))


def load_unet(path: str, device: torch.device | str = "cpu") -> Any:
    """The pipeline's ``UNet2DConditionModel`` (fp32 master weights)."""
    from diffusers import UNet2DConditionModel

    return _load(UNet2DConditionModel, path, "unet").to(device)


def training_scheduler(parts: FrozenParts) -> Any:
    """The DDPM training scheduler of the pipeline (SD v1.4: scaled_linear β 0.00085 → 0.012, T = 1000)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(parts.scheduler_config)


@torch.no_grad()
def encode_prompts(parts: FrozenParts, prompts: list[str]) -> Tensor:
    """CLIP text embeddings (N, 77, D) as the pipeline computes them: padded to the tokenizer's max length."""
    tok = parts.tokenizer
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    device = next(parts.text_encoder.parameters()).device
    return parts.text_encoder(ids.to(device))[0].float().cpu()


@torch.no_grad()
def encode_images(parts: FrozenParts, images: Tensor, batch_size: int = 8) -> Tensor:
    """VAE latents × scaling factor of images in [−1, 1] (N, 3, H, W): the model space of the UNet.

    The posterior mean, not a sample, so the forget and retain sets are deterministic (ReTrack samples it).
    """
    device = next(parts.vae.parameters()).device
    out = [parts.vae.encode(chunk.to(device)).latent_dist.mean.float().cpu() for chunk in images.split(batch_size)]
    return torch.cat(out) * parts.scaling_factor


class ConditionedUNet(torch.nn.Module):
    """A ``UNet2DConditionModel`` with a fixed text condition, so ``model(x_t, t).sample`` is ε_θ(x_t, t, c).

    Every method calls the model as an unconditional one; the condition (the modified prompt's text
    embedding) lives here as a buffer, set per forget set with ``condition_on``.
    """

    def __init__(self, unet: Any, prompt_embeds: Tensor | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("prompt_embeds", torch.zeros(0), persistent=False)
        if prompt_embeds is not None:
            self.condition_on(prompt_embeds)

    def condition_on(self, prompt_embeds: Tensor) -> "ConditionedUNet":
        """Condition on one prompt's embedding, (1, L, D) or (L, D)."""
        embeds = prompt_embeds if prompt_embeds.dim() == 3 else prompt_embeds.unsqueeze(0)
        if embeds.shape[0] != 1:
            raise ValueError(f"expected one prompt embedding, got shape {tuple(prompt_embeds.shape)}")
        self.prompt_embeds = embeds.detach().float().clone().to(self.unet.device)
        return self

    def forward(self, x_t: Tensor, t: Tensor) -> Any:
        if self.prompt_embeds.numel() == 0:
            raise RuntimeError("ConditionedUNet has no text condition: call condition_on(prompt_embeds) first")
        t = t.expand(len(x_t)) if t.dim() == 0 else t
        return self.unet(x_t, t, encoder_hidden_states=self.prompt_embeds.expand(len(x_t), -1, -1))


# --------------------------------------------------------------------------------------------- sampling


def make_pipeline(parts: FrozenParts, unet: Any, sampler_kind: str = "ddpm") -> Any:
    """A ``StableDiffusionPipeline`` around ``unet`` with the pipeline's own β (no safety checker)."""
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline

    schedulers = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}
    if sampler_kind not in schedulers:
        raise ValueError(f"unknown sampler kind {sampler_kind!r}; use one of {sorted(schedulers)}")
    return StableDiffusionPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=unet,
        scheduler=schedulers[sampler_kind].from_config(parts.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


@torch.inference_mode()
def sample_images(parts: FrozenParts, unet: Any, prompt: str, *, n: int, steps: int, guidance: float, seed: int,
                  batch_size: int = 16, sampler_kind: str = "ddpm", progress: bool = True) -> Tensor:
    """``n`` images in [−1, 1] for ``prompt`` with classifier-free guidance, (n, 3, H, W) float32 on CPU.

    Noise comes from CPU generators seeded per batch (as ``unlearnbench.sampling.generate``), so the
    images do not depend on the device's RNG or on earlier batches.
    """
    was_training = unet.training
    unet.eval()
    pipe = make_pipeline(parts, unet, sampler_kind)
    pipe.set_progress_bar_config(disable=True)
    out = []
    try:
        for start in bar(range(0, n, batch_size), "sampling", progress):
            m = min(batch_size, n - start)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
            images = pipe(prompt, num_images_per_prompt=m, num_inference_steps=steps, guidance_scale=guidance,
                          generator=generator, output_type="pt").images
            out.append(images.float().cpu() * 2 - 1)
    finally:
        unet.train(was_training)
    return torch.cat(out).clamp(-1, 1)


# ------------------------------------------------------------------------------------------ classifier


def image_features(images: Tensor, feature: str, sscd_model: Any = None) -> np.ndarray:
    """The k-means feature (N, D) float32 of images in [−1, 1]; see ``PIXELS`` and ``SSCD``."""
    if feature == PIXELS:
        return to_uint8(images).permute(0, 2, 3, 1).flatten(1).numpy().astype(np.float32)
    if feature == SSCD:
        from unlearnbench.sscd import sscd_embed

        if sscd_model is None:
            raise ValueError("the sscd feature needs the SSCD model (--sscd-weights PATH)")
        return np.ascontiguousarray(sscd_embed(sscd_model, to_uint8(images).float() / 127.5 - 1).numpy(),
                                    dtype=np.float32)
    raise ValueError(f"unknown k-means feature {feature!r}; known: {FEATURES}")


def nearest_centroid(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of each row's nearest centroid (squared L2, exact; ties keep the lower index)."""
    if features.shape[1] != centroids.shape[1]:
        raise ValueError(f"features have {features.shape[1]} dimensions, the centroids {centroids.shape[1]} "
                         "(images of another size than the prompt folder's?)")
    _, index = faiss.knn(np.ascontiguousarray(features, dtype=np.float32),
                         np.ascontiguousarray(centroids, dtype=np.float32), 1)
    return index[:, 0].astype(np.int64)


def pairwise_sq_distances(x: np.ndarray) -> np.ndarray:
    """(N, N) squared L2 distances, float64, from explicit differences (the ||a||² + ||b||² − 2ab expansion
    cancels catastrophically for the near-identical copies this is meant to find)."""
    x = np.asarray(x, dtype=np.float32)
    d = np.zeros((len(x), len(x)))
    for i in range(len(x) - 1):
        diff = (x[i + 1 :] - x[i]).astype(np.float64)
        d[i, i + 1 :] = np.einsum("ij,ij->i", diff, diff)
    return d + d.T


def mean_pairwise_sq_distance(x: np.ndarray) -> float:
    """Mean squared L2 distance over the distinct pairs of rows; 0 for fewer than 2 rows."""
    n = len(x)
    return float(pairwise_sq_distances(x).sum() / (n * (n - 1))) if n >= 2 else 0.0


@dataclass
class KMeansSplit:
    """A k-means fit on a prompt's images and which cluster holds the memorized copies."""

    centroids: np.ndarray  # (k, D) float32
    labels: np.ndarray  # (N,) nearest-centroid cluster of each image
    memorized_cluster: int
    sizes: list[int]
    spreads: list[float | None]  # mean pairwise squared distance per cluster; None for fewer than 2 members

    @property
    def memorized(self) -> np.ndarray:
        return self.labels == self.memorized_cluster


def memorized_cluster(features: np.ndarray, labels: np.ndarray, k: int) -> tuple[int, list[int], list[float | None]]:
    """The cluster of near-identical copies: among clusters with at least 2 members, the one whose members
    are closest to each other (smallest mean pairwise squared distance); ties go to the larger cluster,
    then the lower index. A singleton is never chosen: one image is no evidence of copying."""
    sizes = [int((labels == c).sum()) for c in range(k)]
    spreads = [mean_pairwise_sq_distance(features[labels == c]) if sizes[c] >= 2 else None for c in range(k)]
    candidates = [c for c in range(k) if spreads[c] is not None]
    if not candidates:
        raise ValueError(f"no cluster has 2 or more images (sizes {sizes}): generate more images per prompt")
    return min(candidates, key=lambda c: (spreads[c], -sizes[c], c)), sizes, spreads


def kmeans_split(features: np.ndarray, k: int = 2, seed: int = 0, niter: int = 50, nredo: int = 10) -> KMeansSplit:
    """faiss k-means (seeded, best of ``nredo``) and the memorized cluster (``memorized_cluster``).

    Labels are recomputed as nearest centroids of the final centroids, so stored labels and centroids
    always agree.
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    if len(x) < k:
        raise ValueError(f"k-means with k = {k} needs at least {k} images, got {len(x)}")
    km = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=nredo, seed=seed, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=1 << 20)
    km.train(x)
    centroids = np.asarray(km.centroids, dtype=np.float32).reshape(k, -1)
    labels = nearest_centroid(x, centroids)
    mem, sizes, spreads = memorized_cluster(x, labels, k)
    return KMeansSplit(centroids, labels, mem, sizes, spreads)


def medoid(features: np.ndarray) -> int:
    """Row with the smallest summed squared distance to the others (the most typical copy)."""
    return int(np.argmin(pairwise_sq_distances(features).sum(1)))


# ---------------------------------------------------------------------------------------- prompt lists


@dataclass(frozen=True)
class PromptSpec:
    id: str
    original: str
    modified: str


def slug(text: str, max_len: int = 60) -> str:
    """A folder name from a prompt: lower-case ASCII letters and digits joined by underscores."""
    s = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return s[:max_len].rstrip("_") or "prompt"


def read_prompt_list(path: Path) -> list[PromptSpec]:
    """Read a prompt list: JSON lines (``.jsonl``) or CSV with a header, fields ``original``, ``modified``
    and optionally ``id`` (default: a slug of the original prompt). Ids must be unique."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt list {path} does not exist (pass --prompts FILE: .jsonl or .csv with "
                                "fields original,modified[,id])")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        raise ValueError(f"{path}: use a .jsonl or .csv prompt list with fields original,modified[,id]")
    specs = []
    for i, row in enumerate(rows):
        missing = [k for k in ("original", "modified") if not str(row.get(k) or "").strip()]
        if missing:
            raise ValueError(f"{path}, entry {i + 1}: missing {', '.join(missing)}")
        pid = str(row.get("id") or "").strip() or slug(row["original"])
        if slug(pid) != pid:
            raise ValueError(f"{path}, entry {i + 1}: id {pid!r} must be lower-case letters, digits and underscores")
        specs.append(PromptSpec(pid, row["original"].strip(), row["modified"].strip()))
    ids = [s.id for s in specs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{path}: duplicate prompt ids {duplicates}; give each entry a distinct 'id'")
    return specs


# --------------------------------------------------------------------------------------- prompt folders


def _save_png(image: Tensor, path: Path) -> None:
    Image.fromarray(to_uint8(image).permute(1, 2, 0).numpy()).save(path)  # uint8 H x W x 3: RGB


def _load_png(path: Path) -> Tensor:
    """An RGB PNG as [−1, 1] float32 (3, H, W)."""
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1


def write_prompt_folder(out: Path, meta: dict[str, Any], images: Tensor, labels: np.ndarray,
                        centroids: np.ndarray, reference_index: int, source_names: list[str] | None = None) -> Path:
    """Write ``out/<meta["id"]>`` atomically (a temporary folder renamed at the end)."""
    folder = Path(out) / meta["id"]
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{meta['id']}-", dir=folder.parent))
    try:
        (tmp / "images").mkdir()
        names = [f"{i:04d}.png" for i in range(len(images))]
        for name, image in zip(names, images):
            _save_png(image, tmp / "images" / name)
        shutil.copyfile(tmp / "images" / names[reference_index], tmp / "reference.png")
        (tmp / "labels.json").write_text(json.dumps({n: int(v) for n, v in zip(names, labels)}, indent=1))
        np.savez(tmp / "centroids.npz", centroids=np.asarray(centroids, dtype=np.float32))
        full = {"format": FOLDER_FORMAT, **meta, "n_images": len(images),
                "reference_image": f"images/{names[reference_index]}",
                "labels": "1 = memorized (nearest centroid is memorized_cluster), 0 = not memorized"}
        if source_names is not None:
            full["source_images"] = dict(zip(names, source_names))
        (tmp / "prompt.json").write_text(json.dumps(full, indent=1, ensure_ascii=False))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


@dataclass
class PromptFolder:
    """A prompt folder read back: images in [−1, 1], labels and the nearest-centroid classifier."""

    path: Path
    meta: dict[str, Any]
    images: Tensor | None  # (N, 3, H, W), [−1, 1]; None once encoded (a paper-tier folder is ~400 MB as floats)
    labels: np.ndarray  # (N,) 1 = memorized
    centroids: np.ndarray  # (k, D) float32
    reference: Tensor  # (1, 3, H, W), [−1, 1]

    @property
    def memorized_cluster(self) -> int:
        return int(self.meta["memorized_cluster"])

    def is_memorized(self, images: Tensor, sscd_model: Any = None) -> np.ndarray:
        """True where the prompt's classifier calls an image (in [−1, 1]) memorized."""
        features = image_features(images, self.meta["feature"], sscd_model)
        return nearest_centroid(features, self.centroids) == self.memorized_cluster


PROMPT_FILES = ("prompt.json", "labels.json", "centroids.npz", "reference.png", "images")


def read_prompt_folder(folder: Path) -> PromptFolder:
    """Read and validate a prompt folder; missing or inconsistent files are errors naming them."""
    folder = Path(folder)
    missing = [name for name in PROMPT_FILES if not (folder / name).exists()]
    if missing:
        raise DataMissingError(
            f"prompt folder {folder} lacks {', '.join(missing)}. Build prompt folders with\n"
            f"  python run_bench.py prepare --task sd_memorized --prompts FILE --data-root {folder.parent}\n"
            f"or convert the published ReTrack/SISS data with\n"
            f"  unlearnbench.datasets.sd_memorized.pipeline.convert_published")
    meta = json.loads((folder / "prompt.json").read_text(encoding="utf-8"))
    if meta.get("format") != FOLDER_FORMAT:
        raise ValueError(f"{folder / 'prompt.json'}: format {meta.get('format')!r}, expected {FOLDER_FORMAT!r}")
    labels_map = json.loads((folder / "labels.json").read_text())
    names = sorted(p.name for p in (folder / "images").glob("*.png"))
    if sorted(labels_map) != names:
        raise ValueError(f"{folder / 'labels.json'} does not list exactly the PNGs in {folder / 'images'}")
    with np.load(folder / "centroids.npz", allow_pickle=False) as npz:
        centroids = np.asarray(npz["centroids"], dtype=np.float32)
    if not 0 <= int(meta["memorized_cluster"]) < len(centroids):
        raise ValueError(f"{folder / 'prompt.json'}: memorized_cluster {meta['memorized_cluster']} is not one of "
                         f"the {len(centroids)} centroids")
    images = torch.stack([_load_png(folder / "images" / n) for n in names])
    return PromptFolder(folder, meta, images, np.array([int(labels_map[n]) for n in names]), centroids,
                        _load_png(folder / "reference.png").unsqueeze(0))


def list_prompt_folders(root: Path) -> list[str]:
    """Ids (sorted) of the prompt folders directly under ``root``."""
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if (p / "prompt.json").is_file()) if root.is_dir() else []


def prepare_prompt_folders(pipeline: str, prompts_file: Path, out: Path, *, n_images: int, steps: int,
                           guidance: float, seed: int, device: torch.device | str, progress: bool = True,
                           sscd_weights: str | None = None, sampler_kind: str = "ddpm", k: int = 2,
                           log: Callable[[str], None] = print) -> list[Path]:
    """Build a prompt folder per entry of ``prompts_file``: ``n_images`` images of the ORIGINAL prompt from
    the base pipeline, split by k-means (``kmeans_split``) on raw pixels (``PIXELS``), or on SSCD
    descriptors when ``sscd_weights`` is given. Existing complete folders are kept."""
    specs = read_prompt_list(prompts_file)
    out = Path(out)
    todo = [s for s in specs if not (out / s.id / "prompt.json").is_file()]
    for s in specs:
        if s not in todo:
            log(f"{s.id}: already prepared in {out / s.id}")
    if todo:
        parts = load_frozen_parts(pipeline, device)
        unet = load_unet(pipeline, device)
        sscd_model, feature, extra = None, PIXELS, {}
        if sscd_weights:
            from unlearnbench.sscd import load_sscd

            sscd_model, feature = load_sscd(sscd_weights, device), SSCD
            extra = {"sscd_weights": str(sscd_weights), "sscd_weights_sha256": sha256_file(Path(sscd_weights))}
        for spec in todo:
            log(f"{spec.id}: generating {n_images} images of {spec.original!r} ...")
            images = sample_images(parts, unet, spec.original, n=n_images, steps=steps, guidance=guidance, seed=seed,
                                   sampler_kind=sampler_kind, progress=progress)
            features = image_features(images, feature, sscd_model)
            split = kmeans_split(features, k=k, seed=seed)
            members = np.flatnonzero(split.memorized)
            reference = int(members[medoid(features[members])])
            meta = {"id": spec.id, "original": spec.original, "modified": spec.modified, "seed": seed,
                    "pipeline": str(pipeline), "sampler": {"kind": sampler_kind, "steps": steps, "guidance": guidance},
                    "feature": feature, "k": k, "memorized_cluster": split.memorized_cluster,
                    "cluster_sizes": split.sizes, "cluster_spreads": split.spreads,
                    "rule": "memorized cluster = the cluster (of 2+ images) with the smallest mean pairwise squared "
                            "feature distance; reference = its medoid", "source": "run_bench.py prepare", **extra}
            path = write_prompt_folder(out, meta, images, split.memorized.astype(np.int64), split.centroids, reference)
            log(f"{spec.id}: {int(split.memorized.sum())} of {n_images} memorized -> {path}")
    return [out / s.id for s in specs]


# ---------------------------------------------------------------------------------- published layout


def _read_published_labels(prompt_dir: Path) -> dict[str, int]:
    """``kmeans_labels.json`` ({image: 0/1}) or ``kmeans_labels.csv`` (columns image,label)."""
    as_json, as_csv = prompt_dir / "kmeans_labels.json", prompt_dir / "kmeans_labels.csv"
    if as_json.is_file():
        return {k: int(v) for k, v in json.loads(as_json.read_text()).items()}
    if as_csv.is_file():
        with as_csv.open(newline="") as f:
            return {row["image"]: int(row["label"]) for row in csv.DictReader(f)}
    raise DataMissingError(f"{prompt_dir} has neither kmeans_labels.json nor kmeans_labels.csv (image,label)")


def convert_published(src: Path, out: Path, *, names: list[str] | None = None,
                      log: Callable[[str], None] = print) -> list[Path]:
    """Convert the published ReTrack/SISS SD data into prompt folders, WITHOUT unpickling anything.

    ``src`` holds ``original_prompts.json`` and ``modified_prompts.json`` ({name: prompt}) and, per name,
    ``<name>/images/*.png``, ``<name>/kmeans_labels.json`` ({image: 1 if memorized}) or
    ``kmeans_labels.csv``, and optionally ``<name>/clustering_info.json`` (``mem_idx``: the reference
    image ``<name>_<mem_idx:03d>.png``) and ``<name>/centroids.npy`` ((2, H·W·3) pixel centroids, row 1
    memorized). The ``kmeans_classifier.joblib`` files are ignored: they are pickles. To keep their exact
    centroids, export them yourself where you trust the file:
    ``np.save("centroids.npy", joblib.load("kmeans_classifier.joblib").cluster_centers_)``. Without
    ``centroids.npy`` the centroids are the per-label means of the pixel feature (the fixed point of
    k-means for those labels) and prompt.json records how many images they classify differently.
    ``names`` selects prompts (default: every prompt of ``original_prompts.json`` that has a folder).
    """
    src, out = Path(src), Path(out)
    prompt_files = {kind: src / f"{kind}_prompts.json" for kind in ("original", "modified")}
    for path in prompt_files.values():
        if not path.is_file():
            raise DataMissingError(f"{path} is missing: the published layout has original_prompts.json and "
                                   "modified_prompts.json ({name: prompt}) next to the prompt folders")
    original, modified = (json.loads(p.read_text(encoding="utf-8")) for p in prompt_files.values())
    if names is None:  # the published prompt lists name a few prompts that have no folder
        names = [n for n in sorted(original) if (src / n).is_dir()]
        for n in sorted(set(original) - set(names)):
            log(f"{n}: no folder {src / n}, skipped")
    written = []
    for name in names:
        prompt_dir = src / name
        labels_map = _read_published_labels(prompt_dir)
        image_names = sorted(labels_map)
        missing = [n for n in image_names if not (prompt_dir / "images" / n).is_file()]
        if missing:
            raise DataMissingError(f"{prompt_dir / 'images'} lacks {len(missing)} labelled images, e.g. {missing[0]}")
        images = torch.stack([_load_png(prompt_dir / "images" / n) for n in image_names])
        labels = np.array([labels_map[n] for n in image_names], dtype=np.int64)
        features = image_features(images, PIXELS)
        centroid_file = prompt_dir / "centroids.npy"
        if centroid_file.is_file():
            centroids = np.load(centroid_file, allow_pickle=False).astype(np.float32)
            how = f"from {centroid_file}"
        else:
            if set(labels.tolist()) != {0, 1}:
                raise ValueError(f"{prompt_dir}: need both memorized (1) and non-memorized (0) labels to "
                                 "recompute centroids; or give centroids.npy")
            centroids = np.stack([features[labels == c].mean(0) for c in (0, 1)]).astype(np.float32)
            how = "recomputed as the per-label means of the pixel feature"
        disagree = int((nearest_centroid(features, centroids) != labels).sum())
        info_file = prompt_dir / "clustering_info.json"
        members = np.flatnonzero(labels == 1)
        if info_file.is_file():
            ref_name = f"{name}_{int(json.loads(info_file.read_text())['mem_idx']):03d}.png"
            if ref_name not in image_names:
                raise DataMissingError(f"{info_file}: reference image {prompt_dir / 'images' / ref_name} not found")
            reference = image_names.index(ref_name)
        else:
            reference = int(members[medoid(features[members])])
        meta = {"id": slug(name), "original": original[name], "modified": modified[name], "seed": None,
                "pipeline": "CompVis/stable-diffusion-v1-4 (published data)", "feature": PIXELS, "k": len(centroids),
                "memorized_cluster": 1, "cluster_sizes": [int((labels == c).sum()) for c in range(len(centroids))],
                "centroids": how, "labels_disagreeing_with_centroids": disagree,
                "source": f"converted from the published layout {prompt_dir}"}
        written.append(write_prompt_folder(out, meta, images, labels, centroids, reference, image_names))
        log(f"{name}: {len(members)} of {len(labels)} memorized -> {written[-1]}"
            + (f" ({disagree} labels disagree with the centroids)" if disagree else ""))
    return written
