"""The leaderboard's ranking rules (docs/uncertainty.md, "Ranking rules"): a collapsed model takes no best on the
forgetting metrics, metrics whose target is the oracle are ranked by the distance to it, wall-clock is never ranked
(costs rank by UNet passes), and the sample figure shows each row's detected copies of the forget image. Synthetic
records throughout: every number is chosen so that the old rule (best by direction everywhere) gives another
answer."""
from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.utils import save_image

from unlearnbench import figures, table
from unlearnbench.metrics import Metric
from unlearnbench.registry import METRICS, load_all
from unlearnbench.report import (
    _best, _build_group, _copies, _display, render_csv, render_html, render_latex, render_markdown,
)

load_all()

DEVICE = {"type": "cpu", "cpu": "x86_64", "torch_threads": 2}
ORACLE_INFO = {"location": "package datasets/assets/t/quick/retrain", "steps": 6000, "batch_size": 64,
               "device": "cpu", "torch": "2.14.1", "prepared_at": "2026-11-28T10:35:06Z", "seconds": 2575.74}


def _record(method: str, seed: int, values: dict[str, float], spread: float = 0.01) -> dict[str, Any]:
    """A record with bootstrap replicates around each sample metric's value (costs store none)."""
    rng = np.random.default_rng(seed + 100 * len(method))
    metrics = {}
    for m, v in values.items():
        entry: dict[str, Any] = {"value": v, "higher_is_better": METRICS.get(m).higher_is_better,
                                 "implementation": METRICS.get(m).implementation}
        if METRICS.get(m).kind == "sample":
            entry["replicates"] = list(v + spread * rng.standard_normal(50))
        metrics[m] = entry
    rec = {"cell": {"task": "t", "tier": "x", "method": method, "seed": seed},
           "config": {"method": method, "seed": seed}, "status": "ok", "metrics": metrics, "device": DEVICE}
    if method == "retrain":
        rec["notes"] = {"oracle": ORACLE_INFO}
    return rec


def _group(rows: dict[str, dict[str, float]], seeds: int = 3):
    items = [(_record(method, s, {m: v + 0.001 * (s - 1) for m, v in values.items()}), None)
             for method, values in rows.items() for s in range(seeds)]
    group = _build_group("t", "x", items)
    return group, {r.method: i for i, r in enumerate(group.rows)}


# ------------------------------------------------------------------------------------------ the collapse floor

COLLAPSE = {  # neggrad forgets best by direction (0.0%) but its is_clf is 17% of the base model's
    "pretrain": {"forget_rate": 0.024, "is_clf": 6.0, "fid_clf": 25.0},
    "naive_deletion": {"forget_rate": 0.011, "is_clf": 5.9, "fid_clf": 56.0},
    "neggrad": {"forget_rate": 0.0, "is_clf": 1.04, "fid_clf": 240.0},  # fid_clf under the 10x ceiling (250)
    "erasediff": {"forget_rate": 0.004, "is_clf": 3.3, "fid_clf": 414.0},  # is_clf above the floor, fid_clf not
    "retrack": {"forget_rate": 0.002, "is_clf": 5.93, "fid_clf": 49.0},
    "retrain": {"forget_rate": 0.0, "is_clf": 6.29, "fid_clf": 22.0},
}


