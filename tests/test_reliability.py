"""What the suite guarantees when things go wrong (docs/reliability.md).

Concurrent runners on one results folder, runs killed mid-write, half-prepared artefacts,
weights swapped or configs edited at the same path, unreadable records, and a machine whose disk
fills up: each case is built here on the smoke tier or with stand-in files.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel

from unlearnbench.artifacts import (
    BASE, ArtefactCorruptError, artefact_files, folder_state, model_identity, prepare, verify_folder,
)
from unlearnbench.cli import main
from unlearnbench.io import atomic_write_text, file_lock, temporary_prefix
from unlearnbench.paths import assets_dir
from unlearnbench.registry import TASKS, load_all
from unlearnbench.runner import Benchmark
from unlearnbench.settings import RunOptions

load_all()
SMOKE = ["run", "--tier", "smoke", "--no-progress"]


def _records(out: Path) -> list[Path]:
    return sorted((out / "records").glob("*.json"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- item 8: temporaries and claims ---------------------------------------------------------------


def test_startup_removes_only_orphaned_temporaries(tmp_path: Path) -> None:
    """A second runner keeps a live writer's in-flight temporary and removes a dead writer's."""
    records = tmp_path / "records"
    records.mkdir(parents=True)
    live = records / f"{temporary_prefix('a.json')}x1y2.tmp"  # this process: alive
    dead = records / f"{temporary_prefix('b.json').rsplit('.', 2)[0]}.{_dead_pid()}.z3w4.tmp"
    live.write_text("{")
    dead.write_text("{")
    assert main([*SMOKE, "--methods", "pretrain", "--out", str(tmp_path)]) == 0
    assert live.exists()
    assert not dead.exists()


def test_a_claimed_cell_is_waited_for_and_reused_not_recomputed(tmp_path: Path, monkeypatch) -> None:
    first = tmp_path / "first"
    assert main([*SMOKE, "--methods", "pretrain", "--out", str(first)]) == 0
    (finished,) = _records(first)

    second = tmp_path / "second"
    bench = Benchmark(RunOptions(task="mnist_tshirt_mini", tier="smoke", methods=["pretrain"], out=second,
                                 progress=False), log=lambda s: None)
    (plan,) = bench.plan()
    computed = []
    import unlearnbench.runner as runner

    monkeypatch.setattr(runner, "run_cell", lambda *a, **k: computed.append(1))  # what Benchmark.execute calls
    result: list = []
    with file_lock(bench._claim_file(plan)):  # "another runner" holds the cell
        worker = threading.Thread(target=lambda: result.append(bench.run()))
        worker.start()
        time.sleep(1.0)
        assert worker.is_alive()  # it waits for the claim instead of computing the cell a second time
        plan.path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(finished, plan.path)  # the other runner finishes the cell
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert computed == []
    assert result[0][0]["config_hash"] == plan.digest


def test_two_runners_on_one_folder_compute_each_cell_once(tmp_path: Path) -> None:
    out = tmp_path / "shared"
    cmd = [sys.executable, "run_bench.py", *SMOKE, "--methods", "pretrain,naive_deletion,neggrad", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    started = [line for _, err in outputs for line in err.splitlines() if line.startswith("cell ")]
    assert sorted(started) == sorted({*started}) and len(started) == 3, started  # each cell computed once
    assert len(_records(out)) == 3


# --- item 9: atomic prepare ---------------------------------------------------------------------


def _fake_train(kind, task, tier, data, device, stage, progress, log, data_root):
    (stage / "unet_ema").mkdir(parents=True)
    (stage / "unet_ema" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    (stage / "unet_ema" / "config.json").write_text("{}")
    (stage / "info.json").write_text("{}")


def test_a_killed_prepare_leaves_no_half_artefact(tmp_path: Path, monkeypatch) -> None:
    import unlearnbench.artifacts as artifacts

    task = TASKS.get("mnist_tshirt_mini")
    tier = task.tier("smoke")
    data = task.load(None)

    def killed(kind, task, tier, data, device, stage, *rest):
        (stage / "unet_ema").mkdir(parents=True)
        (stage / "unet_ema" / "diffusion_pytorch_model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(artifacts, "_train_artefact", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare(task, tier, data, torch.device("cpu"), out=tmp_path, only=(BASE,), log=lambda s: None)
    assert folder_state(tmp_path, BASE) == "missing"  # no base/ at all: nothing half-written is visible

    monkeypatch.setattr(artifacts, "_train_artefact", _fake_train)
    prepare(task, tier, data, torch.device("cpu"), out=tmp_path, only=(BASE,), log=lambda s: None)
    assert folder_state(tmp_path, BASE) == "complete"
    assert not list(tmp_path.glob(".*partial*"))
    assert "base/info.json" in json.loads((tmp_path / "manifest.json").read_text())["sha256"]


def test_a_half_prepared_folder_is_detected_and_redone(tmp_path: Path, monkeypatch) -> None:
    import unlearnbench.artifacts as artifacts

    task = TASKS.get("mnist_tshirt_mini")
    (tmp_path / "base" / "unet_ema").mkdir(parents=True)  # an older version killed after the weights
    (tmp_path / "base" / "unet_ema" / "diffusion_pytorch_model.safetensors").write_bytes(b"old")
    assert folder_state(tmp_path, BASE) == "half"
    monkeypatch.setattr(artifacts, "_train_artefact", _fake_train)
    said: list[str] = []
    prepare(task, task.tier("smoke"), task.load(None), torch.device("cpu"), out=tmp_path, only=(BASE,), log=said.append)
    assert any("half-prepared" in s for s in said)
    assert folder_state(tmp_path, BASE) == "complete"
    assert (tmp_path / "base" / "unet_ema" / "diffusion_pytorch_model.safetensors").read_bytes() == b"weights"


# --- item 10: provenance by content ----------------------------------------------------------------


def _tiny_unet(seed: int) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(4, 8), norm_num_groups=4,
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))


def test_base_model_identity_follows_content_not_path(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    _tiny_unet(0).save_pretrained(folder)
    first = model_identity(str(folder), None)
    assert first["sha256"] and str(tmp_path) not in json.dumps(first)
    _tiny_unet(1).save_pretrained(folder)  # other weights at the same path
    second = model_identity(str(folder), None)
    assert second["sha256"] != first["sha256"]
    config = json.loads((folder / "config.json").read_text())
    config["norm_eps"] = 1e-6
    (folder / "config.json").write_text(json.dumps(config))  # a config edited in place
    assert model_identity(str(folder), None)["sha256"] != second["sha256"]


def test_cells_of_a_swapped_base_model_are_new_cells(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    _tiny_unet(0).save_pretrained(folder)

    def digest() -> str:
        opts = RunOptions(task="mnist_tshirt_mini", tier="smoke", methods=["naive_deletion"], base_model=str(folder))
        return Benchmark(opts, log=lambda s: None).plan()[0].digest

    before = digest()
    _tiny_unet(1).save_pretrained(folder)
    assert digest() != before


def test_shipped_manifest_covers_every_file_and_catches_edits(tmp_path: Path) -> None:
    shipped = assets_dir("mnist_tshirt_mini", "quick")
    listed = set(json.loads((shipped / "manifest.json").read_text())["sha256"])
    on_disk = {str(f.relative_to(shipped)) for f in shipped.rglob("*")
               if f.is_file() and f.name != "manifest.json" and "checkpoints" not in f.parts}
    assert listed == on_disk  # configs, info and tuning.json too, not only the weights
    assert listed == set(artefact_files(shipped))

    copy = tmp_path / "quick"
    shutil.copytree(shipped, copy)
    verify_folder(copy, "base", shipped=True)
    config = copy / "base" / "unet_ema" / "config.json"
    config.write_text(config.read_text().replace("32", "33", 1))
    with pytest.raises(ArtefactCorruptError, match="config.json: sha256 differs"):
        verify_folder(copy, "base", shipped=True)


def test_a_cached_artefact_is_checked_before_use(tmp_path: Path, monkeypatch, smoke_cache: Path) -> None:
    """The user cache's weights are verified against its manifest: a swapped file is an error naming it."""
    out = tmp_path / "res"
    assert main([*SMOKE, "--methods", "pretrain", "--out", str(out)]) == 0
    cache = smoke_cache / "mnist_tshirt_mini" / "smoke"
    weights = cache / "base" / "unet_ema" / "diffusion_pytorch_model.safetensors"
    saved = weights.read_bytes()
    try:
        weights.write_bytes(saved[:-8] + b"tampered")
        with pytest.raises(ArtefactCorruptError, match="diffusion_pytorch_model.safetensors: sha256 differs"):
            Benchmark(RunOptions(task="mnist_tshirt_mini", tier="smoke", methods=["pretrain"], out=out),
                      log=lambda s: None).plan()
    finally:
        weights.write_bytes(saved)


