"""Say what is missing before starting: the gate names a baseline of another tier, other seeds or other methods
in one line with the command that produces matching results (no table of missing cells), and a dry run lists
every input the run needs and does not have, with where it comes from. Also: records hold when a cell started
and when it finished, and the MNIST tiers' FID note states each tier's own sample count."""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.test_gate import BASE, write_records
from unlearnbench.cli import build_parser, main
from unlearnbench.gate import check_main, seeds_text
from unlearnbench.registry import TASKS, load_all

load_all()

REPO = Path(__file__).resolve().parents[1]
TASK = "mnist_tshirt_mini"  # a registered task: the command leaves out what `run` does by default


@pytest.fixture
def baseline(tmp_path: Path, capsys: pytest.CaptureFixture) -> Path:
    """A baseline of mnist_tshirt_mini/smoke, seeds 0-2, methods naive_deletion and retrack."""
    path = tmp_path / "baseline.json"
    assert check_main(write_records(tmp_path / "base", BASE, task=TASK, tier="smoke"), path, update=True) == 0
    capsys.readouterr()
    return path


def one_line_failure(code: int, out: str) -> str:
    """The gate failed with exactly one line and no table; that line."""
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert code == 1, out
    assert len(lines) == 1, out
    assert not any(ln.startswith("|") for ln in lines)
    assert lines[0].startswith("gate FAILED: ")
    return lines[0]


