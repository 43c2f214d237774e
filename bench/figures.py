"""Figures of the leaderboard (``run_bench.py report``): matplotlib, Agg, PNG, byte-reproducible.

Every function takes plain data (no records), writes one PNG and returns its path, or returns
``None`` — after appending the reason to ``skipped`` and removing a stale PNG of the same name —
when its inputs are absent (no forget rate, no ``training.evaluations``, no sample grids).

Determinism: figures are drawn on a bare ``Figure`` + Agg canvas (no pyplot state, no global
backend switch) under matplotlib's default style with a fixed font, dpi and hash salt, and saved
with ``metadata={"Software": None}``, so the same inputs give the same bytes.
"""
from __future__ import annotations

import io
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from unlearnbench.io import atomic_write_bytes
from unlearnbench.table import arrow

DPI = 100
RC = {
    "svg.hashsalt": "unlearnbench",
    "font.family": "DejaVu Sans",  # ships with matplotlib: the same glyphs on every machine
    "font.size": 9,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "text.usetex": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
#: What the trade-off plot's error bars are, as its legend says.
ERROR_BARS = "error bars: 95% interval of the seed mean"
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "<", ">", "h", "*", "p")

#: (mean, lower, upper) of one metric for one leaderboard row: its mean over seeds and the 95% interval drawn as
#: its error bar (lower = upper = mean when nothing varies); None where the row has no value.
Stat = tuple[float, float, float] | None


@contextmanager
def _style() -> Iterator[None]:
    with matplotlib.style.context("default"), matplotlib.rc_context(RC):
        yield


def _colour(i: int) -> tuple[float, float, float, float]:
    return matplotlib.colormaps["tab10"](i % 10)


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, facecolor="white")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _skip(path: Path, reason: str, skipped: list[str] | None) -> None:
    path.unlink(missing_ok=True)  # never leave a stale figure from an earlier report behind
    if skipped is not None:
        skipped.append(reason)


def pareto_front(points: Mapping[str, tuple[float, float]], x_higher_is_better: bool,
                 y_higher_is_better: bool) -> list[str]:
    """The non-dominated labels, ordered by x: no other point is at least as good on both axes
    and strictly better on one (each axis in its own declared direction)."""
    sign = (-1.0 if x_higher_is_better else 1.0, -1.0 if y_higher_is_better else 1.0)
    cost = {k: (sign[0] * x, sign[1] * y) for k, (x, y) in points.items()}
    front = [k for k, (a, b) in cost.items()
             if not any(c <= a and d <= b and (c < a or d < b) for j, (c, d) in cost.items() if j != k)]
    return sorted(front, key=lambda k: (points[k][0], points[k][1], k))


def tradeoff_figure(stats: Mapping[str, Mapping[str, Stat]], directions: Mapping[str, bool | None],
                    path: Path, title: str = "", skipped: list[str] | None = None,
                    references: Sequence[str] = ()) -> Path | None:
    """Forget rate (x, %) against quality: one panel for ``fid`` (when any row has it) or else
    ``fid_clf``, one for ``is_clf``; a point per row at its seed mean, error bars = its 95% interval (as
    the legend says), the Pareto front of each panel drawn as a line.

    ``stats``: row label -> metric -> (mean, lower, upper) or None, in leaderboard row order.
    """
    def has(metric: str) -> bool:
        return any(s.get(metric) is not None for s in stats.values())

    if not has("forget_rate") or directions.get("forget_rate") is None:
        _skip(path, "trade-off plot: no forget_rate values", skipped)
        return None
    fid = "fid" if has("fid") else "fid_clf"
    panels = [m for m in (fid, "is_clf") if has(m) and directions.get(m) is not None]
    if not panels:
        _skip(path, "trade-off plot: no fid, fid_clf or is_clf values", skipped)
        return None
    labels = list(stats)
    with _style():
        fig = Figure(figsize=(5.2 * len(panels), 4.6), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        handles: dict[str, object] = {}
        for ax, metric in zip(axes, panels):
            points: dict[str, tuple[float, float]] = {}
            for i, label in enumerate(labels):
                fr, q = stats[label].get("forget_rate"), stats[label].get(metric)
                if fr is None or q is None:
                    continue
                points[label] = (100 * fr[0], q[0])
                # the interval's own ends (a bootstrap interval of FID may lie wholly above the mean: not mean ± e)
                ax.plot([100 * fr[1], 100 * fr[2]], [q[0], q[0]], color=_colour(i), linewidth=1.2)
                ax.plot([100 * fr[0], 100 * fr[0]], [q[1], q[2]], color=_colour(i), linewidth=1.2)
                (h,) = ax.plot(100 * fr[0], q[0], MARKERS[i % len(MARKERS)], color=_colour(i), markersize=7,
                               linestyle="none", label=label)
                handles.setdefault(label, h)
            # The front is over the unlearning methods: the oracle and the untouched base are references.
            candidates = {k: v for k, v in points.items() if k not in references}
            front = pareto_front(candidates, bool(directions.get("forget_rate")), bool(directions[metric]))
            if front:  # a dashed line through the front, each of its points ringed (visible for one point too)
                (line,) = ax.plot([points[k][0] for k in front], [points[k][1] for k in front], "--", color="0.35",
                                  linewidth=1.2, marker="o", markersize=14, markerfacecolor="none",
                                  markeredgecolor="0.35", zorder=0, label="Pareto front")
                handles.setdefault("Pareto front", line)
            xmax = max((100 * stats[k]["forget_rate"][2] for k in points), default=0.0)
            ax.set_xlim(-0.05 * max(xmax, 1.0), max(1.1 * xmax, 1.0))  # rates are >= 0: no negative axis
            ax.set_xlabel(f"forget rate (%){arrow(directions.get('forget_rate'))}")
            ax.set_ylabel(f"{metric}{arrow(directions[metric])}")
            values = [q for _, q in points.values() if q > 0]
            if values and min(values) > 0 and max(values) / min(values) > 100:  # e.g. a collapsed model's FID
                ax.set_yscale("log")
            ax.set_title(f"forget rate vs {metric}")
        handles.setdefault(ERROR_BARS, Line2D([], [], color="0.35", marker="|", linestyle="-", markersize=8))
        fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                   ncol=min(len(handles), 5), frameon=False)
        if title:
            fig.suptitle(title)
        return _save(fig, path)


