"""What a run needs and does not have, found before it starts (``run --dry-run``).

:func:`missing_inputs` checks, without downloading anything or loading a model: the task's data (the task's own
``load``, with the network closed), the membership population metrics need, the base model (a ``--base-model``
folder, or a hub id in the local Hugging Face cache), the prepared artefacts (base model, retrain oracle per
forget set, classifier) and the weights the asked metrics read (``--inception-weights``, ``--sscd-weights``,
``--clip-weights``). Each missing input comes with where it comes from: the flag, the command or the download.
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any, Iterator

from unlearnbench.artifacts import BASE, CLASSIFIER, RETRAIN
from unlearnbench.errors import ArtefactCorruptError
from unlearnbench.metrics import CLIP, INCEPTION, SSCD
from unlearnbench.protocols import CELEBA_HQ, CIFAR10
from unlearnbench.registry import METRICS
from unlearnbench.validate import looks_like_path

#: (what is missing, where it comes from: the flag, the command or the download)
Missing = tuple[str, str]

#: Task-defined metrics whose definition under a published protocol reads weights: the CIFAR-10 and
#: CelebA-HQ forget rate counts SSCD copies among the injections (ReTrack's evaluation).
PROTOCOL_METRIC_WEIGHTS: dict[str, dict[str, tuple[str, ...]]] = {
    CIFAR10: {"forget_rate": (SSCD,)}, CELEBA_HQ: {"forget_rate": (SSCD,)},
}

_FLAGS = {INCEPTION: "--inception-weights", SSCD: "--sscd-weights", CLIP: "--clip-weights"}


def metric_weights(metric: str, task: Any) -> tuple[str, ...]:
    """The kinds of user-supplied weights (``inception``, ``sscd``, ``clip``) ``metric`` reads on ``task``: what the
    task declares for its own definitions (``metric_weights``), else its protocol's (``PROTOCOL_METRIC_WEIGHTS``),
    else the metric's own ``Metric.weights``."""
    by_task = getattr(task, "metric_weights", None)
    if isinstance(by_task, dict) and metric in by_task:
        return tuple(by_task[metric])
    by_protocol = PROTOCOL_METRIC_WEIGHTS.get(str(getattr(task, "protocol", "")), {})
    if metric in by_protocol:
        return by_protocol[metric]
    return METRICS.get(metric).weights if metric in METRICS else ()


class _NoNetwork(OSError):
    pass


@contextlib.contextmanager
def dry() -> Iterator[None]:
    """Inside the block, refuse every connection and undo the folders made (a task's ``load`` may download its
    data into a folder it creates first; a dry run downloads nothing and leaves no empty folder behind)."""
    saved = socket.socket.connect, socket.create_connection, socket.getaddrinfo
    mkdir, made = os.mkdir, []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise _NoNetwork("a dry run downloads nothing")

    def tracked_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        mkdir(path, *args, **kwargs)
        made.append(path)

    socket.socket.connect, socket.create_connection, socket.getaddrinfo = refuse, refuse, refuse  # type: ignore[assignment]
    os.mkdir = tracked_mkdir  # os.makedirs and Path.mkdir create through it
    try:
        yield
    finally:
        socket.socket.connect, socket.create_connection, socket.getaddrinfo = saved  # type: ignore[assignment]
        os.mkdir = mkdir
        for path in reversed(made):  # newest first: a folder's sub-folders go before it
            with contextlib.suppress(OSError):  # not empty: something was written there, keep it
                os.rmdir(path)


