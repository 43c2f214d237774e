"""What the verification metrics add to a quick-tier cell, measured side by side in one process.

One cell's work is reproduced on the shipped base model of ``mnist_tshirt_mini``/``quick``: the
samples are generated once, then the metric set of the suite before the verification metrics
(forget rate, is_clf, fid_clf, NLL; no bootstrap) and the new default set (plus kid_clf, the three
membership attacks and the bootstrap intervals) are timed on the same samples, in alternation. The
oracle's membership errors are cached per seed: the first cell of a seed pays them, the others read
them, and both figures are printed. A cell's unlearning time is read from a results folder.

    python scripts/verification_cost.py --results results/mnist_tshirt_mini-quick
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from unlearnbench.artifacts import RETRAIN, Artifacts
from unlearnbench.metrics import EvalContext
from unlearnbench.registry import METRICS, TASKS, load_all

OLD = ("forget_rate", "is_clf", "fid_clf", "nll")
NEW = ("forget_rate", "is_clf", "fid_clf", "kid_clf", "nll", "mia_loss", "mia_secmi", "mia_pia")


def timed(names: tuple[str, ...], ctx: EvalContext) -> dict[str, float]:
    """Seconds per metric on a fresh memo (nothing shared with an earlier timing)."""
    ctx = dataclasses.replace(ctx, memo={}, _forget_mask=None)
    out = {}
    for name in names:
        start = time.perf_counter()
        METRICS.get(name).compute(ctx)
        out[name] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="a quick-tier results folder (unlearn times)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--relearn", action="store_true", help="also time one relearning attack of each variant "
                                                                "on the model (the oracle's is cached per seed)")
    args = parser.parse_args()
    load_all()
    task = TASKS.get("mnist_tshirt_mini")
    tier = task.tier("quick")
    data = task.load(None)
    arts = Artifacts(task, tier)
    model, _ = arts.base_model()
    model.eval()
    start = time.perf_counter()
    samples = task.generate(model, tier.sampler, 0, torch.device("cpu"), data, False)
    sampling = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as cache:
        ctx = EvalContext(sample_sets=samples, forget_image=data.forget_image, retain=data.retain,
                          classifier_dir=arts.classifier_dir(), cache_dir=Path(cache), device=torch.device("cpu"),
                          task=task, data=data, model=model, tier_eval=tier.eval, seed=0, sampler=tier.sampler,
                          schedule=task.noise_schedule(tier), loop=tier.unlearning,
                          oracle=lambda: (arts.retrain_model()[0], arts.identity(RETRAIN)))
        old_ctx = dataclasses.replace(ctx, tier_eval={**tier.eval, "bootstrap": 0})
        timed(OLD, old_ctx)  # warm-up: the reference set's statistics and features are cached for both
        first_cell = timed(NEW, ctx)  # the oracle's errors computed (the first cell of a seed)
        old, new = [], []
        for _ in range(args.repeats):
            old.append(sum(timed(OLD, old_ctx).values()))
            new_times = timed(NEW, ctx)
            new.append(sum(new_times.values()))
        relearn = {}
        if args.relearn:
            from unlearnbench.verification import relearn as attack

            for variant in ("relearn", "relearn_knn"):
                start = time.perf_counter()
                out = attack(dataclasses.replace(ctx, memo={}), model, variant)
                relearn[variant] = {"seconds": round(time.perf_counter() - start, 1),
                                    "fine_tuning_seconds": round(out["seconds"], 1)}
    unlearn = [json.loads(p.read_text())["costs"]["unlearn_seconds"] for p in (args.results / "records").glob("*.json")
               if "__retrain__" not in p.name and "__pretrain__" not in p.name]
    mean_unlearn = statistics.mean(unlearn) if unlearn else 0.0
    old_cell = mean_unlearn + sampling + statistics.median(old)
    added = statistics.median(new) - statistics.median(old)
    per_seed_oracle = sum(first_cell.values()) - statistics.median(new)
    print(json.dumps({
        "sampling_seconds": round(sampling, 1), "mean_unlearn_seconds": round(mean_unlearn, 1),
        "old_metrics_seconds": [round(x, 1) for x in old], "new_metrics_seconds": [round(x, 1) for x in new],
        "new_metrics_each": {k: round(v, 2) for k, v in new_times.items()},
        "first_cell_extra_for_the_oracle_seconds": round(per_seed_oracle, 1),
        "cell_seconds_before": round(old_cell, 1), "added_seconds": round(added, 1),
        "added_fraction": round(added / old_cell, 3),
        "added_fraction_with_the_oracle_once_per_9_cells": round((added + per_seed_oracle / 9) / old_cell, 3),
        **({"relearn": relearn, "relearn_fraction": round(sum(v["seconds"] for v in relearn.values()) / old_cell, 2)}
           if relearn else {}),
    }, indent=1))


if __name__ == "__main__":
    main()