def test_collapsed_rows_are_marked_and_take_no_best_on_forgetting_metrics() -> None:
    assert METRICS.get("is_clf").quality and METRICS.get("is_clf").collapse == 0.5
    assert METRICS.get("fid_clf").quality and METRICS.get("fid_clf").collapse == 10.0
    assert not METRICS.get("forget_rate").quality and table.forgetting("forget_rate")
    group, at = _group(COLLAPSE)
    # is_clf below 0.5 x pretrain's 6.0 = 3.0 (higher is better); fid_clf above 10 x pretrain's 25 = 250 (lower is)
    assert {i: [c.metric for c in cs] for i, cs in group.collapsed.items()} == {at["neggrad"]: ["is_clf"],
                                                                               at["erasediff"]: ["fid_clf"]}
    best = _best(group)
    # by direction neggrad's 0.0% would be bold; collapsed rows are not candidates on forgetting metrics
    assert best["forget_rate"] == {at["retrack"]}
    assert at["neggrad"] not in best["forget_rate"] and at["erasediff"] not in best["forget_rate"]
    # nor marked indistinguishable from the best (‡) there, though neggrad is within 0.2 pp of retrack
    assert "best" not in group.marks["forget_rate"].get(at["neggrad"], set())
    # quality metrics keep them in the race (erasediff's 414 is simply not the best)
    assert best["is_clf"] == {at["retrack"]}
    cells, _ = _display(group)
    labels = cells[0].tolist()
    assert labels[at["neggrad"]] == "neggrad (collapsed)" and labels[at["erasediff"]] == "erasediff (collapsed)"
    assert labels[at["naive_deletion"]] == "naive_deletion" and labels[at["pretrain"]] == "pretrain"
    md = render_markdown([group], Path("."))
    assert "- neggrad (collapsed): is_clf 1.04 is below the floor 3.00 (0.5 × pretrain's 6.00)" in md
    assert "- erasediff (collapsed): fid_clf 414.00 is above the floor 250.00 (10 × pretrain's 25.00)" in md
    assert "is_clf < 0.5 × pretrain's 6.00 = 3.00" in md and "fid_clf > 10 × pretrain's 25.00 = 250.00" in md
    assert "**0.2% [" in md.split("| retrack ")[1].split("\n")[0]  # retrack's forget rate is the bold one
    page = render_html([group])
    assert 'class="collapsed" data-collapsed="is_clf" data-method="neggrad"' in page
    assert "<th scope=\"row\">neggrad (collapsed)</th>" in page
    assert r"neggrad (collapsed): is\_clf 1.04 is below the floor 3.00 (0.5 $\times$ pretrain's 6.00)" in \
        render_latex([group])
    frame = pd.read_csv(io.StringIO(render_csv([group]))).set_index("method")
    assert bool(frame.loc["neggrad", "collapsed"]) and frame.loc["erasediff", "collapsed_by"] == "fid_clf"
    assert not bool(frame.loc["retrack", "collapsed"])


def test_no_base_row_no_collapse_and_the_floor_is_validated() -> None:
    rows = {m: v for m, v in COLLAPSE.items() if m != "pretrain"}
    group, at = _group(rows)
    assert not group.collapsed and _best(group)["forget_rate"] == {at["neggrad"]}  # the rule needs the base row
    md = render_markdown([group], Path("."))
    assert "Collapse floors (fid_clf, is_clf) are not applied: no pretrain row." in md
    base = METRICS.get("is_clf")
    with pytest.raises(ValueError, match="collapse floor"):
        dataclasses.replace(base, quality=False)  # a floor only on a quality metric
    with pytest.raises(ValueError, match="collapse floor"):
        dataclasses.replace(base, collapse=2.0)  # higher is better: the floor is a fraction of the base's
    with pytest.raises(ValueError, match="collapse floor"):
        dataclasses.replace(METRICS.get("fid_clf"), collapse=0.5)  # lower is better: a multiple of it
    assert isinstance(dataclasses.replace(base, collapse=0.3), Metric)


def test_the_run_table_marks_collapsed_rows() -> None:
    records = [_record(m, s, v) for m, v in COLLAPSE.items() for s in range(2)]
    text, notes = table.comparison_table(records)
    assert "neggrad (collapsed)" in text and "naive_deletion (collapsed)" not in text
    assert any(n.startswith("neggrad (collapsed): is_clf 1.04 is below the floor 3.00") for n in notes)


# ------------------------------------------------------------------------------------------ oracle distance

TOWARDS = {  # ReTrack overshoots the oracle's NLL (largest), SISS lands next to it; mia_loss likewise
    "pretrain": {"nll": 2.68, "mia_loss": 1.0},
    "naive_deletion": {"nll": 2.76, "mia_loss": 1.0},
    "siss": {"nll": 4.85, "mia_loss": 0.957},
    "retrack": {"nll": 8.81, "mia_loss": 0.001},
    "retrain": {"nll": 5.19, "mia_loss": 0.626},
}


def test_oracle_target_metrics_are_ranked_by_distance_to_the_oracle() -> None:
    assert METRICS.get("nll").target == "oracle" and METRICS.get("mia_loss").target == "oracle"
    group, at = _group(TOWARDS)
    best = _best(group)
    # nll ↑ would pick retrack (8.81), mia_loss ↓ would pick retrack (0.001): the closest to the oracle is siss
    assert best["nll"] == {at["siss"]} and best["mia_loss"] == {at["siss"]}
    assert not any("best" in v for v in group.marks["nll"].values())  # no ‡ on these: † says "close to the oracle"
    cells, bold = _display(group)
    cols = {c: k for k, c in enumerate(cells.columns)}
    heads = _display.__globals__["_columns"](group)
    assert heads[2] == "nll ≈ oracle"
    assert bold.iloc[at["siss"], cols[2]] and not bold.iloc[at["retrack"], cols[2]]
    rule = "the bold row is the one whose mean is closest to the oracle's (smallest |row mean − oracle mean|)"
    md = render_markdown([group], Path("."))
    assert rule in md and "metrics marked ≈ oracle (nll, mia_loss) are ranked by the distance to the retrain" in md
    assert rule.replace("|", "$|$").replace("−", "$-$") in render_latex([group])
    assert rule in render_html([group]).replace("&#x27;", "'")
    # without an oracle row there is nothing to be close to: no best
    group, _ = _group({m: v for m, v in TOWARDS.items() if m != "retrain"})
    assert "nll" not in _best(group) and "mia_loss" not in _best(group)


