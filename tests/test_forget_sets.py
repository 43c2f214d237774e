"""Forget sets of several images (``--forget``, ``+``), task options (``--set task.NAME``) and their records."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearnbench.cli import main, parse_forget
from unlearnbench.datasets.mnist_tshirt.metrics import tshirt_frequency
from unlearnbench.datasets.pixel.task import forget_members
from unlearnbench.metrics import EvalContext
from unlearnbench.paths import file_safe
from unlearnbench.registry import TASKS
from unlearnbench.results import record_name
from unlearnbench.validate import UsageError


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-10 python batches of random images, 10,010 so that the published indices 10000-10009 exist."""
    folder = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(1, 6):
        batch = {b"labels": rng.integers(0, 10, 2002).tolist(),
                 b"data": rng.integers(0, 256, (2002, 3072), dtype=np.uint8)}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    return folder.parent


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]


def test_forget_members_reads_single_joined_and_ranged_sets() -> None:
    assert forget_members("10000", "an index") == [10000]
    assert forget_members("10000+10003", "an index") == [10000, 10003]
    assert forget_members("10000-10002+10005", "an index") == [10000, 10001, 10002, 10005]
    for bad in ("abc", "10002-10000", "10000+10000", "10000+"):
        with pytest.raises(UsageError):
            forget_members(bad, "an index")


def test_parse_forget_splits_cells_and_reads_list_files(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("# the three to forget\na.png\n\nsub/b.png\nc.png\n")
    assert parse_forget("x,y+z") == ["x", "y+z"]
    assert parse_forget(f"@{listing},x") == ["a.png+sub/b.png+c.png", "x"]
    assert parse_forget(None) is None
    for bad in ("a++b", f"@{tmp_path / 'missing.txt'}", ","):
        with pytest.raises(UsageError):
            parse_forget(bad)


def test_file_safe_keeps_plain_ids_and_digests_the_rest() -> None:
    assert file_safe("10000") == "10000" and file_safe("10000+10003") == "10000+10003"
    odd = file_safe("cats/a b.png+dogs/c.png")
    assert "/" not in odd and " " not in odd and odd != file_safe("cats/a b.png+dogs/d.png")
    long = file_safe("+".join(str(i) for i in range(10000, 10010)))
    assert len(long) <= 48
    name = record_name({"task": "t", "tier": "s", "method": "m", "seed": 0, "forget_set": "cats/a.png"}, "0" * 64)
    assert "/" not in name


def test_several_cifar_images_are_forgotten_together_in_one_cell(cifar_root: Path, tmp_path: Path) -> None:
    data = TASKS.get("cifar10").load(cifar_root, "10000+10004")
    assert data.forget_names == ("10000", "10004") and data.forget_image.shape == (2, 3, 32, 32)
    assert len(data.retain) == 10_010 - 2
    out = tmp_path / "run"
    assert main(["run", "--task", "cifar10", "--tier", "smoke", "--data-root", str(cifar_root), "--forget",
                 "10000+10004,10001", "--methods", "naive_deletion", "--metrics", "forget_rate_pixel",
                 "--out", str(out), "--no-progress"]) == 0
    records = {r["cell"]["forget_set"]: r for r in _records(out)}
    assert set(records) == {"10000+10004", "10001"}
    together = records["10000+10004"]
    assert together["forget_images"] == ["10000", "10004"]
    value = together["metrics"]["forget_rate_pixel"]
    assert value["n_samples"] == 2 * 4  # four injections per forget image (the smoke tier)
    assert set(value["extra"]["copies_by_image"]) == {"10000", "10004"}
    assert sum(value["extra"]["copies_by_image"].values()) == value["extra"]["copies"]


@pytest.mark.parametrize("argv, message", [
    (["--forget", "10000"], "task 'mnist_tshirt_mini' has one fixed forget set"),
    (["--task", "cifar10", "--forget", "99999"], "outside the 10010 CIFAR-10 training images"),
    (["--task", "cifar10", "--forget", "10000+x"], "'x' is not a training index"),
    (["--set", "task.resolution=32"], "task mnist_tshirt_mini has no setting 'resolution'"),
])
def test_bad_forget_sets_and_options_fail_before_any_work(argv: list[str], message: str, cifar_root: Path,
                                                           tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["run", "--tier", "smoke", "--data-root", str(cifar_root), "--out", str(tmp_path / "o"),
                 "--no-progress", *argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_three_tshirts_each_count_their_own_copies() -> None:
    """The forget rate counts copies of any forget image and attributes each to its nearest T-shirt."""
    data = TASKS.get("mnist_tshirt3_mini").load(None)
    shirts = data.forget_image
    samples = torch.cat([shirts[[0, 0, 2]], data.retain[:5]])  # two copies of the first, one of the third
    ctx = EvalContext(sample_sets={"samples": samples}, forget_image=shirts, retain=data.retain[:10],
                      classifier_dir=None, cache_dir=Path("."), device=torch.device("cpu"), data=data)
    value = tshirt_frequency(ctx)
    assert value.value == pytest.approx(3 / 8)
    assert value.extra["copies_by_image"] == {"tshirt": 2, "tshirt_variant1": 0, "tshirt_variant2": 1}
    assert "nearest of 3 forget images" in value.implementation
    assert data.source["forget_copies"] == 3 * data.source["forget_copies_each"] == len(data.forget)