#: Where a cell's detected copies of the forget image are saved, next to its sample grid (``samples/<record>.png``).
COPIES_SUFFIX = "-copies"
COPIES_COLOUR = "#d62728"


@dataclass(frozen=True)
class Copies:
    """The samples of one cell detected as copies of the forget image, among all its generated samples.

    ``png``: a grid of the copies (``samples/<record>-copies.png``, 8 a row, the first 64), None when the record
    saved none; ``count``: how many samples are copies (``metrics.forget_rate.extra.copies``), None when unknown;
    ``n_samples``: how many samples were searched."""

    png: Path | None
    count: int | None
    n_samples: int | None = None


def copies_title(copies: Copies | None) -> str:
    """The copy panel's title: the count of copies among the samples searched."""
    if copies is None or copies.count is None:
        return "copies of the forget image: not counted"
    among = f" in {copies.n_samples} samples" if copies.n_samples else ""
    more = " (first 64 shown)" if copies.count > 64 and copies.png is not None else ""
    return f"copies of the forget image:\n{copies.count}{among}{more}"


def _tiles(width: int, height: int, grid: tuple[int, int] | None) -> int | None:
    """The tile size of a ``save_image`` grid (8 a row, padding 2) whose full 8-wide grid is ``grid`` (w, h), or
    None when the sizes do not fit that layout."""
    if grid is None or (grid[0] - 2) % 8:
        return None
    size = (grid[0] - 2) // 8 - 2
    return size if size > 0 and (width - 2) % (size + 2) == 0 and (height - 2) % (size + 2) == 0 else None


def copies_panel(ax: object, copies: Copies | None, like: np.ndarray | None = None) -> str:
    """Draw a cell's copy panel on ``ax``: its detected copies of the forget image on a canvas the size of the random
    grid ``like`` (so both show samples at one scale), each copy framed in red, the panel framed in red and titled
    with the count (``copies_title``); a sentence instead of images when there is no copy, or when the record saved
    none ("copies not saved in this record"). Returns the title."""
    from matplotlib.patches import Rectangle
    from PIL import Image

    title = copies_title(copies)
    png = copies.png if copies is not None and copies.png is not None and Path(copies.png).is_file() else None
    canvas = np.full(like.shape if like is not None else (242, 242, 3), 235, dtype=np.uint8)
    message = None
    frames: list[tuple[int, int, int]] = []
    if png is not None:
        with Image.open(png) as im:
            pixels = np.asarray(im.convert("RGB"))
        h, w = min(pixels.shape[0], canvas.shape[0]), min(pixels.shape[1], canvas.shape[1])
        canvas[:h, :w] = pixels[:h, :w]
        full = (canvas.shape[1], canvas.shape[0]) if like is not None else None
        size = _tiles(pixels.shape[1], pixels.shape[0], full)
        if size is not None and copies.count:
            per_row = (pixels.shape[1] - 2) // (size + 2)
            rows = (pixels.shape[0] - 2) // (size + 2)
            frames = [(2 + c * (size + 2), 2 + r * (size + 2), size)
                      for k in range(min(copies.count, per_row * rows)) for r, c in [divmod(k, per_row)]]
    elif copies is None or copies.count is None:
        message = "no copy count\nin this record"
    elif copies.count == 0:
        message = "no copies"
    else:
        message = "copies not saved\nin this record"
    ax.imshow(canvas, interpolation="nearest")
    for x, y, size in frames:
        ax.add_patch(Rectangle((x - 1.5, y - 1.5), size + 2, size + 2, fill=False, edgecolor=COPIES_COLOUR,
                               linewidth=1.0))
    if message:
        ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.25")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(COPIES_COLOUR)
        spine.set_linewidth(2.0)
    ax.set_title(title, fontsize=8, color=COPIES_COLOUR)
    return title