# ------------------------------------------------------------------------------------------ costs


COSTS = {  # naive deletion's 584 s on a busy machine against siss' 7 s: wall-clock says nothing about the method
    "pretrain": {"forget_rate": 0.024, "unlearn_seconds": 0.0, "unet_forward": 0.0, "unet_backward": 0.0},
    "naive_deletion": {"forget_rate": 0.01, "unlearn_seconds": 584.0, "unet_forward": 50.0, "unet_backward": 50.0},
    "siss": {"forget_rate": 0.003, "unlearn_seconds": 7.0, "unet_forward": 50.0, "unet_backward": 100.0},
    "retrack": {"forget_rate": 0.0, "unlearn_seconds": 29.0, "unet_forward": 100.0, "unet_backward": 100.0},
    "retrain": {"forget_rate": 0.0, "unlearn_seconds": 2575.74, "unet_forward": 6000.0, "unet_backward": 6000.0},
}


def test_wall_clock_is_never_ranked_and_costs_rank_by_unet_passes() -> None:
    assert METRICS.get("unlearn_seconds").informational and not METRICS.get("unet_forward").informational
    group, at = _group(COSTS)
    best = _best(group)
    assert "unlearn_seconds" not in best  # siss' 7 s would be bold by direction
    # the fewest passes in total (50 + 50): naive deletion, in both columns; siss ties on forward passes alone
    assert best["unet_forward"] == {at["naive_deletion"]} and best["unet_backward"] == {at["naive_deletion"]}
    cells, bold = _display(group)
    col = _display.__globals__["_columns"](group).index("unlearn_seconds (info)")
    assert not bold[col].any()
    md = render_markdown([group], Path("."))
    assert ("- unlearn_seconds: wall-clock, informational only and never ranked: it depends on the machine and on "
            "its load; measured on cpu (CPU x86_64, 2 torch threads); the records hold no measure of the machine's "
            "load") in md
    assert "costs are ranked by UNet passes (unet_forward + unet_backward)" in md
    assert ("- retrain: its costs are not those of an unlearning run but of the training of its prepared weights, "
            "the same in each of its records (package datasets/assets/t/quick/retrain: 6000 steps of batch 64, on "
            "cpu, torch 2.14.1, prepared 2026-11-28T10:35:06Z, 2575.7 s)") in md
    assert "**" not in md.split("| naive_deletion ")[1].split("|")[3]  # 584 s, the slowest, and still not ranked


def test_a_recorded_machine_load_is_shown() -> None:
    rows, _ = table.build_rows([(dict(_record("siss", 0, {"unlearn_seconds": 7.0}),
                                      device={**DEVICE, "load": 3.5}), None)], ["unlearn_seconds"])
    note = table.cost_notes(rows, ["unlearn_seconds"])[0]
    assert "cpu (CPU x86_64, 2 torch threads, load 3.5)" in note and "hold no measure" not in note


def test_one_machine_is_named_once_with_the_range_of_its_loads() -> None:
    items = [(dict(_record(m, s, {"unlearn_seconds": 7.0}), device={**DEVICE, "load": load}), None)
             for (m, s), load in {("siss", 0): 0.98, ("siss", 1): 2.08, ("retrack", 0): 1.5}.items()]
    items.append((dict(_record("retrack", 1, {"unlearn_seconds": 9.0}), device={**DEVICE, "type": "cuda"}), None))
    rows, _ = table.build_rows(items, ["unlearn_seconds"])
    note = table.cost_notes(rows, ["unlearn_seconds"])[0]
    assert note.endswith("measured on cpu (CPU x86_64, 2 torch threads, load 0.98–2.08); "
                         "cuda (CPU x86_64, 2 torch threads)")
    assert table.heading("unlearn_seconds", False) == "unlearn_seconds (info)"  # no direction: never ranked


def test_metrics_skipped_for_one_reason_share_one_note() -> None:
    off = {"fid": "too slow here", "kid": "too slow here", "relearn_nll": "opt-in"}
    _, notes = table.comparison_table([_record("siss", 0, {"forget_rate": 0.01})], off)
    assert "fid, kid: not computed in this tier by default: too slow here" in notes
    assert "relearn_nll: not computed in this tier by default: opt-in" in notes


