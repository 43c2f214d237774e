"""CIFAR-10 and CelebA-HQ end to end on tiny data and models written in the real on-disk formats.

Data: CIFAR-10 python batches (five pickled dicts of uint8 arrays, 10,010 images so that the
published forget indices 10000-10009 exist) and a folder of NNNNN.jpg faces. Models: tiny random
``UNet2DModel``s saved with ``save_pretrained`` in the layouts of the published checkpoints (UNet
at the repo root like ``google/ddpm-cifar10-32``; a pipeline folder with ``unet/``; a training
checkpoint with ``unet_ema/``). Metric weights: random stand-ins in the real file formats.
"""
from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image

from unlearnbench.artifacts import load_base_unet
from unlearnbench.cli import main
from unlearnbench.datasets.pixel.cifar_batches import read_cifar_batch
from unlearnbench.datasets.pixel.injection import denoise_injections, injection_timesteps
from unlearnbench.datasets.pixel.metrics import forget_rate_pixel
from unlearnbench.diffusion import SCHEDULER_CONFIG, NoiseSchedule
from unlearnbench.imagesets import ImageFolderSet
from unlearnbench.metrics import EvalContext
from unlearnbench.registry import METHODS, METRICS, TASKS, load_all
from unlearnbench.results import load_records

sys.path.insert(0, str(Path(__file__).parent))
from standins import write_standin_inception, write_standin_sscd  # noqa: E402

load_all()
PIXEL_METHODS = METHODS.names()


def tiny_unet(size: int, channels: int = 3) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five CIFAR-10 python batches (2,002 random images each), pickled as the real files are."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        n = 2002
        batch = {b"batch_label": f"training batch {i} of 5".encode(), b"labels": rng.integers(0, 10, n).tolist(),
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch, f, protocol=2)
    test = {b"batch_label": b"testing batch 1 of 1", b"labels": rng.integers(0, 10, 64).tolist(),
            b"data": rng.integers(0, 256, (64, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * 64}
    with open(folder / "test_batch", "wb") as f:  # the membership attacks' holdout population
        pickle.dump(test, f, protocol=2)
    return root


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 random 64x64 faces named like CelebA-HQ's (09990.jpg ... 10029.jpg)."""
    root = tmp_path_factory.mktemp("celeba")
    rng = np.random.default_rng(1)
    for i in range(9990, 10030):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / f"{i:05d}.jpg", quality=95)
    (root / "holdout").mkdir()  # faces outside the training range: the membership attacks' population
    for i in range(20000, 20020):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "holdout" / f"{i:05d}.jpg")
    return root


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("standins")
    return {"inception": write_standin_inception(folder), "sscd": write_standin_sscd(folder)}


