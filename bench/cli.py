"""Command line: ``run`` (default), ``ls``, ``prepare``, ``tune``, ``report``, ``check``, ``export`` and ``validate``."""
from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import NoReturn

from unlearnbench.errors import ArtefactCorruptError, EnvironmentFailure
from unlearnbench.registry import METHODS, METRICS, TASKS, UnknownNameError
from unlearnbench.validate import MAX_SEEDS, UsageError, did_you_mean, forget_list

DEFAULT_TASK = "mnist_tshirt_mini"
SUBCOMMANDS = ("run", "ls", "prepare", "tune", "report", "check", "export", "validate")
INTERRUPTED = "interrupted; finished cells are kept, rerun the same command to resume"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one ``UsageError`` line (``main`` prints it, exit 2), not usage text."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _names(flag: str, values: list[str] | None) -> list[str] | None:
    """A comma-separated list of names: None when the flag is absent; given but empty is an error."""
    if values is not None and not values:
        what = flag.lstrip("-")
        raise UsageError(f"{flag}: no {what} given (see `run_bench.py ls {what}`)")
    return values


def _seed_range(part: str, text: str) -> range:
    """One ``N`` or ``LO-HI`` of ``--seeds``."""
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
    if not match:
        raise UsageError(f"--seeds {text}: {part!r} is not a seed or a range; seeds are integers >= 0, "
                         f"e.g. --seeds 0,1,2 or --seeds 0-9")
    lo, hi = int(match[1]), int(match[2] or match[1])
    if hi < lo:
        raise UsageError(f"--seeds {text}: the range {part} goes down; write {hi}-{lo}")
    return range(lo, hi + 1)


def parse_seeds(text: str) -> list[int]:
    """'0,1,2', '0-9' or both -> the seeds in order, each once (a repeat is dropped with a note on stderr)."""
    ranges = [_seed_range(part, text) for part in _csv(text)]
    if not ranges:
        raise UsageError(f"--seeds {text!r}: no seeds given; e.g. --seeds 0,1,2 or --seeds 0-9")
    total = sum(len(r) for r in ranges)
    if total > MAX_SEEDS:
        raise UsageError(f"--seeds {text}: {total} seeds; at most {MAX_SEEDS} in one run")
    seeds = [s for r in ranges for s in r]
    repeated = [s for s, n in Counter(seeds).items() if n > 1]
    if repeated:
        unique = list(dict.fromkeys(seeds))
        shown = ", ".join(map(str, repeated[:10])) + (", ..." if len(repeated) > 10 else "")
        print(f"note: --seeds {text} repeats {shown}; each seed runs once ({len(unique)} seed{'s' * (len(unique) != 1)})", file=sys.stderr)
        return unique
    return seeds


FORGET_HELP = ("forget sets instead of the tier's, comma-separated, one cell each; '+' joins images forgotten "
               "together (e.g. 10000+10001), @FILE is one set of the names listed in FILE")


