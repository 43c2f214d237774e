"""``run_bench.py export``: Every Eval Ever JSON that validates against the EEE schema, Hugging Face
``.eval_results`` YAML that parses, failed cells listed and never exported (docs/sharing.md).

Records are copies of the committed ones (results/mnist_tshirt_mini-quick): no model runs."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from unlearnbench.cli import main
from unlearnbench.export import EEE_SCHEMA_VERSION, export_eee, export_hf
from unlearnbench.results import load_records

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results" / "mnist_tshirt_mini-quick" / "records"
SCHEMA = REPO / "tests" / "data" / "every_eval_ever" / "eval.schema.json"
#: The EEE datastore layout (data/<collection>/<developer>/<model>/<uuid4>.json), as its validator enforces it
UUID4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
EEE_PATH = re.compile(rf"data/[^/]+/[^/]+/[^/]+/{UUID4}\.json")


def _copy(folder: Path, patterns: tuple[str, ...]) -> Path:
    records = folder / "records"
    records.mkdir(parents=True)
    for pattern in patterns:
        for path in COMMITTED.glob(pattern):
            shutil.copy(path, records / path.name)
    return folder


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    """retrack over seeds 0-2 (three-seed means with intervals) and pretrain seed 0 (one cell)."""
    return _copy(tmp_path / "results", ("*__retrack__seed*.json", "*__pretrain__seed0__*.json"))


def _by_model(paths: list[Path]) -> dict[str, dict[str, Any]]:
    docs = [json.loads(p.read_text()) for p in paths]
    return {d["model_info"]["additional_details"]["method"]: d for d in docs}


def _result(doc: dict[str, Any], metric: str) -> dict[str, Any]:
    return next(r for r in doc["evaluation_results"] if r["metric_config"]["metric_name"] == metric)


def _committed(method: str, seed: int) -> dict[str, Any]:
    return json.loads(next(COMMITTED.glob(f"*__{method}__seed{seed}__*.json")).read_text())


def test_eee_files_validate_against_the_every_eval_ever_schema(results: Path, tmp_path: Path) -> None:
    schema = json.loads(SCHEMA.read_text())
    assert schema["version"] == EEE_SCHEMA_VERSION  # the vendored schema is the one the exporter writes
    paths = export_eee(load_records(results), tmp_path / "eee")
    assert len(paths) == 2
    for path in paths:
        assert EEE_PATH.fullmatch(path.relative_to(tmp_path / "eee").as_posix()), path
        doc = json.loads(path.read_text())
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=str)
        assert not errors, f"{path}: {errors[0].message} at {list(errors[0].absolute_path)}"
        assert doc["schema_version"] == EEE_SCHEMA_VERSION


def test_eee_validates_against_the_installed_package_schema_too(results: Path, tmp_path: Path) -> None:
    schema_module = pytest.importorskip("every_eval_ever.schema")
    schema = schema_module.schema_json("eval.schema.json")
    for path in export_eee(load_records(results), tmp_path / "eee"):
        jsonschema.validate(json.loads(path.read_text()), schema)


def test_eee_direction_bounds_intervals_and_sample_counts(results: Path, tmp_path: Path) -> None:
    docs = _by_model(export_eee(load_records(results), tmp_path / "eee"))
    retrack, pretrain = docs["retrack"], docs["pretrain"]
    # direction from each record's higher_is_better
    assert _result(retrack, "fid_clf")["metric_config"]["lower_is_better"] is True
    assert _result(retrack, "is_clf")["metric_config"]["lower_is_better"] is False
    # bounds: a fraction in [0, 1], a cost non-negative and unbounded
    rate = _result(retrack, "forget_rate")["metric_config"]
    assert (rate["score_type"], rate["min_score"], rate["max_score"]) == ("continuous", 0.0, 1.0)
    cost = _result(retrack, "unet_forward")["metric_config"]
    assert (cost["min_score"], cost["max_score"]) == (0.0, "Infinity")
    # three seeds: the mean, each seed's value, the hierarchical interval of the mean
    values = {s: _committed("retrack", s)["metrics"]["fid_clf"]["value"] for s in (0, 1, 2)}
    fid = _result(retrack, "fid_clf")["score_details"]
    assert fid["score"] == pytest.approx(sum(values.values()) / 3)
    assert json.loads(fid["details"]["values_by_seed"]) == {str(s): v for s, v in values.items()}
    ci = fid["uncertainty"]["confidence_interval"]
    assert ci["confidence_level"] == 0.95 and ci["lower"] < fid["score"] < ci["upper"]
    assert "hierarchical bootstrap" in ci["method"] and fid["uncertainty"]["num_bootstrap_samples"] == 2000
    assert fid["uncertainty"]["num_samples"] == 3 * 1024
    # one seed: the record's own interval and method, its sample count
    own = _committed("pretrain", 0)["metrics"]["forget_rate"]
    single = _result(pretrain, "forget_rate")["score_details"]
    assert single["score"] == own["value"]
    assert [single["uncertainty"]["confidence_interval"][k] for k in ("lower", "upper")] == own["interval"]
    assert single["uncertainty"]["confidence_interval"]["method"] == own["interval_method"]
    assert single["uncertainty"]["num_samples"] == own["n_samples"]
    # a metric without an interval in its records gets none
    assert "confidence_interval" not in _result(retrack, "nll")["score_details"].get("uncertainty", {})
    # provenance: the suite, its version and the records' commit; the sampler
    assert retrack["eval_library"]["name"] == "unlearnbench"
    assert retrack["eval_library"]["additional_details"]["git_commit"] == _committed("retrack", 0)["git_commit"]
    assert "traceability" not in retrack["source_metadata"]["additional_details"]  # clean commit: traceable
    sampler = _result(retrack, "fid_clf")["generation_config"]["additional_details"]
    assert (sampler["sampler"], sampler["sampler_steps"], sampler["num_samples"]) == ("ddim", "25", "1024")


def test_failed_cells_are_listed_not_exported(results: Path, tmp_path: Path) -> None:
    path = next((results / "records").glob("*__pretrain__seed0__*.json"))
    rec = json.loads(path.read_text())
    rec.update(status="failed", error="DivergenceError: non-finite loss at step 3", traceback=None)
    del rec["metrics"]
    path.write_text(json.dumps(rec))
    lines: list[str] = []
    for export in (export_eee, export_hf):
        lines.clear()
        paths = export(load_records(results), tmp_path / export.__name__, log=lines.append)
        assert len(paths) == 1 and "pretrain" not in str(paths[0])  # retrack only
        assert len(lines) == 1 and "pretrain seed 0" in lines[0] and "non-finite loss at step 3" in lines[0]


def test_export_is_a_function_of_the_records(results: Path, tmp_path: Path) -> None:
    first = export_eee(load_records(results), tmp_path / "a")
    second = export_eee(load_records(results), tmp_path / "b")
    assert [p.relative_to(tmp_path / "a") for p in first] == [p.relative_to(tmp_path / "b") for p in second]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_hf_eval_results_parse_with_the_expected_entries(results: Path, tmp_path: Path) -> None:
    paths = export_hf(load_records(results), tmp_path / "hf")
    assert sorted(p.relative_to(tmp_path / "hf").as_posix() for p in paths) == [
        "pretrain/.eval_results/mnist_tshirt_mini__quick.yaml", "retrack/.eval_results/mnist_tshirt_mini__quick.yaml"]
    entries = yaml.safe_load((tmp_path / "hf/retrack/.eval_results/mnist_tshirt_mini__quick.yaml").read_text())
    assert isinstance(entries, list) and len(entries) == len(_committed("retrack", 0)["metrics"])
    for entry in entries:
        assert set(entry) == {"dataset", "value", "date", "notes"}
        assert entry["dataset"]["id"] == "unlearnbench/mnist_tshirt_mini"
        assert isinstance(entry["value"], float) and isinstance(entry["date"], str)
    fid = next(e for e in entries if e["dataset"]["task_id"] == "quick.fid_clf")
    values = [_committed("retrack", s)["metrics"]["fid_clf"]["value"] for s in (0, 1, 2)]
    assert fid["value"] == pytest.approx(sum(values) / 3)
    assert "lower is better" in fid["notes"] and "seeds 0, 1, 2" in fid["notes"] and "95% interval" in fid["notes"]


def test_export_command(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", "--results", str(results), "--format", "hf", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 2 and all(Path(p).is_file() for p in printed)
    assert main(["export", "--results", str(tmp_path / "nowhere"), "--format", "eee", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nowhere" in err[0]
    assert main(["export", "--results", str(results), "--format", "csv", "--out", str(tmp_path)]) == 2


def test_each_forget_set_is_its_own_evaluation(results: Path, tmp_path: Path) -> None:
    from unlearnbench.results import config_hash, record_name

    for path in (results / "records").glob("*__pretrain__*.json"):
        for forget in ("10000", "10001+10002"):
            rec = json.loads(path.read_text())
            rec["cell"]["forget_set"] = rec["config"]["forget_set"] = forget
            rec["config_hash"] = config_hash(rec["config"])
            (path.parent / record_name(rec["cell"], rec["config_hash"])).write_text(json.dumps(rec))
        path.unlink()
    schema = json.loads(SCHEMA.read_text())
    paths = [p for p in export_eee(load_records(results), tmp_path / "eee") if "pretrain" in str(p)]
    assert sorted(p.parent.name for p in paths) == ["mnist_tshirt_mini__quick__pretrain__forget10000",
                                                    "mnist_tshirt_mini__quick__pretrain__forget10001+10002"]
    for path in paths:
        doc = json.loads(path.read_text())
        jsonschema.validate(doc, schema)
        assert doc["evaluation_results"][0]["source_data"]["additional_details"]["forget_set"] in path.parent.name
    hf = [p.name for p in export_hf(load_records(results), tmp_path / "hf") if "pretrain" in str(p)]
    assert sorted(hf) == ["mnist_tshirt_mini__quick__forget10000.yaml",
                          "mnist_tshirt_mini__quick__forget10001+10002.yaml"]


def test_records_from_a_dirty_checkout_are_flagged_as_untraceable(results: Path, tmp_path: Path) -> None:
    for path in (results / "records").glob("*__retrack__seed1__*.json"):
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "git_commit": record["git_commit"] + "-dirty"}))
    docs = _by_model(export_eee(load_records(results), tmp_path / "eee"))
    assert "uncommitted changes" in docs["retrack"]["source_metadata"]["additional_details"]["traceability"]
    assert "traceability" not in docs["pretrain"]["source_metadata"]["additional_details"]
