"""What a run says while it works: position, ETA, a line per finished cell, heartbeats, no bars in a log."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from unlearnbench.cli import main
from unlearnbench.progress import Heartbeat, duration


def test_duration_reads_as_a_person_says_it() -> None:
    assert [duration(s) for s in (4, 89, 240, 5400, 7500)] == ["4 s", "89 s", "4 min", "1 h 30 min", "2 h 5 min"]


def test_a_heartbeat_reports_the_current_phase_until_it_ends() -> None:
    lines: list[str] = []
    with Heartbeat(lines.append, "retrack seed 0", every=0.05) as beat:
        beat.set("scoring nll (3/12)")
        time.sleep(0.3)
    ended = len(lines)
    time.sleep(0.15)
    assert ended >= 2 and len(lines) == ended  # it stops with the phase
    assert lines[-1].startswith("  [retrack seed 0] scoring nll (3/12): 0 s so far (cell: 0 s)")
    silent: list[str] = []
    with Heartbeat(None, "quiet", every=0.01):
        time.sleep(0.05)
    assert not silent


def test_a_run_says_where_it_is_and_what_each_cell_gave(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--tier", "smoke", "--methods", "naive_deletion,retrack", "--metrics", "forget_rate,is_clf",
                 "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "cell 1/2: naive_deletion seed 0 ..." in err
    assert "cell 2/2, about " in err and " left: retrack seed 0 ..." in err
    assert "  retrack seed 0 done in " in err and ": forget_rate " in err and "%, is_clf " in err
    assert "\r" not in err  # stderr is not a terminal here: no bars redrawn in place
