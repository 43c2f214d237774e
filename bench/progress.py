"""What a run says while it works: bars on a terminal, plain periodic lines otherwise, and a heartbeat for
phases that show no bar (a slow metric), so a run is never silent for long."""
from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable, Iterable

from tqdm.auto import tqdm

#: Seconds between two heartbeat lines of one phase.
HEARTBEAT = 30.0


def interactive() -> bool:
    """Whether stderr is a terminal (bars redraw in place there; in a log file they would be noise)."""
    return sys.stderr.isatty()


def bar(iterable: Iterable[Any], desc: str, enabled: bool, total: int | None = None) -> Iterable[Any]:
    """A tqdm bar on a terminal; elsewhere the plain iterable (the cell's heartbeat reports the phase)."""
    return tqdm(iterable, desc=desc, total=total, leave=False, disable=not (enabled and interactive()))


def duration(seconds: float) -> str:
    """``"42 s"``, ``"4 min"``, ``"1 h 5 min"``: how long, as a person says it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {seconds % 3600 / 60:.0f} min"


class Heartbeat:
    """A context whose ``phase`` a background thread reports every ``every`` seconds while it lasts:
    ``"  [retrack seed 0] scoring nll: 2 min so far (cell: 5 min)"``. ``say`` None: silent."""

    def __init__(self, say: Callable[[str], None] | None, label: str, every: float = HEARTBEAT) -> None:
        self.say, self.label, self.every = say, label, every
        self.phase = "starting"
        self._phase_started = self._started = time.perf_counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set(self, phase: str) -> None:
        """Enter a new phase (its clock starts now)."""
        self.phase, self._phase_started = phase, time.perf_counter()

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            now = time.perf_counter()
            line = (f"  [{self.label}] {self.phase}: {duration(now - self._phase_started)} so far "
                    f"(cell: {duration(now - self._started)})")
            if interactive():
                tqdm.write(line, file=sys.stderr)  # above the bars, not through them
            else:
                self.say(line)  # type: ignore[misc]

    def __enter__(self) -> "Heartbeat":
        if self.say is not None:
            self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