def hub_cached(repo_id: str, subfolder: str | None = None) -> bool:
    """Whether the local Hugging Face cache holds ``repo_id`` (its config; nothing is asked online)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    names = ["model_index.json", "config.json", "unet/config.json"]
    if subfolder:
        names.insert(0, f"{subfolder}/config.json")
    for name in names:
        try:
            if isinstance(try_to_load_from_cache(repo_id, name), str):
                return True
        except Exception:  # a name the hub library refuses: not cached
            continue
    return False


def _hub_where(repo_id: str) -> str:
    return (f"the Hugging Face hub: downloaded into the local hub cache on first use when online; offline, run "
            f"`huggingface-cli download {repo_id} --local-dir FOLDER` on a machine with internet and pass "
            f"--base-model FOLDER")


def _names(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _data(bench: Any) -> list[Missing]:
    """The task's data and the membership population, by the task's own ``load`` (network closed)."""
    task = bench.task
    forget_sets = list(bench.forget_sets)
    if task.loads_own_base:  # its data are encoded by the base model: only their folders can be checked
        return _prepared_data(bench, forget_sets)
    out: list[Missing] = []
    loaded = []
    for i, forget_set in enumerate(forget_sets):
        label = f"data of {bench.task_name}" + (f" (forget set {forget_set})" if i else "")
        try:
            with dry():
                loaded.append(bench.data_for(forget_set))
        except FileNotFoundError as err:
            out.append((label, str(err)))
            break  # the other forget sets read the same files
        except Exception as err:  # unreadable or unsuitable data: the run would stop on it too
            out.append((label + " unusable", f"{type(err).__name__}: {err}"))
    holdout_metrics = [m for m in bench.metric_names if "holdout" in METRICS.get(m).task_needs]
    if holdout_metrics and loaded and loaded[0].holdout is None:
        out.append((f"membership population (holdout) for {_names(holdout_metrics)}",
                    loaded[0].holdout_source or "the task's data hold none"))
    return out


def _prepared_data(bench: Any, forget_sets: list[str | None]) -> list[Missing]:
    """Data a task builds itself (``prepare_data``: one folder per forget set under ``--data-root``)."""
    root = bench.opts.data_root
    name, tier = bench.task_name, bench.tier.name
    if not hasattr(bench.task, "prepare_data"):
        return []
    command = (f"`python run_bench.py prepare --task {name} --tier {tier} --prompts FILE --data-root DIR "
               f"--base-model {bench.opts.base_model or bench.tier.base_model or 'PIPELINE'}` builds them from FILE, "
               f"the prompt texts (.jsonl or .csv, one original and modified prompt per line; see "
               f"`python run_bench.py prepare --help` and the task's documentation)")
    named = [f for f in forget_sets if f is not None]
    if root is None:
        return [(f"--data-root DIR, the folder of {name}'s per-forget-set data"
                 + (f" ({len(named)} forget sets: {_names(named)})" if named else ""), command)]
    absent = [f for f in named if not (Path(root) / f).is_dir()]
    if absent:
        return [(f"{len(absent)} of {len(named)} forget-set folders under {root}: {_names(absent)}", command)]
    return []


def _base_model(bench: Any) -> list[Missing]:
    """A ``--base-model`` or the tier's published model that is neither a folder here nor in the hub cache."""
    given, tier = bench.opts.base_model, bench.tier
    source = given or tier.base_model
    if not source:
        return []
    subfolder = bench.opts.base_subfolder if given else tier.base_subfolder
    if Path(str(source)).expanduser().exists():
        return []
    if looks_like_path(str(source)):
        return [(f"base model folder {source}", "--base-model FOLDER: a diffusers model folder on this machine")]
    if hub_cached(str(source), subfolder):
        return []
    by = "--base-model" if given else f"tier {tier.name}"
    return [(f"base model {source} ({by}; not in the local Hugging Face cache)", _hub_where(str(source)))]