def parse_forget(text: str | None) -> list[str] | None:
    """``--forget``: ``"a,b+c,@list.txt"`` -> ``["a", "b+c", "<names in list.txt joined by +>"]`` (None: not given)."""
    if text is None:
        return None
    sets = []
    for part in _csv(text):
        if part.startswith("@"):
            part = forget_list(Path(part[1:]), f"--forget {part} names a file of image names, one a line")
        if any(not name for name in part.split("+")):
            raise UsageError(f"--forget {text}: {part!r} has an empty name around '+'")
        sets.append(part)
    if not sets:
        raise UsageError(f"--forget {text!r}: no forget set given")
    return list(dict.fromkeys(sets))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default=DEFAULT_TASK, help=f"task name (default {DEFAULT_TASK}); see `ls tasks`")
    p.add_argument("--tier", default=None, help="smoke | quick | paper (default: the task's default tier)")
    p.add_argument("--data-root", type=Path, default=None, help="folder with the task's data files")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="run_bench.py", description="unlearnbench: data unlearning in diffusion models")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run methods on a task and print the comparison table (default)")
    _common(run)
    run.add_argument("--methods", type=_csv, default=None, help="comma-separated (default: all)")
    run.add_argument("--forget", default=None, metavar="SETS", help=FORGET_HELP)
    run.add_argument("--seeds", default=None, help="e.g. 0,1,2 or 0-9 (default: the tier's seeds)")
    run.add_argument("--out", type=Path, default=None, help="results folder (default runs/<task>-<tier>)")
    run.add_argument("--base-model", default=None, help="diffusers UNet folder or hub id to unlearn")
    run.add_argument("--base-subfolder", default=None, help="subfolder of --base-model, e.g. unet_ema")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SCOPE.NAME=VALUE",
                     help="override, e.g. retrack.k=5, loop.lr=1e-4, siss.lr=5e-4, sampler.num_samples=2048")
    run.add_argument("--metrics", type=_csv, default=None, help="comma-separated (default: the tier's)")
    run.add_argument("--inception-weights", default=None, help=f"path to torch-fidelity's Inception-v3 weights")
    run.add_argument("--sscd-weights", default=None, help="SSCD TorchScript file (sscd_disc_mixup.torchscript.pt)")
    run.add_argument("--clip-weights", default=None, help="CLIP folder or hub id for CLIP-IQA (Stable Diffusion)")
    run.add_argument("--eval-every", type=int, default=0, help="evaluate the forget rate every N unlearning steps")
    run.add_argument("--dry-run", action="store_true", help="print the cell plan with its settings and exit")
    run.add_argument("--no-estimate", action="store_true", help="with --dry-run: skip the measured cost estimate")
    run.add_argument("--executor", choices=("local", "pool", "ray"), default="local",
                     help="where cells run: sequentially here (default), a process pool, or Ray (docs/cluster.md)")
    run.add_argument("--workers", type=int, default=None, help="pool processes / concurrent Ray tasks")
    run.add_argument("--threads", type=int, default=None, help="torch threads per cell")
    run.add_argument("--ray-address", default=None, help="an existing Ray cluster (none: start a local instance)")
    run.add_argument("--max-retries", type=int, default=None, help="resubmissions of cells whose worker died")
    run.add_argument("--overwrite", action="store_true", help="rerun every cell, replacing finished records")
    run.add_argument("--retry-failed", action="store_true", help="rerun cells whose record says failed")
    ls = sub.add_parser("ls", help="list methods, tasks or metrics")
    ls.add_argument("what", choices=("methods", "tasks", "metrics"))
    ls.add_argument("--check", action="store_true", help="import every entry, plugins included, and report any that "
                                                          "cannot be loaded (exit 1)")
    prep = sub.add_parser("prepare", help="train and cache base model, retrain oracle and classifier")
    _common(prep)
    prep.add_argument("--out", type=Path, default=None, help="where to write (default: the user cache)")
    prep.add_argument("--only", type=_csv, default=None, help="base,retrain,classifier (default: all)")
    prep.add_argument("--forget", default=None, metavar="SETS", help=FORGET_HELP + " (the oracle is per forget set)")
    prep.add_argument("--set", dest="overrides", action="append", default=[], metavar="task.NAME=VALUE",
                      help="a task option, e.g. task.resolution=32 (image_folder)")
    prep.add_argument("--force", action="store_true", help="retrain even if present")
    prep.add_argument("--prompts", type=Path, default=None,
                      help="sd_memorized: prompt list (.jsonl or .csv with original,modified) to build prompt folders "
                           "into --data-root (or --out)")
    prep.add_argument("--base-model", default=None, help="sd_memorized: the Stable Diffusion folder or hub id")
    prep.add_argument("--sscd-weights", default=None, help="sd_memorized: cluster on SSCD descriptors")
    tune = sub.add_parser("tune", help="choose each method's learning rate for a tier by the documented rule")
    _common(tune)
    tune.add_argument("--methods", type=_csv, default=None)
    tune.add_argument("--out", type=Path, default=None, help="tuning record (default: the tier's tuning.json)")
    report = sub.add_parser("report", help="leaderboards (Markdown, LaTeX, CSV, HTML) and figures from records")
    report.add_argument("--results", type=Path, required=True, help="results folder (searched recursively)")
    report.add_argument("--out", type=Path, default=None, help="output folder (default RESULTS/leaderboard)")
    check = sub.add_parser("check", help="compare results with a baseline; exit 1 on a regression or a missing cell")
    check.add_argument("--results", type=Path, required=True, help="results folder (searched recursively)")
    check.add_argument("--baseline", type=Path, required=True, help="baseline JSON file")
    check.add_argument("--update", action="store_true", help="rewrite the baseline from --results")
    check.add_argument("--alpha", type=float, default=0.05, help="significance level of the one-sided Welch test")
    export = sub.add_parser("export", help="write records as Every Eval Ever JSON or Hugging Face .eval_results YAML")
    export.add_argument("--results", type=Path, required=True, help="results folder (searched recursively)")
    export.add_argument("--format", dest="fmt", choices=("eee", "hf"), required=True,
                        help="eee: Every Eval Ever JSON; hf: Hugging Face .eval_results YAML (docs/sharing.md)")
    export.add_argument("--out", type=Path, required=True, help="output folder")
    validate = sub.add_parser("validate", help="audit a results folder before accepting it; exit 1 on any problem")
    validate.add_argument("folder", type=Path, help="results folder (searched recursively)")
    validate.add_argument("--json", dest="as_json", action="store_true", help="machine-readable report")
    return parser


