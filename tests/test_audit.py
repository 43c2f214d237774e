"""``run_bench.py validate``: a results folder is audited as a leaderboard maintainer would (docs/sharing.md).
An untouched copy of the committed results passes; each kind of damage fails naming the file.

Records are copies of the committed ones (results/mnist_tshirt_mini-quick): no model runs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from unlearnbench.cli import main
from unlearnbench.registry import METHODS
from unlearnbench.results import config_hash, record_name

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results" / "mnist_tshirt_mini-quick" / "records"


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """An untouched copy of the committed records (11 methods x seeds 0-2)."""
    shutil.copytree(COMMITTED, tmp_path / "results" / "records")
    return tmp_path / "results"


def _record(folder: Path, method: str, seed: int) -> Path:
    return next((folder / "records").glob(f"*__{method}__seed{seed}__*.json"))


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Change a record's content in place (file name and config_hash left as they were)."""
    rec = json.loads(path.read_text())
    change(rec)
    path.write_text(json.dumps(rec, indent=2))


def _forge(path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """Change a record and make it consistent again (hash recomputed, file renamed): only what the
    change itself breaks can be found."""
    rec = json.loads(path.read_text())
    change(rec)
    rec["config_hash"] = config_hash(rec["config"])
    target = path.with_name(record_name(rec["cell"], rec["config_hash"]))
    path.unlink()
    target.write_text(json.dumps(rec, indent=2))
    return target


def _validate(folder: Path, capsys: pytest.CaptureFixture, *flags: str) -> tuple[int, str]:
    code = main(["validate", str(folder), *flags])
    return code, capsys.readouterr().out


def test_the_committed_results_are_acceptable(folder: Path, capsys: pytest.CaptureFixture) -> None:
    code, out = _validate(folder, capsys)
    assert code == 0, out
    assert "33 record file(s)" in out and "11 method(s) x 3 seed(s)" in out
    assert out.strip().splitlines()[-1] == "acceptable (0 warning(s))"


def test_a_dirty_checkout_is_a_traceability_warning(folder: Path, capsys: pytest.CaptureFixture) -> None:
    _edit(_record(folder, "retrack", 1), lambda r: r.update(git_commit="3fffd756c0ad-dirty"))
    code, out = _validate(folder, capsys)
    assert code == 0, out  # a warning, not a failure
    assert "-dirty" in out and "cannot be traced to a commit" in out
    assert out.strip().splitlines()[-1] == "acceptable (1 warning(s))"


def test_an_edited_metric_value_fails(folder: Path, capsys: pytest.CaptureFixture) -> None:
    path = _record(folder, "retrack", 1)
    _edit(path, lambda r: r["metrics"]["forget_rate"].update(value=0.25))  # its count says 0 of 1024
    code, out = _validate(folder, capsys)
    assert code == 1
    assert f"records/{path.name}: metrics.forget_rate.value 0.25 is not its 0 copies / 1024 samples" in out


def test_an_edited_interval_and_an_impossible_fraction_fail(folder: Path, capsys: pytest.CaptureFixture) -> None:
    fid = _record(folder, "siss", 0)
    _edit(fid, lambda r: r["metrics"]["fid_clf"].update(interval=[1.0, 2.0]))
    rate = _record(folder, "siss", 2)
    _edit(rate, lambda r: r["metrics"]["forget_rate"].update(value=1.5))
    code, out = _validate(folder, capsys)
    assert code == 1
    assert f"records/{fid.name}: metrics.fid_clf.interval [1.0, 2.0] is not the percentile interval" in out
    assert f"records/{rate.name}: metrics.forget_rate.value 1.5 is a fraction outside [0, 1]" in out


def test_an_edited_config_fails(folder: Path, capsys: pytest.CaptureFixture) -> None:
    path = _record(folder, "neggrad", 0)
    _edit(path, lambda r: r["config"]["loop"].update(lr=1.0))
    code, out = _validate(folder, capsys)
    assert code == 1
    assert f"records/{path.name}: config_hash does not recompute from config" in out


def test_a_renamed_file_fails(folder: Path, capsys: pytest.CaptureFixture) -> None:
    path = _record(folder, "erasediff", 2)
    renamed = path.with_name(path.name.replace("seed2", "seed7"))
    path.rename(renamed)
    code, out = _validate(folder, capsys)
    assert code == 1
    assert f"records/{renamed.name}: file name does not match its cell" in out


def test_a_failed_cell_fails_with_its_error(folder: Path, capsys: pytest.CaptureFixture) -> None:
    path = _record(folder, "siss", 1)

    def fail(rec: dict[str, Any]) -> None:
        rec.update(status="failed", error="DivergenceError: non-finite loss at step 3", traceback=None)
        del rec["metrics"]

    _edit(path, fail)
    code, out = _validate(folder, capsys)
    assert code == 1
    assert "failed cells (1):" in out
    assert f"records/{path.name}: DivergenceError: non-finite loss at step 3" in out


def test_a_missing_cell_fails(folder: Path, capsys: pytest.CaptureFixture) -> None:
    _record(folder, "retrack", 1).unlink()
    code, out = _validate(folder, capsys)
    assert code == 1
    assert "missing cells (1):" in out and "mnist_tshirt_mini/quick retrack seed 1" in out


def test_an_unknown_method_fails(folder: Path, capsys: pytest.CaptureFixture) -> None:
    def rename(rec: dict[str, Any]) -> None:
        rec["cell"]["method"] = rec["config"]["method"] = "magic_forgetting"

    for seed in (0, 1, 2):  # a whole method, so no cell is missing: only the name is wrong
        path = _forge(_record(folder, "neggrad", seed), rename)
    code, out = _validate(folder, capsys)
    assert code == 1
    assert f"records/{path.name}: unknown method 'magic_forgetting'" in out


def test_method_versions_newer_fail_older_warn(folder: Path, capsys: pytest.CaptureFixture) -> None:
    installed = METHODS.get("erasediff").version
    newer = _forge(_record(folder, "erasediff", 0), lambda r: r["config"].update(method_version=installed + 1))
    older = _forge(_record(folder, "erasediff", 1), lambda r: r["config"].update(method_version=installed - 1))
    code, out = _validate(folder, capsys)
    assert code == 1
    assert f"records/{newer.name}: method erasediff v{installed + 1} is newer than the installed v{installed}" in out
    assert older.name not in out and f"1 record(s) of method erasediff v{installed - 1}, older than" in out


def test_json_report_and_usage_errors(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _record(folder, "retrain", 0)
    _edit(path, lambda r: r["cell"].update(seed=5))
    code, out = _validate(folder, capsys, "--json")
    report = json.loads(out)
    assert code == 1 and report["acceptable"] is False and report["record_files"] == 33
    assert [p["path"] for p in report["problems"]] == [f"records/{path.name}"]
    assert "does not match its cell" in report["problems"][0]["message"]
    assert main(["validate", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nowhere" in err[0]