# ------------------------------------------------------------------------------------------ the copy panel


def _grid(path: Path, n: int, value: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.full((n, 1, 28, 28), value), path, nrow=8)
    return path


def test_copy_panel_shows_the_copies_framed_with_their_count(tmp_path: Path) -> None:
    grid = _grid(tmp_path / "grid.png", 64, 0.2)
    copies = {"pretrain (seed 0)": figures.Copies(_grid(tmp_path / "c.png", 24, 1.0), 24, 1024),
              "naive (seed 0)": figures.Copies(None, 10, 1024),  # an older record: count only
              "retrack (seed 0)": figures.Copies(None, 0, 1024)}
    fig = figures.samples_axes({label: grid for label in copies}, copies)
    axes = [ax for ax in fig.axes if ax.get_title()]  # the empty slots of the last line have none
    titles = [ax.get_title() for ax in axes]
    assert titles == ["pretrain (seed 0):\nrandom samples", "copies of the forget image:\n24 in 1024 samples",
                      "naive (seed 0):\nrandom samples", "copies of the forget image:\n10 in 1024 samples",
                      "retrack (seed 0):\nrandom samples", "copies of the forget image:\n0 in 1024 samples"]
    panel = axes[1]
    assert len(panel.patches) == 24  # each copy framed
    shown = panel.images[0].get_array()
    assert shown.shape == (242, 242, 3) and shown[2:30, 2:30].min() == 255  # the copies, at the grid's scale
    assert shown[-20:, -20:].max() < 255  # the canvas beyond them
    assert [t.get_text() for t in axes[3].texts] == ["copies not saved\nin this record"] and not axes[3].patches
    assert [t.get_text() for t in axes[5].texts] == ["no copies"]
    # without copies the figure is the grids alone, and the written PNG is narrower
    with_copies = figures.samples_figure({"a": grid}, tmp_path / "with.png", copies={"a": copies["pretrain (seed 0)"]})
    alone = figures.samples_figure({"a": grid}, tmp_path / "alone.png")
    assert Image.open(with_copies).size[0] > 1.5 * Image.open(alone).size[0]


def test_the_report_finds_each_records_copies(tmp_path: Path) -> None:
    rec = _record("pretrain", 0, {"forget_rate": 24 / 1024})
    rec["metrics"]["forget_rate"].update(extra={"copies": 24}, n_samples=1024)
    rec["sample_grid"] = "samples/r.png"
    record = tmp_path / "records" / "r.json"
    record.parent.mkdir()
    record.write_text(json.dumps(rec))
    _grid(tmp_path / "samples" / "r.png", 64, 0.2)
    assert _copies(rec, record) == figures.Copies(None, 24, 1024)  # an older record: no PNG of its copies
    png = _grid(tmp_path / "samples" / "r-copies.png", 24, 1.0)  # what bench/cell.py saves next to the grid
    assert _copies(rec, record) == figures.Copies(png, 24, 1024)
    rec["sample_copies"] = {"grid": "samples/r-copies.png", "count": 24, "n_samples": 1024}
    assert _copies(rec, record) == figures.Copies(png, 24, 1024)


def test_variant_labels_name_what_differs_without_scopes_or_bookkeeping() -> None:
    default = {"method": "salun", "hparams": {"base": "", "k": 10}, "loop": {"lr": 5e-5}, "user_overrides": {}}
    masked = {"method": "salun", "hparams": {"base": "retrack", "k": 10}, "loop": {"lr": 2e-4},
              "user_overrides": {"salun": {"base": "retrack"}, "loop": {"lr": 2e-4}}}
    labels = table._variant_labels("salun", {"a": default, "b": masked})
    assert labels == {"a": 'salun [base="", lr=5e-05]', "b": "salun [base=retrack, lr=0.0002]"}
    clash = table._variant_labels("m", {"a": {"hparams": {"lr": 1}, "loop": {"lr": 1}},
                                        "b": {"hparams": {"lr": 2}, "loop": {"lr": 3}}})
    assert clash == {"a": "m [hparams.lr=1, loop.lr=1]", "b": "m [hparams.lr=2, loop.lr=3]"}
    bare = table._variant_labels("m", {"a": {"hparams": {}, "loop": {"lr": 1}}, "b": {"loop": {"lr": 2}}})
    assert bare == {"a": "m [hparams={}, lr=1]", "b": "m [hparams=—, lr=2]"}  # a scope with no setting keeps its name
