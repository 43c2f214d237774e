"""Which value a setting takes (one precedence), and cells that must fail rather than look perfect.

Precedence: defaults < published < tier (its loop and tuned choices) < user; within ``--set``,
``METHOD.NAME`` beats ``loop.NAME``. A model whose weights or samples hold NaN/inf is a failed
cell with the reason, never a 0% forget rate. ``--eval-every`` records the forget rate during
unlearning.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from unlearnbench.cli import main
from unlearnbench.registry import TASKS, load_all
from unlearnbench.runner import Benchmark
from unlearnbench.settings import RunOptions, parse_overrides, resolve_settings
from unlearnbench.tuning import tuned_overrides
from unlearnbench.validate import UsageError

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def plan_for(method: str, sets: list[str], tier: str = "quick"):
    load_all()
    opts = RunOptions(task="mnist_tshirt_mini", tier=tier, methods=[method], seeds=[0],
                      overrides=parse_overrides(sets))
    return Benchmark(opts, log=lambda s: None).plan()[0]


def test_tuned_value_is_used_and_says_so() -> None:
    tuned = tuned_overrides("mnist_tshirt_mini", "quick")["retrack"]["lr"]
    plan = plan_for("retrack", [])
    assert plan.loop.lr == tuned
    assert "tuned" in plan.sources["loop.lr"] and "tuning.json" in plan.sources["loop.lr"]
    assert plan.sources["hparams.k"].startswith("published")


def test_user_loop_override_beats_the_tuned_value() -> None:
    plan = plan_for("retrack", ["loop.lr=0.0123"])
    assert plan.loop.lr == 0.0123
    assert plan.sources["loop.lr"] == "user (--set loop.lr)"
    assert plan.config["user_overrides"] == {"loop.lr": 0.0123}
    assert plan.config["loop"]["lr"] == 0.0123


def test_user_method_override_beats_tuned_and_loop_wide() -> None:
    plan = plan_for("retrack", ["loop.lr=0.0123", "retrack.lr=0.0456", "retrack.k=3"])
    assert plan.loop.lr == 0.0456 and plan.hparams.k == 3
    assert plan.sources["loop.lr"] == "user (--set retrack.lr)"
    assert plan.sources["hparams.k"] == "user (--set retrack.k)"
    assert plan.config["user_overrides"] == {"loop.lr": 0.0123, "retrack.lr": 0.0456, "retrack.k": 3}


def test_overrides_change_the_cell_identity() -> None:
    assert plan_for("retrack", []).digest != plan_for("retrack", ["loop.lr=0.0123"]).digest


def test_non_finetuning_methods_ignore_loop_overrides() -> None:
    """pretrain has no loop: a loop-wide --set neither applies to it nor changes its identity."""
    assert plan_for("pretrain", ["loop.lr=0.0123"]).digest == plan_for("pretrain", []).digest


@pytest.mark.parametrize("item", ["retrain.lr=0.1", "pretrain.steps=3"])
def test_a_loop_setting_on_a_method_without_a_loop_is_a_usage_error(item: str) -> None:
    """A method that does not fine-tune has no loop: ``--set METHOD.lr`` on it names nothing and is refused."""
    load_all()
    with pytest.raises(UsageError, match="has no setting"):
        parse_overrides([item])


def test_record_and_dry_run_show_value_and_source(capsys, tmp_path: Path) -> None:
    assert main(["run", "--tier", "quick", "--methods", "retrack,siss", "--set", "loop.lr=0.0123",
                 "--set", "retrack.lr=0.0456", "--dry-run", "--no-estimate"]) == 0
    out = capsys.readouterr().out
    retrack = next(line for line in out.splitlines() if line.strip().startswith("retrack:"))
    siss = next(line for line in out.splitlines() if line.strip().startswith("siss:"))
    assert "hparams.k=10 from published (mnist_tshirt)" in retrack
    assert "loop.lr=0.0456 from user (--set retrack.lr)" in retrack
    assert "loop.lr=0.0123 from user (--set loop.lr)" in siss


def test_values_published_for_another_setting_say_so(capsys) -> None:
    assert main(["run", "--tier", "quick", "--methods", "salun,selective_amnesia", "--dry-run", "--no-estimate"]) == 0
    out = capsys.readouterr().out
    salun = next(line for line in out.splitlines() if line.strip().startswith("salun:"))
    amnesia = next(line for line in out.splitlines() if line.strip().startswith("selective_amnesia:"))
    assert ("hparams.alpha=0.001 from published for CIFAR-10 class forgetting (official DDPM/ code), "
            "transferred to mnist_tshirt") in salun
    assert "hparams.lmbda=10.0 from published for CIFAR-10 / STL-10 class forgetting" in amnesia
    assert "from published (mnist_tshirt)" not in salun + amnesia


def test_sd_paper_tier_runs_fp32_with_bf16_as_an_option() -> None:
    load_all()
    tier = TASKS.get("sd_memorized").tier("paper")
    assert tier.unlearning.precision == "fp32"  # the official configs: mixed_precision null
    from unlearnbench.registry import METHODS

    settings = resolve_settings(METHODS.get("siss"), TASKS.get("sd_memorized"), tier,
                                parse_overrides(["loop.precision=bf16"]))
    assert settings.loop.precision == "bf16" and settings.sources["loop.precision"].startswith("user")


def _only_record(out: Path) -> dict:
    records = list((out / "records").glob("*.json"))
    assert len(records) == 1, records
    return json.loads(records[0].read_text())


def test_eval_every_records_the_forget_rate_during_unlearning(tmp_path: Path) -> None:
    out = tmp_path / "res"
    assert main(["run", "--tier", "smoke", "--methods", "naive_deletion", "--eval-every", "1",
                 "--out", str(out), "--no-progress"]) == 0
    rec = _only_record(out)
    assert rec["status"] == "ok", rec.get("error")
    evals = rec["training"]["evaluations"]
    assert [e["step"] for e in evals] == [1, 2]
    assert all(0.0 <= e["forget_rate"] <= 1.0 and e["n_samples"] == 64 for e in evals)
    assert "deletion_step" in rec["metrics"]


def test_non_finite_weights_fail_the_cell(tmp_path: Path, monkeypatch) -> None:
    from unlearnbench.methods.pretrain import Pretrain

    original = Pretrain.unlearn

    def destroyed(self, job):
        result = original(self, job)
        with torch.no_grad():
            next(result.model.parameters()).fill_(float("nan"))
        return result

    monkeypatch.setattr(Pretrain, "unlearn", destroyed)
    out = tmp_path / "res"
    assert main(["run", "--tier", "smoke", "--methods", "pretrain", "--out", str(out), "--no-progress"]) == 1
    rec = _only_record(out)
    assert rec["status"] == "failed"
    assert "non-finite weights" in rec["error"]
    assert "metrics" not in rec


def test_non_finite_samples_fail_the_cell(tmp_path: Path, monkeypatch) -> None:
    import unlearnbench.sampling as sampling

    real = sampling.generate

    def nan_samples(*args, **kwargs):
        images = real(*args, **kwargs).clone()
        images[3] = float("nan")
        return images

    monkeypatch.setattr(sampling, "generate", nan_samples)
    out = tmp_path / "res"
    assert main(["run", "--tier", "smoke", "--methods", "pretrain", "--out", str(out), "--no-progress"]) == 1
    rec = _only_record(out)
    assert rec["status"] == "failed"
    assert "1 of 64 generated images" in rec["error"] and "NaN" in rec["error"]


def _calibrate_script():
    """``scripts/calibrate.py`` (a script of the repository, not a module of the package)."""
    spec = importlib.util.spec_from_file_location("calibrate_script", SCRIPTS / "calibrate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_calibrate_records_forget_rate_curves(tmp_path: Path) -> None:
    """``python scripts/calibrate.py`` runs every fine-tuning method through the --eval-every path."""
    from unlearnbench.registry import METHODS

    calibrate = _calibrate_script().main

    assert calibrate(["--tier", "smoke", "--eval-every", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "mnist_tshirt_mini-smoke.json").read_text())
    finetuning = {m for m in METHODS.names() if METHODS.get(m).finetunes}
    assert set(result["unlearning"]) == finetuning
    assert all([e["step"] for e in evals] == [1, 2] for evals in result["unlearning"].values())
    assert (tmp_path / "mnist_tshirt_mini-smoke.png").exists()