def _with_command(argv: list[str]) -> list[str]:
    """``argv`` led by its command: ``run`` is implied only before an option (or for no arguments);
    a first word that is no command is an error, so ``export ...`` is not silently a run."""
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        return ["run", *argv]
    if argv[0] in SUBCOMMANDS or argv[0] in ("-h", "--help"):
        return argv
    raise UsageError(f"unknown command {argv[0]!r}; {did_you_mean(argv[0], SUBCOMMANDS, same_first_letter=True)}"
                     f"commands: {', '.join(SUBCOMMANDS)}")


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input is one ``error:`` line and exit 2; Ctrl-C is one line and exit 130."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "run"
    try:
        argv = _with_command(argv)
        command = argv[0]
        args = build_parser().parse_args(argv)
        commands = {"run": cmd_run, "ls": cmd_ls, "prepare": cmd_prepare, "tune": cmd_tune, "report": cmd_report,
                    "check": cmd_check, "export": cmd_export, "validate": cmd_validate}
        return commands[args.command](args)
    except (UsageError, UnknownNameError, FileNotFoundError, ArtefactCorruptError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except EnvironmentFailure as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(INTERRUPTED if command in ("run", "tune") else "interrupted", file=sys.stderr, flush=True)
        return 130


def cmd_ls(args: argparse.Namespace) -> int:
    """The registered names with version, origin (built in, or a plugin's package) and description, from the
    catalogue (``unlearnbench.catalog``: no torch import); ``--check`` imports every entry, plugins included."""
    from tabulate import tabulate

    from unlearnbench import __version__
    from unlearnbench.catalog import load, plugins

    if args.check:
        registry = {"methods": METHODS, "tasks": TASKS, "metrics": METRICS}[args.what]
        registry.load_all()
        for message in registry.broken.values():
            print(f"not loaded: {registry.kind} {message}")
        print(f"{len(registry)} {args.what} loaded" + (f", {len(registry.broken)} set aside" if registry.broken else ""))
        return 1 if registry.broken else 0
    rows = []
    for row in load()[args.what]:
        about = row["description"]
        if args.what == "methods" and row["aliases"]:
            about += f" (aliases: {', '.join(row['aliases'])})"
        if args.what == "metrics":
            about = f"{'↑' if row['higher_is_better'] else '↓'} {about}"
        rows.append([row["name"], f"v{row['version']}", f"unlearnbench {__version__}", about])
    for row in plugins(args.what):
        rows.append([row["name"], "-", " ".join(filter(None, (row["package"], row["package_version"]))),
                     f"plugin: {row['description']}"])
    print(tabulate(rows, headers=[args.what[:-1], "version", "from", "description"], tablefmt="plain"))
    return 0


def _executor_options(args: argparse.Namespace) -> dict[str, int | str]:
    """The options of ``--executor`` given on the command line (the executors check them)."""
    return {k: v for k, v in {"workers": args.workers, "threads": args.threads, "address": args.ray_address,
                              "max_retries": args.max_retries}.items() if v is not None}


def _planned(opts: "RunOptions") -> tuple["Benchmark", list["CellPlan"]]:  # noqa: F821
    """The benchmark and its cells. A ValueError while building them is bad input (e.g. a tier's setting a
    method lacks), so it is a UsageError; a cell's own failure comes later, in its record."""
    from unlearnbench.runner import Benchmark

    try:
        bench = Benchmark(opts, log=lambda s: print(s, file=sys.stderr, flush=True))
        return bench, bench.plan()
    except UsageError:
        raise
    except ValueError as err:
        raise UsageError(str(err)) from err


def cmd_run(args: argparse.Namespace) -> int:
    from unlearnbench.io import atomic_write_text
    from unlearnbench.executors import check_executor_options
    from unlearnbench.settings import RunOptions, parse_overrides
    from unlearnbench.table import comparison_table, markdown_report
    from unlearnbench.validate import ensure_writable_folder, require_int, validate_base_model

    executor_options = _executor_options(args)
    check_executor_options(args.executor, executor_options)
    require_int("--eval-every", args.eval_every, 0)
    validate_base_model(args.base_model)
    opts = RunOptions(task=args.task, tier=args.tier, methods=_names("--methods", args.methods),
                      forget=parse_forget(args.forget),
                      seeds=None if args.seeds is None else parse_seeds(args.seeds), out=args.out,
                      data_root=args.data_root, base_model=args.base_model, base_subfolder=args.base_subfolder,
                      device=args.device, overrides=parse_overrides(args.overrides, args.task),
                      metrics=_names("--metrics", args.metrics),
                      inception_weights=args.inception_weights, sscd_weights=args.sscd_weights,
                      clip_weights=args.clip_weights, eval_every=args.eval_every,
                      progress=not args.no_progress, overwrite=args.overwrite, retry_failed=args.retry_failed,
                      executor=args.executor, executor_options=executor_options)
    started = time.perf_counter()
    bench, plans = _planned(opts)
    if args.dry_run:
        print_plan(bench, estimate=not args.no_estimate)
        return 0
    ensure_writable_folder(bench.out, "--out")
    if args.executor == "ray" and args.ray_address:
        from unlearnbench.executors import check_ray_address

        check_ray_address(args.ray_address)
    records = bench.run()
    title = f"{bench.task_name} / tier {bench.tier.name}"
    source = records[0]["data_source"] if records else {}
    context = [f"tier: {bench.tier.description}",
               f"data: {source.get('kind')} ({source.get('retain_size')} retain, {source.get('forget_copies')} forget copies)",
               f"sampler: {bench.sampler.kind}, {bench.sampler.steps} steps, {bench.sampler.num_samples} samples; "
               f"seeds: {', '.join(map(str, bench.seeds))}; device: {bench.device}"]
    report = markdown_report(title, records, context, bench.tier.off_by_default, order=bench.metric_names)
    atomic_write_text(bench.out / "table.md", report)
    table, notes = comparison_table(records, bench.tier.off_by_default, fmt="simple", order=bench.metric_names)
    print(f"\n{title}\n{table}\n")
    for note in dict.fromkeys(notes):
        print(f"  {note}")
    print(f"\nrecords and table.md in {bench.out} ({time.perf_counter() - started:.1f} s)")
    return 0 if all(r.get("status") == "ok" for r in records) else 1


def print_plan(bench: "Benchmark", estimate: bool = True) -> None:  # noqa: F821
    """The cells a run would execute, with every resolved setting, and a measured cost estimate."""
    import dataclasses

    from tabulate import tabulate

    tier = bench.tier
    print(f"{bench.task_name} / tier {tier.name}: {tier.description}")
    base = bench.opts.base_model or tier.base_model or "prepared (trained by `run_bench.py prepare`)"
    print(f"base model: {base}{f' (subfolder {tier.base_subfolder})' if tier.base_subfolder else ''}; "
          f"unlearned weights: {tier.base_weights if not bench.opts.base_model else 'as given'}")
    if tier.unet:
        print(f"UNet: {tier.unet}")
    if tier.base_training is not None:
        print(f"base/retrain recipe: {dataclasses.asdict(tier.base_training)}")
    print(f"sampler: {dataclasses.asdict(bench.sampler)}; metrics: {', '.join(bench.metric_names)}")
    if tier.eval:
        print(f"evaluation: {tier.eval}")
    first_cells: dict[str, "CellPlan"] = {}  # noqa: F821  (one cell per method shows its settings)
    for plan in bench.plan():
        first_cells.setdefault(plan.cell["method"], plan)
    per_method = list(first_cells.values())
    rows = []
    for plan in per_method:
        method = plan.cell["method"]
        loop = plan.config["loop"] or {}
        rows.append([method, loop.get("steps", "-"), f"{loop.get('batch_size', '-')} x {loop.get('grad_accum', '-')}",
                     loop.get("lr", "-"), loop.get("betas", "-"), loop.get("weight_decay", "-"),
                     loop.get("precision", "-"),
                     ", ".join(f"{k}={v}" for k, v in plan.config["hparams"].items()) or "-"])
    print(tabulate(rows, headers=["method", "steps", "batch x accum", "lr", "betas", "wd", "precision", "hparams"]))
    print_sources(bench, per_method)
    forget = [f for f in bench.forget_sets if f is not None]
    runs = max(1, len(forget)) * len(bench.seeds)
    print(f"seeds: {', '.join(map(str, bench.seeds))}"
          + (f"; forget sets ({len(forget)}): {', '.join(forget)}" if forget else "")
          + f"; cells: {len(bench.methods) * runs}")
    if estimate and tier.unet and "pretrained" in tier.unet:
        print("\nno device-hour estimate: this task's UNet comes from a pretrained pipeline, not a config the "
              "estimate can build offline")
    elif estimate and tier.unet:
        from unlearnbench.estimate import estimate_rows

        rows, notes = estimate_rows(bench)
        print()
        print(tabulate(rows, headers=["method", "UNet passes per step", "unlearn h/cell", "eval h/cell", "cells",
                                      "device-hours"]))
        for note in notes:
            print(f"  {note}")
    print_missing_inputs(bench)


def print_missing_inputs(bench: "Benchmark") -> None:  # noqa: F821
    """What the run needs and does not have (``unlearnbench.inputs``), each with where it comes from."""
    from unlearnbench.inputs import missing_inputs

    missing = missing_inputs(bench)
    print(f"\nmissing inputs: {'none' if not missing else len(missing)}")
    for what, where in missing:
        print(f"  - {what}\n      from: " + where.replace("\n", "\n        "))


def print_sources(bench: "Benchmark", plans: list["CellPlan"]) -> None:  # noqa: F821
    """Where each method's settings come from, where that is not simply the tier (precedence:
    defaults < published < tier/tuned < user); ``plans``: one cell per method."""
    lines = []
    for plan in plans:
        values = {**{f"loop.{k}": v for k, v in (plan.config["loop"] or {}).items()},
                  **{f"hparams.{k}": v for k, v in plan.config["hparams"].items()}}
        notable = [f"{key}={values.get(key)} from {src}" for key, src in plan.sources.items()
                   if src != f"tier {bench.tier.name}"]
        if notable:
            lines.append(f"  {plan.cell['method']}: " + "; ".join(notable))
    print("settings not taken from the tier as is (defaults < published < tier/tuned < user):")
    print("\n".join(lines) if lines else "  none")


def cmd_prepare(args: argparse.Namespace) -> int:
    from unlearnbench.artifacts import BASE, CLASSIFIER, RETRAIN, prepare
    from unlearnbench.devices import resolve_device
    from unlearnbench.runner import require_named_forget_sets
    from unlearnbench.validate import validate_base_model

    from unlearnbench.settings import parse_overrides

    options = parse_overrides(args.overrides, args.task)
    if set(options) - {"task"}:
        raise UsageError("prepare --set takes task options only (task.NAME=VALUE); method and loop settings "
                         "do not change what prepare trains")
    task = TASKS.get(args.task).configure(options.get("task", {}), args.data_root)
    tier = task.tier(args.tier or task.default_tier)
    device = resolve_device(args.device)
    validate_base_model(args.base_model)
    if hasattr(task, "prepare_data"):  # tasks whose data the suite builds (Stable Diffusion prompt folders)
        if args.prompts is None:
            print(f"error: prepare --task {args.task} needs --prompts FILE (and --data-root DIR for the folders)",
                  file=sys.stderr)
            return 2
        out = args.out or args.data_root
        if out is None:
            print("error: say where the prompt folders go with --data-root DIR", file=sys.stderr)
            return 2
        folders = task.prepare_data(args.prompts, out, args.base_model, tier, device,
                                    not args.no_progress, args.sscd_weights)
        print(f"prepared {len(folders)} prompt folder(s) in {out}")
        return 0
    only = tuple(args.only or (BASE, RETRAIN, *((CLASSIFIER,) if tier.classifier is not None else ())))
    forget_sets = parse_forget(args.forget) or list(task.forget_sets(tier, args.data_root))
    if args.forget:
        require_named_forget_sets(task)
    for i, forget_set in enumerate(forget_sets):  # the base and classifier once; the oracle per forget set
        kinds = only if i == 0 else tuple(k for k in only if k == RETRAIN)
        if kinds:
            out = prepare(task, tier, task.load(args.data_root, forget_set), device, out=args.out, only=kinds,
                          force=args.force, progress=not args.no_progress, data_root=args.data_root)
    print(f"prepared {', '.join(only)} in {out}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from unlearnbench.gate import check_main
    from unlearnbench.validate import require_real

    require_real("--alpha", args.alpha, gt=0, lt=1)
    return check_main(args.results, args.baseline, update=args.update, alpha=args.alpha)


def cmd_report(args: argparse.Namespace) -> int:
    from unlearnbench.report import report_main

    for path in report_main(args.results, args.out):
        print(path)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from unlearnbench.export import export_main

    for path in export_main(args.results, args.fmt, args.out):
        print(path)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from unlearnbench.audit import audit_main

    return audit_main(args.folder, as_json=args.as_json)


def cmd_tune(args: argparse.Namespace) -> int:
    from unlearnbench.tuning import run_tuning

    _names("--methods", args.methods)
    return run_tuning(args)


if __name__ == "__main__":
    raise SystemExit(main())