def samples_axes(grids: Mapping[str, Path], copies: Mapping[str, Copies | None] | None = None,
                 title: str = "") -> Figure:
    """The sample figure (``samples_figure``) as a matplotlib ``Figure``: per row its random grid, titled with the
    row label, and with ``copies`` beside it its copy panel (``copies_panel``)."""
    from PIL import Image

    pair = 2 if copies is not None else 1
    per_line = 3 if copies is not None else 5
    ncols = min(len(grids), per_line)
    nrows = math.ceil(len(grids) / ncols)
    fig = Figure(figsize=(2.6 * ncols * pair, 2.9 * nrows + (0.3 if title else 0)), layout="constrained")
    axes = fig.subplots(nrows, ncols * pair, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    for k, (label, png) in enumerate(grids.items()):
        with Image.open(png) as im:
            pixels = np.asarray(im.convert("RGB"))
        ax = axes[k * pair]
        ax.imshow(pixels, interpolation="nearest")
        wrapped = label.replace(" [", "\n[", 1)  # a configuration's settings on their own line
        ax.set_title(wrapped if copies is None else f"{wrapped}:\nrandom samples", fontsize=9)
        if copies is not None:
            panel = axes[k * pair + 1]
            panel.set_axis_on()
            copies_panel(panel, copies.get(label), like=pixels)
    if title:
        fig.suptitle(title)
    return fig


def samples_figure(grids: Mapping[str, Path | None], path: Path, title: str = "",
                   skipped: list[str] | None = None, copies: Mapping[str, Copies | None] | None = None) -> Path | None:
    """One panel per row: the sample grid PNG of its first seed, titled with the row label; with ``copies`` (row
    label -> ``Copies``), beside it the detected copies of the forget image among all that cell's samples, framed in
    red with their count (``copies_panel``)."""
    present = {label: p for label, p in grids.items() if p is not None and Path(p).is_file()}
    missing = [label for label in grids if label not in present]
    if not present:
        _skip(path, "sample grids: no record's sample_grid PNG was found", skipped)
        return None
    if missing and skipped is not None:
        skipped.append(f"sample grids: no PNG for {', '.join(missing)}")
    with _style():
        return _save(samples_axes(present, copies, title), path)


def forget_curve_figure(curves: Mapping[str, Sequence[Sequence[Mapping[str, float]]]], path: Path,
                        references: Mapping[str, float] | None = None, title: str = "",
                        skipped: list[str] | None = None, higher_is_better: bool | None = None) -> Path | None:
    """Forget rate (%) against unlearning step: per row, the mean over seeds at each evaluated
    step with a ± population std band (labelled in the legend). ``curves``: label -> one list of
    ``{step, forget_rate}`` per seed;
    ``references``: label -> forget rate drawn as a horizontal dashed line (pretrain, retrain)."""
    usable = {label: seeds for label, seeds in curves.items()
              if any(ev.get("forget_rate") is not None for evs in seeds for ev in evs)}
    if not usable:
        _skip(path, "forget rate vs step: no record has training.evaluations (run with --eval-every N)", skipped)
        return None
    with _style():
        fig = Figure(figsize=(7.0, 4.4), layout="constrained")
        ax = fig.subplots()
        first = next(label for label in curves if label in usable)
        for i, label in enumerate(curves):
            if label not in usable:
                continue
            by_step: dict[int, list[float]] = {}
            for evs in usable[label]:
                for ev in evs:
                    if ev.get("forget_rate") is not None:
                        by_step.setdefault(int(ev["step"]), []).append(100 * float(ev["forget_rate"]))
            steps = sorted(by_step)
            mean = np.array([np.mean(by_step[s]) for s in steps])
            std = np.array([np.std(by_step[s]) for s in steps])
            ax.plot(steps, mean, marker=MARKERS[i % len(MARKERS)], color=_colour(i), label=label, markersize=4)
            ax.fill_between(steps, mean - std, mean + std, color=_colour(i), alpha=0.15, linewidth=0,
                            label="band: ± population std over seeds" if label == first else None)
        for j, (label, value) in enumerate((references or {}).items()):
            ax.axhline(100 * value, linestyle=(0, (4, 2 + 2 * j)), color=str(0.2 + 0.3 * j), linewidth=1,
                       label=f"{label} (no unlearning steps)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("unlearning step")
        ax.set_ylabel(f"forget rate (%){arrow(higher_is_better)}")
        ax.set_ylim(bottom=0)
        ax.legend(loc="best", frameon=False)
        if title:
            ax.set_title(title)
        return _save(fig, path)
