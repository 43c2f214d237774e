"""Bad record files (truncated, foreign, non-finite, renamed) are named wherever records are read:
``read_record`` raises, ``load_records`` reports, ``check`` fails and ``check --update`` refuses,
``report`` lists them; JSON that is not a record (a baseline) is still ignored."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from unlearnbench.gate import check_main
from unlearnbench.report import report_main
from unlearnbench.results import BadRecordError, config_hash, load_records, read_record, record_name

TASK, TIER = "toy_task", "smoke"


def record(method: str = "retrack", seed: int = 0, forget_rate: float | None = 0.01,
           status: str = "ok") -> dict[str, Any]:
    """A minimal schema-1 record (the fields the gate and the report read)."""
    config = {"task": TASK, "tier": TIER, "method": method, "seed": seed}
    return {"schema_version": 1, "cell": {"task": TASK, "tier": TIER, "method": method, "seed": seed},
            "config": config, "config_hash": config_hash(config), "status": status,
            "created_at": "2024-01-01T00:00:00Z",
            "metrics": {"forget_rate": {"value": forget_rate, "available": forget_rate is not None,
                                        "higher_is_better": False}}}


def write(results: Path, rec: dict[str, Any], name: str | None = None) -> Path:
    """``rec`` as ``results/records/<its record name>`` (or ``name``), as ``json.dumps`` writes it."""
    path = results / "records" / (name or record_name(rec["cell"], rec["config_hash"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path


def truncate(path: Path) -> Path:
    """Cut a file in the middle, as a killed copy or a full disk leaves it."""
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path


def good_and_truncated(results: Path) -> tuple[Path, Path]:
    """Seeds 0-2 of retrack, seed 1's file truncated."""
    paths = [write(results, record(seed=s, forget_rate=0.01 * s)) for s in range(3)]
    return paths[0], truncate(paths[1])


def bad_files(results: Path) -> list[BadRecordError]:
    problems: list[BadRecordError] = []
    load_records(results, problems)
    return problems


# read_record ---------------------------------------------------------------------------------------

def test_read_record_names_a_truncated_file_and_the_json_error(tmp_path: Path) -> None:
    _, bad = good_and_truncated(tmp_path)
    with pytest.raises(BadRecordError) as info:
        read_record(bad)
    assert info.value.path == bad
    assert str(bad) in str(info.value)
    assert "not valid JSON" in info.value.reason and "line 1 column" in info.value.reason


@pytest.mark.parametrize("edit, reason", [
    (lambda r: r.update(schema_version=2), "schema_version 2, expected 1"),
    (lambda r: r["cell"].pop("seed"), "missing field cell.seed"),
    (lambda r: r.update(status="done"), "status 'done'"),
    (lambda r: r.pop("metrics"), "ok record without a metrics object"),
    (lambda r: r["metrics"]["forget_rate"].update(value=float("nan")), "metrics.forget_rate.value is nan"),
    (lambda r: r["metrics"]["forget_rate"].update(value=float("inf")), "metrics.forget_rate.value is inf"),
])
def test_read_record_checks_the_minimum_schema(tmp_path: Path, edit: Any, reason: str) -> None:
    rec = record()
    path = tmp_path / "records" / record_name(rec["cell"], rec["config_hash"])
    edit(rec)
    write(tmp_path, rec, path.name)
    with pytest.raises(BadRecordError, match=reason):
        read_record(path)


def test_read_record_accepts_a_good_record_and_an_unavailable_value(tmp_path: Path) -> None:
    rec = record(forget_rate=None)
    assert read_record(write(tmp_path, rec)) == rec


# load_records -------------------------------------------------------------------------------------

def test_load_records_warns_naming_each_bad_file(tmp_path: Path) -> None:
    good, bad = good_and_truncated(tmp_path)
    with pytest.warns(UserWarning, match=bad.name):
        records = load_records(tmp_path / "records")
    assert sorted(r["cell"]["seed"] for r in records) == [0, 2]
    problems: list[BadRecordError] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with a list, the caller reports: no warning
        assert len(load_records(tmp_path, problems)) == 2
    assert [p.path for p in problems] == [bad]