def matching_args(line: str) -> list[str]:
    """The `run` command the line proposes, parsed by the real command line (so it is a valid command)."""
    command = line.split("matching results come from: ", 1)[1].rsplit(" (baseline ", 1)[0]
    words = shlex.split(command)
    assert words[:3] == ["python", "run_bench.py", "run"], command
    build_parser().parse_args(words[2:])  # raises on an unknown flag
    return words[3:]


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_a_baseline_of_another_tier_is_one_line_with_the_command(tmp_path: Path, baseline: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    results = write_records(tmp_path / "cur", BASE, task=TASK, tier="quick")
    code = check_main(results, baseline)
    line = one_line_failure(code, capsys.readouterr().out)
    assert "tier mismatch: results are mnist_tshirt_mini/quick, the baseline is mnist_tshirt_mini/smoke" in line
    args = matching_args(line)
    assert flag(args, "--tier") == "smoke" and flag(args, "--seeds") == "0-2" and flag(args, "--out") == "DIR"
    assert flag(args, "--task") == TASK
    assert flag(args, "--methods").split(",") == ["naive_deletion", "retrack"]  # in the table's order
    assert flag(args, "--metrics") is None  # the baseline's metrics are all the tier's defaults


def test_a_baseline_of_another_task(tmp_path: Path, baseline: Path, capsys: pytest.CaptureFixture) -> None:
    code = check_main(write_records(tmp_path / "cur", BASE, task="mnist_tshirt", tier="smoke"), baseline)
    line = one_line_failure(code, capsys.readouterr().out)
    assert "task mismatch: results are mnist_tshirt/smoke, the baseline is mnist_tshirt_mini/smoke" in line


def test_other_seeds_are_one_line(tmp_path: Path, baseline: Path, capsys: pytest.CaptureFixture) -> None:
    results = write_records(tmp_path / "cur", BASE, task=TASK, tier="smoke", seeds=[3, 4, 5])
    line = one_line_failure(check_main(results, baseline), capsys.readouterr().out)
    assert "seed mismatch: results of mnist_tshirt_mini/smoke have seeds 3-5, the baseline seeds 0-2" in line
    assert flag(matching_args(line), "--seeds") == "0-2"


def test_other_methods_are_one_line(tmp_path: Path, baseline: Path, capsys: pytest.CaptureFixture) -> None:
    results = write_records(tmp_path / "cur", {"siss": BASE["retrack"]}, task=TASK, tier="smoke")
    line = one_line_failure(check_main(results, baseline), capsys.readouterr().out)
    assert "method mismatch: results of mnist_tshirt_mini/smoke hold siss, the baseline naive_deletion, retrack" in line


def test_an_empty_results_folder_is_one_line(tmp_path: Path, baseline: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    line = one_line_failure(check_main(tmp_path / "empty", baseline), capsys.readouterr().out)
    assert "no records in the results folder, the baseline is mnist_tshirt_mini/smoke" in line


def test_some_seeds_or_methods_absent_are_noted_and_compared(tmp_path: Path, baseline: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    """Partial results are still compared cell by cell (absent methods' cells are missing), after a note."""
    two_seeds = {m: {k: v[:2] for k, v in metrics.items()} for m, metrics in BASE.items() if m == "retrack"}
    code = check_main(write_records(tmp_path / "cur", two_seeds, task=TASK, tier="smoke"), baseline)
    captured = capsys.readouterr()
    assert code == 1 and "| mnist_tshirt_mini" in captured.out and "5 missing" in captured.out
    assert "results of mnist_tshirt_mini/smoke lack seeds 2 of the baseline's seeds 0-2" in captured.err
    assert "lack method(s) naive_deletion of the baseline (their cells are missing)" in captured.err
    assert "--seeds 0-2" in captured.err


def test_matching_results_pass(tmp_path: Path, baseline: Path, capsys: pytest.CaptureFixture) -> None:
    code = check_main(write_records(tmp_path / "cur", BASE, task=TASK, tier="smoke"), baseline)
    captured = capsys.readouterr()
    assert code == 0 and "mismatch" not in captured.out + captured.err


def test_the_committed_quick_results_against_the_smoke_baseline(capsys: pytest.CaptureFixture) -> None:
    """The reported case: the committed quick-tier results checked against the committed smoke baseline."""
    code = check_main(REPO / "results" / "mnist_tshirt_mini-quick", REPO / "results" / "baseline-smoke.json")
    line = one_line_failure(code, capsys.readouterr().out)
    assert "tier mismatch: results are mnist_tshirt_mini/quick, the baseline is mnist_tshirt_mini/smoke" in line
    args = matching_args(line)
    assert flag(args, "--tier") == "smoke" and flag(args, "--seeds") == "0-2"


@pytest.mark.parametrize("seeds, text", [([0, 1, 2], "0-2"), ([0, 2, 3, 4, 7], "0,2-4,7"), ([5], "5"), ([], "")])
def test_seeds_text(seeds: list[int], text: str) -> None:
    assert seeds_text(seeds) == text


# The dry run ----------------------------------------------------------------------------------------------------

@pytest.fixture
def nothing_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, with empty Hugging Face and torch hub caches (whatever this machine holds)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def dry_run(capsys: pytest.CaptureFixture, *args: str) -> str:
    assert main(["run", *args, "--dry-run", "--no-estimate"]) == 0
    out = capsys.readouterr().out
    assert "\nmissing inputs: " in out
    return out.split("\nmissing inputs: ", 1)[1]


def test_cifar10_paper_dry_run_lists_what_is_missing(tmp_path: Path, nothing_cached: None,
                                                     capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"
    missing = dry_run(capsys, "--task", "cifar10", "--tier", "paper", "--data-root", str(root))
    assert "- data of cifar10" in missing and "CIFAR-10 python batches not found" in missing
    assert "torchvision.datasets.CIFAR10" in missing  # where they come from
    assert "a dry run downloads nothing" in missing
    assert not root.exists()  # the download's folder, made before it was refused, is gone again
    assert "base model google/ddpm-cifar10-32" in missing and "huggingface-cli download google/ddpm-cifar10-32" in missing
    assert "prepared retrain" in missing and "10 forget set(s)" in missing
    assert "SSCD weights for forget_rate, sscd" in missing and "--sscd-weights PATH/sscd_disc_mixup" in missing
    assert "Inception-v3 weights for fid, kid, inception_score" in missing and "--inception-weights" in missing


def test_given_weights_and_a_cached_base_are_not_missing(tmp_path: Path, nothing_cached: None,
                                                         capsys: pytest.CaptureFixture) -> None:
    import huggingface_hub.constants

    snapshot = Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--google--ddpm-cifar10-32" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    refs = snapshot.parents[1] / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc")
    sscd, inception = tmp_path / "sscd.pt", tmp_path / "inception.pth"
    sscd.write_bytes(b"x")
    inception.write_bytes(b"x")
    missing = dry_run(capsys, "--task", "cifar10", "--tier", "paper", "--data-root", str(tmp_path / "none"),
                      "--sscd-weights", str(sscd), "--inception-weights", str(inception))
    assert "google/ddpm-cifar10-32" not in missing and "weights for" not in missing
    missing = dry_run(capsys, "--task", "cifar10", "--tier", "paper", "--data-root", str(tmp_path / "none"),
                      "--sscd-weights", str(tmp_path / "absent.pt"), "--metrics", "sscd")
    assert f"--sscd-weights {tmp_path / 'absent.pt'} does not exist" in missing


def test_stable_diffusion_paper_dry_run_lists_prompt_folders_and_weights(tmp_path: Path, nothing_cached: None,
                                                                         capsys: pytest.CaptureFixture) -> None:
    missing = dry_run(capsys, "--task", "sd_memorized", "--tier", "paper", "--data-root", str(tmp_path))
    assert "48 of 48 forget-set folders under" in missing and "bjork_vulnicura_spotify" in missing
    assert "prepare --task sd_memorized --tier paper --prompts FILE" in missing and "prompt texts" in missing
    assert "base model CompVis/stable-diffusion-v1-4" in missing
    assert "CLIP weights for clip_iqa, clip_iqa_modified" in missing and "--clip-weights" in missing
    assert "SSCD weights for sscd_memorized" in missing


def test_the_default_dry_run_misses_nothing(capsys: pytest.CaptureFixture) -> None:
    assert dry_run(capsys).strip() == "none"


# Records: when a cell started and when it finished ---------------------------------------------------------------

def test_records_hold_their_start_and_their_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import unlearnbench.cell as cell
    from unlearnbench.loop import LoopConfig
    from unlearnbench.sampling import SamplerConfig

    clock = iter(f"2026-01-01T00:00:0{i}Z" for i in range(10))
    monkeypatch.setattr(cell, "utc_now", lambda: next(clock))

    class Broken:  # fails in the cell's first step: the record is still finished (status failed)
        def check_model(self, *args: object) -> None:
            raise ValueError("planted")

    plan = cell.CellPlan({"task": "t", "tier": "smoke", "method": "pretrain", "seed": 0}, {}, "0" * 64,
                         LoopConfig(steps=1, batch_size=1, lr=1e-4), None, tmp_path / "r.json")
    env = cell.CellEnv(Broken(), None, SamplerConfig(), [], torch.device("cpu"), tmp_path, tmp_path, {},
                       log=lambda _: None)
    data = type("Data", (), {"source": {}, "forget_names": ()})()
    record = cell.run_cell(env, plan, data, None, {}, None)
    assert record["status"] == "failed" and "planted" in record["error"]
    assert record["started_at"] == "2026-01-01T00:00:00Z"
    assert record["created_at"] == "2026-01-01T00:00:02Z"  # the header's stamp (…01) replaced when finished
    lost = cell.lost_record(plan, torch.device("cpu"), {}, "worker died")
    assert lost["started_at"] is None and lost["created_at"] == "2026-01-01T00:00:03Z"
    schema = (REPO / "docs" / "results-schema.md").read_text()
    assert "| `started_at` | UTC time the cell started" in schema
    assert "| `created_at` | UTC time the cell finished" in schema


# Loose ends ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["mnist_tshirt", "mnist_tshirt_mini", "mnist_tshirt3_mini"])
def test_the_fid_note_states_each_tiers_sample_count(task: str) -> None:
    for tier in TASKS.get(task).tiers().values():
        for metric in ("fid", "kid"):
            if metric in tier.off_by_default:
                assert f" of {tier.sampler.num_samples:,} samples " in tier.off_by_default[metric], (tier.name, metric)


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs the git checkout")
def test_the_committed_baseline_is_not_ignored() -> None:
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "-q", "results/baseline-smoke.json"], cwd=REPO)
    assert ignored.returncode == 1  # 0 would mean a .gitignore rule matches it


def test_each_metric_declares_the_weights_it_reads() -> None:
    from unlearnbench.inputs import PROTOCOL_METRIC_WEIGHTS, metric_weights
    from unlearnbench.registry import METRICS

    declared = {m: METRICS.get(m).weights for m in METRICS.names() if METRICS.get(m).weights}
    assert declared == {"fid": ("inception",), "kid": ("inception",), "inception_score": ("inception",),
                        "sscd": ("sscd",), "sscd_memorized": ("sscd",), "sscd_memorized_modified": ("sscd",),
                        "clip_iqa": ("clip",), "clip_iqa_modified": ("clip",)}
    assert all(set(m) <= set(METRICS.names()) for m in PROTOCOL_METRIC_WEIGHTS.values())
    assert metric_weights("forget_rate", TASKS.get("cifar10")) == ("sscd",)  # the protocol's definition reads SSCD
    assert metric_weights("forget_rate", TASKS.get(TASK)) == ()
    assert metric_weights("fid", TASKS.get(TASK)) == ("inception",)


def test_other_forget_sets_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Tasks with named forget sets (CIFAR-10): the baseline's forget sets and seeds go into the command."""
    from unlearnbench.results import config_hash, record_name

    def records(folder: Path, forget_sets: list[str]) -> Path:
        for forget_set in forget_sets:
            for seed in (0, 1):
                cell = {"task": "cifar10", "tier": "smoke", "method": "retrack", "seed": seed, "forget_set": forget_set}
                rec = {"schema_version": 1, "cell": cell, "config": cell, "config_hash": config_hash(cell),
                       "status": "ok", "created_at": "2024-01-01T00:00:00Z",
                       "metrics": {"forget_rate_pixel": {"value": 0.0, "available": True, "higher_is_better": False}}}
                path = folder / "records" / record_name(cell, rec["config_hash"])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(rec))
        return folder

    baseline = tmp_path / "baseline.json"
    assert check_main(records(tmp_path / "base", ["10000", "10003"]), baseline, update=True) == 0
    capsys.readouterr()
    line = one_line_failure(check_main(records(tmp_path / "cur", ["10001"]), baseline), capsys.readouterr().out)
    assert ("forget-set mismatch: results of cifar10/smoke have seeds 0-1 of forget sets 10001, the baseline seeds "
            "0-1 of forget sets 10000, 10003") in line
    args = matching_args(line)
    assert flag(args, "--forget") == "10000,10003" and flag(args, "--seeds") == "0-1"
    assert flag(args, "--methods") == "retrack"