def _artefacts(bench: Any) -> list[Missing]:
    """Prepared artefacts (base, retrain oracle per forget set, classifier) the run would train first."""
    name, tier = bench.task_name, bench.tier
    needed = bench.needed_artifacts()
    if not needed:
        return []
    recipe = tier.base_training
    steps = f" ({recipe.steps:,} training steps" if recipe is not None else ""
    how = {
        BASE: f"the base model{steps + ')' if steps else ''}",
        RETRAIN: f"the retrain oracle{steps + ' on the retain set)' if steps else ''}",
        CLASSIFIER: "the classifier behind " + _names([m for m in bench.metric_names
                                                       if CLASSIFIER in METRICS.get(m).needs]),
    }
    absent: dict[str, list[str]] = {}  # kind -> the forget sets it is absent for ("" for a single one)
    for i, forget_set in enumerate(bench.forget_sets):
        kinds = needed if i == 0 else tuple(k for k in needed if k == RETRAIN)
        try:
            missing = bench.artifacts_for(forget_set).missing(kinds)
        except ArtefactCorruptError as err:
            return [(f"prepared artefacts of {name}/{tier.name} (corrupt)", str(err))]
        for kind in missing:
            absent.setdefault(kind, []).append(str(forget_set) if kind == RETRAIN and forget_set is not None else "")
    out: list[Missing] = []
    for kind in (k for k in (BASE, RETRAIN, CLASSIFIER) if k in absent):
        named = [f for f in absent[kind] if f]
        forget = f" for {len(named)} forget set(s): {_names(named)}" if named else ""
        out.append((f"prepared {kind}: {how[kind]}{forget}",
                    f"trained by `run` before the first cell, or ahead with `python run_bench.py prepare --task "
                    f"{name} --tier {tier.name} --only {kind}" + (" --forget SETS" if named else "") + "`"))
    return out


def _inception_where(cached: Path) -> str:
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3 as url
    except Exception:  # torch-fidelity's layout changed: name the project instead
        url = "torch-fidelity's GitHub releases"
    return (f"pass --inception-weights PATH to torch-fidelity's Inception-v3 weights ({url}); online, torch-fidelity "
            f"downloads them into {cached.parent} on first use")


def _weights(bench: Any) -> list[Missing]:
    """The weights the asked metrics read and this run is not given (or that are not where given)."""
    given = {INCEPTION: bench.opts.inception_weights, SSCD: bench.opts.sscd_weights, CLIP: bench.opts.clip_weights}
    users: dict[str, list[str]] = {}
    for metric in bench.metric_names:
        for kind in metric_weights(metric, bench.task):
            users.setdefault(kind, []).append(metric)
    out: list[Missing] = []
    for kind in (INCEPTION, SSCD, CLIP):
        if kind not in users:
            continue
        flag, path = _FLAGS[kind], given[kind]
        label = f"{kind.upper() if kind != INCEPTION else 'Inception-v3'} weights for {_names(users[kind])}"
        if path:
            if Path(path).expanduser().exists() or (kind == CLIP and not looks_like_path(path) and hub_cached(path)):
                continue
            if kind == CLIP and not looks_like_path(path):
                out.append((f"{label} ({flag} {path}: not in the local Hugging Face cache)", _clip_where()))
            else:
                out.append((f"{label} ({flag} {path} does not exist)", _where(kind)))
            continue
        if kind == INCEPTION:
            import torch

            from unlearnbench.metrics import INCEPTION_FILE

            cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
            if cached.exists():
                continue
            out.append((f"{label} (no {flag}, nothing at {cached})", _inception_where(cached)))
        else:
            out.append((f"{label} (no {flag})", _where(kind)))
    return out


def _clip_where() -> str:
    return ("pass --clip-weights FOLDER or a hub id: a Hugging Face CLIPModel with its tokenizer and image processor, "
            "e.g. openai/clip-vit-base-patch32 (downloaded on first use when online)")


def _where(kind: str) -> str:
    if kind == SSCD:
        from unlearnbench.sscd import DEFAULT_SSCD_FILE, SSCD_MODEL_ZOO

        return f"pass --sscd-weights PATH/{DEFAULT_SSCD_FILE}, downloaded from the SSCD model zoo ({SSCD_MODEL_ZOO})"
    if kind == CLIP:
        return _clip_where()
    import torch

    from unlearnbench.metrics import INCEPTION_FILE

    return _inception_where(Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE)


def missing_inputs(bench: Any) -> list[Missing]:
    """Every input the run of ``bench`` (a ``runner.Benchmark``) needs and does not have, with where it comes
    from: data, the membership population, the base model, prepared artefacts, metric weights."""
    return [*_data(bench), *_base_model(bench), *_artefacts(bench), *_weights(bench)]