def test_records_carry_the_content_hash_of_a_given_base_model(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    _tiny_unet(0).save_pretrained(folder)
    out = tmp_path / "res"
    main([*SMOKE, "--methods", "pretrain", "--base-model", str(folder), "--metrics", "forget_rate", "--out", str(out)])
    (path,) = _records(out)
    rec = json.loads(path.read_text())
    assert rec["base_model"]["sha256"] == model_identity(str(folder), None)["sha256"]
    assert rec["config"]["base_model"]["sha256"] == rec["base_model"]["sha256"]


# --- items 11 and 12: unreadable records, environment failures --------------------------------------


def test_a_truncated_record_is_quarantined_and_redone(tmp_path: Path, capsys) -> None:
    assert main([*SMOKE, "--methods", "pretrain", "--out", str(tmp_path)]) == 0
    (path,) = _records(tmp_path)
    path.write_text(path.read_text()[:200])  # killed mid-write by something that did not write atomically
    for flags in ([], ["--retry-failed"]):
        capsys.readouterr()
        assert main([*SMOKE, "--methods", "pretrain", "--out", str(tmp_path), *flags]) == 0
        if not flags:
            err = capsys.readouterr().err
            assert path.name in err and "quarantine" in err
    assert json.loads(path.read_text())["status"] == "ok"
    assert len(list((tmp_path / "quarantine").iterdir())) == 1


def test_a_full_disk_is_not_recorded_as_the_cells_failure(tmp_path: Path, monkeypatch, capsys) -> None:
    import unlearnbench.sampling as sampling

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sampling, "generate", no_space)
    assert main([*SMOKE, "--methods", "pretrain", "--out", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "No space left on device" in err and "not recorded" in err and "Traceback" not in err
    assert _records(tmp_path) == []  # nothing recorded: a plain rerun computes the cell
    monkeypatch.undo()
    assert main([*SMOKE, "--methods", "pretrain", "--out", str(tmp_path)]) == 0
    assert json.loads(_records(tmp_path)[0].read_text())["status"] == "ok"


def test_a_divergence_is_the_cells_own_recorded_failure(tmp_path: Path, monkeypatch) -> None:
    import unlearnbench.sampling as sampling
    from unlearnbench.loop import DivergenceError

    def diverged(*args, **kwargs):
        raise DivergenceError("non-finite loss nan at step 1")

    monkeypatch.setattr(sampling, "generate", diverged)
    assert main([*SMOKE, "--methods", "pretrain", "--out", str(tmp_path)]) == 1
    assert json.loads(_records(tmp_path)[0].read_text())["status"] == "failed"


def test_records_are_world_readable(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "r.json", "{}")
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
