"""SSCD descriptors on a random TorchScript stand-in, and torch-fidelity end to end on a random Inception stand-in.

No real SSCD or Inception weights are needed: the stand-ins have the real file formats, so loading,
preprocessing and plumbing are exercised; the numbers they give mean nothing.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.standins import write_standin_inception, write_standin_sscd
from unlearnbench.sscd import (COPY_THRESHOLD, IMAGENET_MEAN, IMAGENET_STD, SMALL_EDGE, load_sscd, sscd_embed,
                               sscd_preprocess, sscd_similarity)


@pytest.fixture(scope="module")
def sscd_model(tmp_path_factory: pytest.TempPathFactory) -> torch.jit.ScriptModule:
    return load_sscd(write_standin_sscd(tmp_path_factory.mktemp("sscd"), dim=64))


def _images(n: int, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_load_sscd_loads_the_standin_in_eval_mode(tmp_path: Path) -> None:
    path = write_standin_sscd(tmp_path)
    assert "standin" in path.name
    model = load_sscd(path)
    assert isinstance(model, torch.jit.ScriptModule)
    assert not model.training
    assert model(torch.zeros(1, 3, SMALL_EDGE, SMALL_EDGE)).shape == (1, 512)


def test_standin_is_deterministic(tmp_path: Path) -> None:
    a = load_sscd(write_standin_sscd(tmp_path / "a"))
    b = load_sscd(write_standin_sscd(tmp_path / "b"))
    x = _images(2)
    assert torch.equal(sscd_embed(a, x), sscd_embed(b, x))


def test_missing_weights_name_the_path_and_the_flag(tmp_path: Path) -> None:
    missing = tmp_path / "sscd_disc_mixup.torchscript.pt"
    with pytest.raises(FileNotFoundError) as err:
        load_sscd(missing)
    assert str(missing) in str(err.value)
    assert "--sscd-weights" in str(err.value)
    assert "sscd-copy-detection" in str(err.value)


def test_a_non_torchscript_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-model.pt"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="--sscd-weights"):
        load_sscd(bad)


def test_preprocessing_resizes_the_small_edge_and_normalises() -> None:
    grey = torch.zeros(2, 3, 32, 48)  # 0 in [−1, 1] is 0.5 in [0, 1]
    x = sscd_preprocess(grey)
    assert x.shape == (2, 3, SMALL_EDGE, SMALL_EDGE * 48 // 32)
    want = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), want, atol=1e-6)
    assert sscd_preprocess(torch.zeros(1, 3, 48, 32)).shape == (1, 3, SMALL_EDGE * 48 // 32, SMALL_EDGE)


def test_descriptors_are_unit_norm_float32_on_cpu(sscd_model: torch.jit.ScriptModule) -> None:
    desc = sscd_embed(sscd_model, _images(5), batch_size=2)
    assert desc.shape == (5, 64) and desc.dtype == torch.float32 and desc.device.type == "cpu"
    assert torch.allclose(desc.norm(dim=1), torch.ones(5), atol=1e-5)


def test_identical_images_have_similarity_one(sscd_model: torch.jit.ScriptModule) -> None:
    x = _images(4)
    sim = sscd_similarity(sscd_model, x, x.clone())
    assert sim.shape == (4,)
    assert torch.allclose(sim, torch.ones(4), atol=1e-5)
    assert (sim > COPY_THRESHOLD).all()


def test_one_image_is_broadcast_against_many(sscd_model: torch.jit.ScriptModule) -> None:
    x = _images(3)
    sim = sscd_similarity(sscd_model, x, x[1:2])
    assert sim.shape == (3,)
    assert sim[1] == pytest.approx(1.0, abs=1e-5)
    desc = sscd_embed(sscd_model, x)
    assert torch.allclose(sim, desc @ desc[1], atol=1e-6)
    with pytest.raises(ValueError, match="pair"):
        sscd_similarity(sscd_model, x, x[:2])


def test_grayscale_is_repeated_to_three_channels(sscd_model: torch.jit.ScriptModule) -> None:
    grey = _images(2, channels=1, size=28)
    desc = sscd_embed(sscd_model, grey)
    assert desc.shape == (2, 64)
    assert torch.allclose(desc, sscd_embed(sscd_model, grey.expand(-1, 3, -1, -1)), atol=1e-6)


class _Uint8Images(torch.utils.data.Dataset):
    """uint8 (3, H, W) tensors, the input torch-fidelity's Inception extractor expects."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def test_torch_fidelity_fid_and_is_run_on_the_inception_standin(tmp_path: Path) -> None:
    """The stand-in loads as ``feature_extractor_weights_path`` and FID and IS come out finite.

    FID reads the 64-d pool layer: on the default 2048-d layer torch-fidelity's ``np.linalg.eigvals`` of a
    2048×2048 matrix alone takes ~9 s on two cores. IS still runs the whole network (``logits_unbiased``).
    """
    import torch_fidelity

    weights = write_standin_inception(tmp_path)
    assert "standin" in weights.name
    state = torch.load(weights, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())

    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (6, 3, 32, 32), generator=gen, dtype=torch.uint8)
    b = torch.randint(0, 256, (6, 3, 32, 32), generator=gen, dtype=torch.uint8)
    out = torch_fidelity.calculate_metrics(
        input1=_Uint8Images(a), input2=_Uint8Images(b), feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights), feature_layer_fid="64", fid=True, isc=True, isc_splits=2,
        cuda=False, cache=False, save_cpu_ram=True, verbose=False)
    for key in ("frechet_inception_distance", "inception_score_mean", "inception_score_std"):
        assert torch.isfinite(torch.tensor(out[key])), (key, out[key])
    assert out["inception_score_mean"] >= 1.0 - 1e-6
