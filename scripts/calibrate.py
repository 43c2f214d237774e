"""Calibration of a tier (docs/calibration.md): does the base model converge and memorize, and
how does each method's forget rate move with unlearning steps?

1. T-shirt frequency and classifier IS of the base model's EMA checkpoints against training step.
2. Each fine-tuning method's forget rate against unlearning step (``--eval-every``), seed 0.
Writes ``results/calibration/<task>-<tier>.json`` and a figure next to it.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from unlearnbench.artifacts import BASE, Artifacts  # noqa: E402
from unlearnbench.diffusion import load_unet  # noqa: E402
from unlearnbench.io import atomic_write_json  # noqa: E402
from unlearnbench.cell import eval_context  # noqa: E402
from unlearnbench.devices import resolve_device  # noqa: E402
from unlearnbench.metrics import EvalContext  # noqa: E402
from unlearnbench.registry import METHODS, METRICS, TASKS  # noqa: E402
from unlearnbench.runner import Benchmark  # noqa: E402
from unlearnbench.settings import RunOptions  # noqa: E402
from unlearnbench.sampling import generate  # noqa: E402


def base_curve(task_name: str, tier_name: str, device_name: str, progress: bool) -> list[dict[str, Any]]:
    """forget_rate and is_clf of every saved base checkpoint (and the final EMA model)."""
    task = TASKS.get(task_name)
    tier = task.tier(tier_name)
    bench = Benchmark(RunOptions(task=task_name, tier=tier_name, device=device_name, progress=progress))
    bench.ensure_prepared()  # the base model and the classifier the curve scores with
    root = Artifacts(task, tier).folder(BASE)
    checkpoints = sorted((root / "checkpoints").glob("step-*"), key=lambda p: int(re.sub(r"\D", "", p.name)))
    out = []
    for ckpt in checkpoints:
        model = load_unet(ckpt / "unet_ema")
        samples = generate(model, tier.sampler, seed=0, device=resolve_device(device_name), progress=progress)
        ctx: EvalContext = eval_context(bench.env, {"samples": samples}, bench.data, model, 0, bench.artifacts)
        row = {"step": int(ckpt.name.split("-")[1]), "n_samples": len(samples)}
        for name in ("forget_rate", "is_clf", "fid_clf"):
            row[name] = METRICS.get(name).compute(ctx).value
        print(row, flush=True)
        out.append(row)
    return out


def unlearning_curves(task_name: str, tier_name: str, device_name: str, eval_every: int, progress: bool,
                      out_dir: Path) -> dict[str, list[dict[str, Any]]]:
    methods = [m for m in METHODS.names() if METHODS.get(m).finetunes]
    opts = RunOptions(task=task_name, tier=tier_name, methods=methods, seeds=[0], out=out_dir, device=device_name,
                      metrics=["forget_rate"], eval_every=eval_every, progress=progress)
    records = Benchmark(opts).run()
    return {r["cell"]["method"]: r["training"]["evaluations"] for r in records if r["status"] == "ok"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/calibrate.py")
    p.add_argument("--task", default="mnist_tshirt_mini")
    p.add_argument("--tier", default="quick")
    p.add_argument("--device", default="auto")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("results") / "calibration")
    p.add_argument("--skip-base", action="store_true",
                   help="do not recompute the base-checkpoint curve (the one already in the output file is kept)")
    args = p.parse_args(argv)
    name = f"{args.task}-{args.tier}"
    path = args.out / f"{name}.json"
    result: dict[str, Any] = {"task": args.task, "tier": args.tier}
    if not args.skip_base:
        result["base_checkpoints"] = base_curve(args.task, args.tier, args.device, False)
    elif path.exists():  # the base curve needs the training checkpoints, which are not shipped: keep it
        result["base_checkpoints"] = json.loads(path.read_text()).get("base_checkpoints", [])
    result["unlearning"] = unlearning_curves(args.task, args.tier, args.device, args.eval_every, False,
                                             args.out / f"{name}-runs")
    atomic_write_json(path, result)
    plot(result, args.out / f"{name}.png")
    print(f"wrote {path}")
    return 0


def plot(result: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    base = result.get("base_checkpoints", [])
    if base:
        steps = [r["step"] for r in base]
        axes[0].plot(steps, [100 * r["forget_rate"] for r in base], "o-")
        axes[0].set(xlabel="base training step", ylabel="T-shirt frequency (%)", title="base model: memorization")
        axes[1].plot(steps, [r["is_clf"] for r in base], "o-")
        axes[1].set(xlabel="base training step", ylabel="classifier IS", title="base model: quality")
    for method, evals in result["unlearning"].items():
        axes[2].plot([0] + [e["step"] for e in evals],
                     [100 * base[-1]["forget_rate"] if base else None] + [100 * e["forget_rate"] for e in evals],
                     "o-", label=method)
    axes[2].set(xlabel="unlearning step", ylabel="T-shirt frequency (%)", title="forget rate during unlearning")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
