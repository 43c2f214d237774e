"""The documented learning-rate rule of the non-paper tiers, and that its choices reach the runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearnbench.registry import METHODS, TASKS, load_all
from unlearnbench.settings import tier_choices
from unlearnbench.tuning import QUALITY_FLOOR, choose, tuned_overrides, tuning_file

load_all()


def _t(lr: float, fr: float, is_: float, fid: float = 1.0) -> dict:
    return {"lr": lr, "forget_rate": fr, "is_clf": is_, "fid_clf": fid}


def test_rule_picks_lowest_forget_rate_that_keeps_quality() -> None:
    trials = [_t(5e-5, 0.04, 9.0), _t(2e-4, 0.01, 8.9), _t(5e-4, 0.0, 8.0), _t(1e-3, 0.0, 5.0)]
    assert choose(trials, base_is=9.0)["lr"] == 2e-4  # 8.0 < 0.95 * 9.0: the lr with 0% is too destructive


def test_rule_breaks_ties_by_fid_then_smaller_lr() -> None:
    trials = [_t(5e-5, 0.0, 9.0, 3.0), _t(2e-4, 0.0, 9.0, 2.0), _t(5e-4, 0.0, 9.0, 2.0)]
    assert choose(trials, base_is=9.0)["lr"] == 2e-4


def test_rule_falls_back_to_the_smallest_lr_when_nothing_keeps_quality() -> None:
    trials = [_t(1e-3, 0.0, 1.0), _t(5e-5, 0.5, 2.0)]
    assert choose(trials, base_is=9.0)["lr"] == 5e-5
    assert QUALITY_FLOOR == 0.95


def test_the_quick_tier_applies_its_tuning_record_to_every_fine_tuning_method() -> None:
    path = tuning_file("mnist_tshirt_mini", "quick")
    if not path.exists():
        pytest.skip("no tuning record shipped for mnist_tshirt_mini/quick")
    record = json.loads(path.read_text())
    chosen = tuned_overrides("mnist_tshirt_mini", "quick")
    assert set(chosen) == {m for m in METHODS.names() if METHODS.get(m).finetunes}
    for method, choice in record["methods"].items():
        assert choose([t for t in choice["trials"] if t["status"] == "ok"], record["pretrain"]["is_clf"])["lr"] == chosen[method]["lr"]
    task = TASKS.get("mnist_tshirt_mini")
    tier = task.tier("quick")
    assert tier.tuned and tier.method_overrides == {}  # the tier's choices are the tuning record's
    for method in METHODS.names():
        choices = tier_choices(task, tier, method)
        assert {key: value for key, (value, _) in choices.items()} == chosen.get(method, {})
        assert all("tuned" in origin and "tuning.json" in origin for _, origin in choices.values())
    paper = task.tier("paper")  # the paper tier keeps published lrs
    assert not paper.tuned and paper.method_overrides == {}
    assert all(tier_choices(task, paper, m) == {} for m in METHODS.names())


def test_tuned_lr_lands_in_the_cell_config(tmp_path: Path) -> None:
    from unlearnbench.runner import Benchmark
    from unlearnbench.settings import RunOptions

    bench = Benchmark(RunOptions(task="mnist_tshirt_mini", tier="quick", methods=["retrack"], seeds=[0], out=tmp_path))
    plan = bench.plan()[0]
    expected = tuned_overrides("mnist_tshirt_mini", "quick").get("retrack", {}).get("lr", 5e-5)
    assert plan.config["loop"]["lr"] == expected
    paper = Benchmark(RunOptions(task="mnist_tshirt_mini", tier="paper", methods=["retrack"], seeds=[0], out=tmp_path))
    assert paper.plan()[0].config["loop"]["lr"] == 5e-5 and paper.plan()[0].config["loop"]["batch_size"] == 128
