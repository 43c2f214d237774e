"""Checks of what the user asked for, made before any work starts, so that bad input fails with
one clear line instead of a traceback (or, worse, after an hour of training).

``UsageError`` is what the command line prints as ``error: ...`` and exits 2 on. The
``validate_*`` functions check resolved settings (after ``--set``) and name the field, the value
and the allowed range; ``coerce`` types one ``--set`` value (``unlearnbench.settings`` reads the key).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tempfile
import typing
from pathlib import Path
from typing import Any, Iterable

MAX_SEEDS = 10_000  # more seeds than this in one run is a typo (0-1000000), not a plan
SAMPLER_KINDS = ("ddpm", "ddim")


class UsageError(ValueError):
    """Bad input (a flag, a ``--set``, a setting out of range): the CLI prints it as one line and exits 2."""


class DataFileError(UsageError):
    """A data file that cannot be read (corrupt, truncated, not an image); the message names the file."""


def did_you_mean(word: str, choices: Iterable[str], same_first_letter: bool = False) -> str:
    """``"did you mean 'quick'? "`` for a close match among ``choices``, else ``""`` (to prefix a list).

    ``same_first_letter`` keeps only matches starting like ``word``: for short words such as commands,
    ``rnu`` is a typo of ``run`` but ``export`` is not one of ``report``."""
    close = difflib.get_close_matches(word, list(choices), n=2, cutoff=0.6)
    if same_first_letter:
        close = [c for c in close if c[:1] == word[:1]]
    return f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""


# ------------------------------------------------------------------------------------- ranges


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require_int(field: str, value: Any, low: int, high: int | None = None, high_is: str = "") -> None:
    """``value`` is an integer in [low, high] (``high_is`` says what the upper bound is)."""
    if _is_int(value) and value >= low and (high is None or value <= high):
        return
    allowed = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    raise UsageError(f"{field} = {value!r}: must be {allowed}{f' ({high_is})' if high_is else ''}")


def require_real(field: str, value: Any, *, gt: float | None = None, ge: float | None = None,
                 lt: float | None = None, le: float | None = None, finite: bool = True) -> None:
    """``value`` is a number (finite unless ``finite=False``) within the bounds given."""
    ok = _is_real(value) and not math.isnan(value) and (not finite or math.isfinite(value))
    ok = ok and (gt is None or value > gt) and (ge is None or value >= ge)
    ok = ok and (lt is None or value < lt) and (le is None or value <= le)
    if ok:
        return
    low = gt if gt is not None else ge
    high = lt if lt is not None else le
    if low is not None and high is not None:
        allowed = f"a number in {'(' if gt is not None else '['}{low:g}, {high:g}{')' if lt is not None else ']'}"
    elif low is not None:
        allowed = f"{'a finite' if finite else 'a'} number {'>' if gt is not None else '>='} {low:g}"
    elif high is not None:
        allowed = f"{'a finite' if finite else 'a'} number {'<' if lt is not None else '<='} {high:g}"
    else:
        allowed = "a finite number"
    raise UsageError(f"{field} = {value!r}: must be {allowed}")


def validate_loop(loop: Any, scope: str = "loop") -> None:
    """Range checks of a resolved ``LoopConfig`` (the unlearning loop's optimiser and batching)."""
    from unlearnbench.loop import PRECISIONS

    for name in ("steps", "batch_size", "grad_accum"):
        require_int(f"{scope}.{name}", getattr(loop, name), 1)
    require_real(f"{scope}.lr", loop.lr, gt=0)
    require_real(f"{scope}.weight_decay", loop.weight_decay, ge=0)
    require_real(f"{scope}.max_grad_norm", loop.max_grad_norm, gt=0, finite=False)  # inf: no clipping
    betas = loop.betas
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise UsageError(f"{scope}.betas = {betas!r}: must be two numbers in [0, 1), e.g. {scope}.betas=0.9,0.999")
    for i, beta in enumerate(betas):
        require_real(f"{scope}.betas[{i}]", beta, ge=0, lt=1)
    if loop.precision not in PRECISIONS:
        raise UsageError(f"{scope}.precision = {loop.precision!r}: must be one of {', '.join(PRECISIONS)}")


def validate_sampler(sampler: Any, scope: str = "sampler") -> None:
    """Range checks of a resolved ``SamplerConfig``."""
    for name in ("num_samples", "steps", "batch_size"):
        require_int(f"{scope}.{name}", getattr(sampler, name), 1)
    if sampler.kind not in SAMPLER_KINDS:
        raise UsageError(f"{scope}.kind = {sampler.kind!r}: {did_you_mean(str(sampler.kind), SAMPLER_KINDS)}"
                         f"must be one of {', '.join(SAMPLER_KINDS)}")


def validate_hparams(method_name: str, hparams: Any, retain_size: int | None = None) -> None:
    """Range checks of a method's resolved hyper-parameters.

    ReTrack's ``k`` (nearest retain neighbours) can be at most the retain-set size, known only once
    the task's data is loaded: pass ``retain_size`` then (``None`` checks ``k >= 1`` only).
    Every other number must be finite; ``lam`` (SISS's mixture, ReTrack's weight) lies in [0, 1].
    """
    values = dataclasses.asdict(hparams) if dataclasses.is_dataclass(hparams) else dict(vars(hparams))
    for name, value in values.items():
        field = f"{method_name}.{name}"
        if name == "k":
            require_int(field, value, 1, retain_size, "the retain-set size" if retain_size is not None else "")
        elif name == "lam":
            require_real(field, value, ge=0, le=1)
        elif _is_real(value):
            require_real(field, value)


# ------------------------------------------------------------------------------------- --set


_WORDS = {"nan": math.nan, "+nan": math.nan, "inf": math.inf, "+inf": math.inf, "infinity": math.inf,
          "+infinity": math.inf, "-inf": -math.inf, "-infinity": -math.inf, "true": True, "false": False}


def parse_value(raw: str) -> Any:
    """A ``--set`` value: a Python literal (``5``, ``1e-4``, ``(0.9, 0.999)``), ``nan``/``inf``/``-inf``,
    ``true``/``false``, ``a,b`` as a tuple, or else the text itself."""
    import ast

    text = raw.strip()
    if text.lower() in _WORDS:
        return _WORDS[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if "," in text:
        return tuple(parse_value(part) for part in text.strip("()[]").split(","))
    return text


def _type_name(hint: Any) -> str:
    return {int: "an integer", float: "a number", str: "text", bool: "true or false"}.get(hint, str(hint))


def coerce(field: str, value: Any, hint: Any, raw: str) -> Any:
    """``value`` as the type ``hint`` of the setting ``field`` (``raw``: the text given), or a UsageError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is str:
        return value if isinstance(value, str) else raw.strip()
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and _is_int(value):
        return value
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint is float and _is_real(value):
        return float(value)
    if origin is tuple and args and Ellipsis not in args and isinstance(value, (tuple, list)) and len(value) == len(args):
        return tuple(coerce(f"{field}[{i}]", v, a, str(v)) for i, (v, a) in enumerate(zip(value, args)))
    if origin is tuple and args and Ellipsis not in args:
        example = ",".join(["0.9", "0.999"][: len(args)] if len(args) == 2 else ["1"] * len(args))
        raise UsageError(f"--set {field}={raw}: {field} takes {len(args)} comma-separated values, e.g. "
                         f"--set {field}={example}")
    if hint in (int, float, bool):
        raise UsageError(f"--set {field}={raw}: {field} takes {_type_name(hint)}, not {value!r}")
    return value


# ------------------------------------------------------------------------------------- paths


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # "org/name": one slash, no leading dot


def looks_like_path(value: str) -> bool:
    """True for a value meant as a local path (``./x``, ``~/x``, ``/x``, ``a/b/c``), not a hub id (``org/name``)."""
    seps = {"/", os.sep, os.altsep or "/"}
    if value.startswith((".", "~", *seps)):
        return True
    if any(sep in value for sep in seps - {"/"}):
        return True
    return "/" in value and not _HUB_ID.fullmatch(value)


def validate_base_model(value: str | None, flag: str = "--base-model") -> None:
    """A ``--base-model`` that looks like a path must exist (else it would be looked up on the hub)."""
    if value and looks_like_path(value) and not Path(value).exists():
        hint = "; the ~ was not expanded: write the full path" if Path(value).expanduser().exists() else ""
        raise UsageError(f"{flag} {value} does not exist{hint}")


def ensure_writable_folder(path: Path, flag: str) -> None:
    """Create ``path`` if needed and write a temporary file in it, so that a file in the way or a
    read-only folder fails now rather than when the first record is written."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is not a writable folder: it is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UsageError(f"{flag} {path} is not a writable folder: {err.strerror or err}") from None


def forget_list(path: Path, how: str) -> str:
    """A forget set from a list file: its names (one a line; blank lines and ``#`` comments skipped) joined by
    ``+``; a missing or empty file is a ``UsageError`` ending with ``how`` (how to name them instead)."""
    if not path.is_file():
        raise UsageError(f"no such file {path}; {how}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.strip().startswith("#")]
    if not names:
        raise UsageError(f"{path} names no images (one a line); {how}")
    return "+".join(names)