def test_foreign_json_in_records_is_reported(tmp_path: Path) -> None:
    write(tmp_path, record())
    foreign = tmp_path / "records" / "notes.json"
    foreign.write_text(json.dumps({"hello": 1}))
    assert [(p.path, p.reason) for p in bad_files(tmp_path)] == [
        (foreign, "not a result record: no schema_version field")]


def test_json_that_is_not_a_record_is_still_ignored(tmp_path: Path) -> None:
    write(tmp_path, record())
    (tmp_path / "baseline-smoke.json").write_text(json.dumps({"schema": 1, "alpha": 0.05, "cells": {}}))
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "toy-quick.json").write_text("[1, 2")
    (tmp_path / "records" / ".retrack.json.x1y2.tmp").write_text("{")  # a write in progress
    (tmp_path / "records" / ".hidden.json").write_text("{")
    truncated = truncate(write(tmp_path, record(seed=1)))
    assert [p.path for p in bad_files(tmp_path)] == [truncated]


def test_a_renamed_record_is_reported(tmp_path: Path) -> None:
    rec = record()
    renamed = f"{TASK}__{TIER}__retrack__seed0__{'0' * 12}.json"
    write(tmp_path, rec, renamed)
    [problem] = bad_files(tmp_path)
    assert problem.path.name == renamed
    assert f"hash {'0' * 12} does not match config_hash {rec['config_hash'][:12]}" in problem.reason


# check ----------------------------------------------------------------------------------------------

def test_check_update_refuses_when_a_record_is_truncated(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "res"
    _, bad = good_and_truncated(results)
    baseline = tmp_path / "baseline.json"
    assert check_main(results, baseline, update=True) == 2
    assert not baseline.exists()
    err = capsys.readouterr().err
    assert f"warning: bad record {bad}: not valid JSON" in err
    assert "refusing to write" in err


def test_check_update_refuses_a_nan_metric(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "res"
    write(results, record(seed=0))
    nan = write(results, record(seed=1, forget_rate=float("nan")))
    assert "NaN" in nan.read_text()
    baseline = tmp_path / "baseline.json"
    assert check_main(results, baseline, update=True) == 2
    assert not baseline.exists()
    assert f"{nan}: metrics.forget_rate.value is nan (non-finite)" in capsys.readouterr().err


def test_check_with_a_bad_record_lists_it_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    baseline = tmp_path / "baseline.json"
    for s in range(3):
        write(tmp_path / "base", record(seed=s, forget_rate=0.01 * s))
    assert check_main(tmp_path / "base", baseline, update=True) == 0
    capsys.readouterr()
    results = tmp_path / "cur"
    for s in range(3):
        write(results, record(seed=s, forget_rate=0.01 * s))
    foreign = results / "records" / "copy.json"
    foreign.write_text(json.dumps({"hello": 1}))  # every cell still there: the gate alone would pass
    assert check_main(results, baseline) == 2
    captured = capsys.readouterr()
    assert f"warning: bad record {foreign}" in captured.err and "gate passed" in captured.out


def test_a_baseline_with_nan_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "res"
    write(results, record())
    baseline = tmp_path / "baseline.json"
    assert check_main(results, baseline, update=True) == 0
    doc = json.loads(baseline.read_text())
    key = f"{TASK}/{TIER}/retrack/forget_rate"
    doc["cells"][key].update(values=[float("nan")], mean=float("nan"))
    baseline.write_text(json.dumps(doc))
    capsys.readouterr()
    assert check_main(results, baseline) == 2
    assert f"cells.{key}.values[0] = nan" in capsys.readouterr().err


# report ---------------------------------------------------------------------------------------------

def test_report_lists_the_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, bad = good_and_truncated(tmp_path)
    report_main(tmp_path)
    assert f"report: skipped bad record {bad}: not valid JSON" in capsys.readouterr().err
    md = (tmp_path / "leaderboard" / "leaderboard.md").read_text(encoding="utf-8")
    assert f"1 record file(s) skipped as unusable (their cells are missing from this table): records/{bad.name}" in md
    assert "records/" + bad.name in (tmp_path / "leaderboard" / "leaderboard.html").read_text(encoding="utf-8")


def test_report_with_only_bad_records_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    truncate(write(tmp_path, record()))
    with pytest.raises(FileNotFoundError, match=r"1 bad record file\(s\) skipped"):
        report_main(tmp_path)
