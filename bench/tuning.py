"""Per-tier learning-rate choices made by the documented tuning rule (docs/calibration.md).

The choices are data: ``datasets/assets/<task>/<tier>/tuning.json``, written by
``run_bench.py tune``; a tier without that file uses the published settings unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unlearnbench.paths import assets_dir



def tuning_file(task: str, tier: str) -> Path:
    return assets_dir(task, tier) / "tuning.json"


def tuned_overrides(task: str, tier: str) -> dict[str, dict[str, Any]]:
    """{method: {"lr": chosen}} from the tuning record, or {} when the tier was not tuned."""
    path = tuning_file(task, tier)
    if not path.exists():
        return {}
    if (path.parent / "manifest.json").exists():  # shipped: checked like every other shipped file
        from unlearnbench.artifacts import verify_file

        verify_file(path.parent, path.name)
    record = json.loads(path.read_text())
    return {method: dict(choice["chosen"]) for method, choice in record["methods"].items()}


#: The documented rule (docs/calibration.md), applied to every fine-tuning method alike.
LR_GRID = (5e-5, 2e-4, 5e-4, 1e-3)  # the published lr, then up to 20x: small models need larger steps
TUNING_SEED = 100  # never a reported seed
TUNING_SAMPLES = 512
QUALITY_FLOOR = 0.95  # keep at least 95% of the base model's classifier IS
RULE = (f"for each fine-tuning method, run the tier's unlearning loop on tuning seed {TUNING_SEED} (not a reported "
        f"seed) at every lr in {list(LR_GRID)} and score {TUNING_SAMPLES} samples; among the lrs whose is_clf stays "
        f">= {QUALITY_FLOOR} x the base model's, choose the lowest forget_rate (ties: lower fid_clf, then smaller "
        f"lr); if none keeps the quality, choose the smallest lr")


def choose(trials: list[dict[str, Any]], base_is: float) -> dict[str, Any]:
    """Apply the rule to one method's trials ({lr, forget_rate, is_clf, fid_clf})."""
    ok = [t for t in trials if t["is_clf"] is not None and t["is_clf"] >= QUALITY_FLOOR * base_is]
    if not ok:
        return min(trials, key=lambda t: t["lr"])
    return min(ok, key=lambda t: (t["forget_rate"], t["fid_clf"], t["lr"]))


def run_tuning(args: Any) -> int:
    """``run_bench.py tune``: run the grid, apply the rule, write the tuning record."""
    from unlearnbench.io import atomic_write_json
    from unlearnbench.registry import METHODS, TASKS
    from unlearnbench.runner import Benchmark
    from unlearnbench.settings import RunOptions

    task_name = TASKS.canonical(args.task)
    tier = TASKS.get(task_name).tier(args.tier or TASKS.get(task_name).default_tier)
    methods = [METHODS.canonical(m) for m in (args.methods or METHODS.names()) if METHODS.get(m).finetunes]
    work = Path("runs") / "tuning" / f"{task_name}-{tier.name}"

    def run(method: str, lr: float | None) -> dict[str, Any]:
        overrides: dict[str, dict[str, Any]] = {"sampler": {"num_samples": TUNING_SAMPLES}}
        if lr is not None:
            overrides[method] = {"lr": lr}
        opts = RunOptions(task=task_name, tier=tier.name, methods=[method], seeds=[TUNING_SEED], out=work,
                          data_root=args.data_root, device=args.device, overrides=overrides,
                          metrics=["forget_rate", "is_clf", "fid_clf"], progress=not args.no_progress)
        record = Benchmark(opts).run()[0]
        m = record.get("metrics", {})
        return {"lr": lr, "status": record["status"], **{k: m.get(k, {}).get("value") for k in ("forget_rate", "is_clf", "fid_clf")}}

    base = run(next(m for m in METHODS.names() if METHODS.get(m).role == "reference_before"), None)
    record: dict[str, Any] = {"task": task_name, "tier": tier.name, "rule": RULE, "grid": list(LR_GRID),
                              "tuning_seed": TUNING_SEED, "pretrain": base, "methods": {}}
    for method in methods:
        trials = [run(method, lr) for lr in LR_GRID]
        best = choose([t for t in trials if t["status"] == "ok"], base["is_clf"])
        record["methods"][method] = {"trials": trials, "chosen": {"lr": best["lr"]}}
        print(f"{method}: chose lr {best['lr']} ({best})")
    out = Path(args.out) if args.out else tuning_file(task_name, tier.name)
    if out.exists():  # tuning some methods keeps the others' recorded choices
        earlier = json.loads(out.read_text())
        if earlier.get("grid") == record["grid"] and earlier.get("rule") == record["rule"]:
            record["methods"] = {**earlier.get("methods", {}), **record["methods"]}
    atomic_write_json(out, record)
    if out.resolve() == tuning_file(task_name, tier.name).resolve() and (out.parent / "manifest.json").exists():
        from unlearnbench.artifacts import write_manifest

        manifest = json.loads((out.parent / "manifest.json").read_text())
        write_manifest(out.parent, manifest.get("command") or f"python run_bench.py prepare --task {task_name}")
    print(f"tuning record written to {out}")
    return 0