@pytest.fixture(scope="module")
def root_layout_unet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """google/ddpm-cifar10-32's layout: UNet config and weights at the root, scheduler_config.json beside."""
    folder = tmp_path_factory.mktemp("ddpm-cifar10-32-tiny")
    tiny_unet(32).save_pretrained(folder)
    DDPMScheduler(**SCHEDULER_CONFIG).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipeline_layout_unet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DDPMPipeline folder (model_index.json, unet/, scheduler/), 64x64."""
    folder = tmp_path_factory.mktemp("tiny-celebahq-pipeline")
    DDPMPipeline(unet=tiny_unet(64), scheduler=DDPMScheduler(**SCHEDULER_CONFIG)).save_pretrained(folder)
    return folder


def test_base_models_load_from_every_published_layout(root_layout_unet: Path, pipeline_layout_unet: Path,
                                                       tmp_path: Path) -> None:
    model, info = load_base_unet(str(root_layout_unet))
    assert info["subfolder"] is None and model.config.sample_size == 32
    assert info["scheduler"].endswith("scheduler_config.json")
    model, info = load_base_unet(str(pipeline_layout_unet))
    assert info["subfolder"] == "unet" and info["weights"] == "unknown" and model.config.sample_size == 64
    ckpt = tmp_path / "checkpoint-117500"
    tiny_unet(28, 1).save_pretrained(ckpt / "unet")
    tiny_unet(28, 1).save_pretrained(ckpt / "unet_ema")
    _, info = load_base_unet(str(ckpt))
    assert info["subfolder"] == "unet_ema" and info["weights"] == "ema"  # EMA preferred, and recorded
    assert load_base_unet(str(ckpt), "unet")[1]["weights"] == "raw"
    ema_named = tmp_path / "ddpm-ema-tiny-256"
    tiny_unet(32).save_pretrained(ema_named)
    assert load_base_unet(str(ema_named))[1]["weights"] == "ema"
    with pytest.raises(FileNotFoundError, match="no diffusers UNet"):
        load_base_unet(str(tmp_path))


def test_a_base_model_with_another_noise_schedule_is_refused(tmp_path: Path) -> None:
    tiny_unet(32).save_pretrained(tmp_path)
    DDPMScheduler(**{**SCHEDULER_CONFIG, "beta_schedule": "squaredcos_cap_v2"}).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="beta_schedule"):
        load_base_unet(str(tmp_path))


def test_cifar_batches_are_read_without_running_pickled_code(cifar_root: Path, tmp_path: Path) -> None:
    images, labels = read_cifar_batch(cifar_root / "cifar-10-batches-py" / "data_batch_1")
    assert images.shape == (2002, 3, 32, 32) and images.dtype == np.uint8 and labels.shape == (2002,)
    evil = tmp_path / "data_batch_1"
    evil.write_bytes(pickle.dumps({b"data": os.system, b"labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_cifar_batch(evil)


def test_cifar_forget_sets_are_single_training_images(cifar_root: Path) -> None:
    task = TASKS.get("cifar10")
    assert task.forget_sets(task.tier("paper"), None) == tuple(str(i) for i in range(10000, 10010))
    data = task.load(cifar_root, "10003")
    batch = read_cifar_batch(cifar_root / "cifar-10-batches-py" / "data_batch_5")[0]
    expected = torch.from_numpy(batch[10003 - 4 * 2002]).float() / 127.5 - 1
    assert torch.equal(data.forget_image[0], expected)
    assert len(data.retain) == 10009 and data.forget.shape == (1, 3, 32, 32)
    assert not (data.retain == data.forget_image).flatten(1).all(1).any()


def test_missing_cifar_data_names_the_files_and_the_command(cifar_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("no internet")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(FileNotFoundError, match="data_batch_1 .* data_batch_5(.|\n)*download=True(.|\n)*no internet"):
        TASKS.get("cifar10").load(cifar_root / "nowhere", "10000")


def test_celeba_folder_is_read_lazily(celeba_root: Path) -> None:
    data = TASKS.get("celeba_hq").load(celeba_root, "10001")
    assert isinstance(data.retain, ImageFolderSet) and len(data.retain) == 39
    assert data.source["forget_file"].endswith("10001.jpg") and data.forget.shape == (1, 3, 64, 64)
    batch = data.retain[torch.tensor([0, 5, 5])]
    assert batch.shape == (3, 3, 64, 64) and torch.equal(batch[1], batch[2]) and batch.abs().max() <= 1
    with pytest.raises(FileNotFoundError, match="99999.jpg"):
        TASKS.get("celeba_hq").load(celeba_root, "99999")


def test_injection_timesteps() -> None:
    assert injection_timesteps(250, None) == list(range(250, -1, -1))
    assert injection_timesteps(250, 2) == [250, 0]
    assert injection_timesteps(250, 6) == [250, 200, 150, 100, 50, 0]


class _ExactDenoiser(torch.nn.Module):
    """Predicts the exact noise that separates x_t from ONE image: the model of a perfect copier."""

    def __init__(self, image: torch.Tensor) -> None:
        super().__init__()
        self.image = image
        self.schedule = NoiseSchedule.from_scheduler()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> object:
        t = t.reshape(-1).expand(len(x)).long()
        eps = (x - self.schedule.gamma(t, x) * self.image) / self.schedule.sigma(t, x)
        return type("Out", (), {"sample": eps})()


def test_pixel_forget_rate_counts_a_perfect_copier_and_not_another_image(cifar_root: Path) -> None:
    data = TASKS.get("cifar10").load(cifar_root, "10000")
    ctx = lambda model: EvalContext(sample_sets={"samples": data.forget_image}, forget_image=data.forget_image, retain=data.retain,  # noqa: E731
                                    classifier_dir=None, cache_dir=Path("."), device=torch.device("cpu"),
                                    data=data, model=model, tier_eval={"injections": 6, "injection_steps": 5})
    copier = forget_rate_pixel(ctx(_ExactDenoiser(data.forget_image)))
    assert copier.value == 1.0 and copier.extra["threshold_rms"] > 0
    other = forget_rate_pixel(ctx(_ExactDenoiser(data.retain[:1])))
    assert other.value == 0.0
    outs = denoise_injections(_ExactDenoiser(data.forget_image), data.forget_image, 3, seed=0, device="cpu", steps=5)
    assert torch.allclose(outs, data.forget_image.expand(3, -1, -1, -1), atol=1e-4)


def _run(task: str, data_root: Path, base: Path, out: Path, standins: dict[str, Path], *extra: str) -> int:
    return main(["run", "--task", task, "--tier", "smoke", "--data-root", str(data_root), "--base-model", str(base),
                 "--out", str(out), "--inception-weights", str(standins["inception"]),
                 "--sscd-weights", str(standins["sscd"]), "--no-progress", *extra])


@pytest.mark.parametrize("task", ["cifar10", "celeba_hq"])
def test_every_method_runs_a_smoke_cell_with_every_metric(task: str, request: pytest.FixtureRequest,
                                                          standins: dict[str, Path], tmp_path: Path) -> None:
    data_root = request.getfixturevalue("cifar_root" if task == "cifar10" else "celeba_root")
    base = request.getfixturevalue("root_layout_unet" if task == "cifar10" else "pipeline_layout_unet")
    assert _run(task, data_root, base, tmp_path, standins) == 0
    records = load_records(tmp_path / "records")
    assert sorted(r["cell"]["method"] for r in records) == sorted(PIXEL_METHODS)
    tier = TASKS.get(task).tier("smoke")
    for r in records:
        assert r["status"] == "ok", r.get("error")
        assert r["cell"]["forget_set"] == tier.forget_sets[0] and r["config"]["forget_set"] == tier.forget_sets[0]
        assert r["base_model"]["path"] == str(base)
        for name in tier.metrics:
            m = r["metrics"][name]
            assert m["available"], (name, m["reason"])
            assert m["higher_is_better"] == METRICS.get(name).higher_is_better and m["implementation"]
            assert m["value"] is not None and np.isfinite(m["value"]), name
        assert "SSCD similarity" in r["metrics"]["forget_rate"]["implementation"]
        assert "64-d feature layer" in r["metrics"]["fid"]["implementation"]
        assert r["metrics"]["forget_rate"]["n_samples"] == tier.eval["injections"]
    oracle = next(r for r in records if METHODS.get(r["cell"]["method"]).role == "oracle")
    assert "retrain-" + tier.forget_sets[0] in oracle["notes"]["oracle"]["location"]  # the oracle of this forget set


def test_missing_weights_are_reported_with_the_flag_that_supplies_them(cifar_root: Path, root_layout_unet: Path,
                                                                        tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no Inception weights in any hub cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and no download
    assert main(["run", "--task", "cifar10", "--tier", "smoke", "--data-root", str(cifar_root), "--base-model",
                 str(root_layout_unet), "--methods", "pretrain", "--out", str(tmp_path), "--no-progress"]) == 0
    metrics = load_records(tmp_path / "records")[0]["metrics"]
    assert not metrics["sscd"]["available"] and "--sscd-weights" in metrics["sscd"]["reason"]
    assert not metrics["forget_rate"]["available"] and "--sscd-weights" in metrics["forget_rate"]["reason"]
    assert metrics["forget_rate_pixel"]["available"]
    for name in ("fid", "inception_score"):
        assert not metrics[name]["available"] and "--inception-weights" in metrics[name]["reason"]


def test_a_base_model_of_the_wrong_size_is_refused(cifar_root: Path, pipeline_layout_unet: Path,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Before any cell runs: one usage error, not a failed record per cell."""
    assert main(["run", "--task", "cifar10", "--tier", "smoke", "--data-root", str(cifar_root), "--base-model",
                 str(pipeline_layout_unet), "--methods", "naive_deletion", "--metrics", "unlearn_seconds",
                 "--out", str(tmp_path), "--no-progress"]) == 2
    assert "generates 64x64 images" in capsys.readouterr().err
    assert not load_records(tmp_path)


def test_a_published_base_model_offline_names_the_flag_to_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    from unlearnbench.artifacts import WeightsMissingError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsMissingError, match="google/ddpm-cifar10-32(.|\n)*--base-model FOLDER"):
        load_base_unet(TASKS.get("cifar10").tier("paper").base_model)
