"""Shared fixtures: an isolated artefact cache and the smoke-tier run every e2e test reuses."""
from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def smoke_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private UNLEARNBENCH_CACHE for every test (smoke artefacts are trained into it; nothing touches ~/.cache)."""
    path = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("UNLEARNBENCH_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def smoke_run(smoke_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default benchmark at the smoke tier, all methods, run once per session."""
    from unlearnbench.cli import main

    out = tmp_path_factory.mktemp("smoke-results")
    assert main(["run", "--tier", "smoke", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture()
def classifier_dir(tmp_path: Path) -> Path:
    """A random-weight small_cnn in the suite's classifier format (a stand-in for the trained classifier)."""
    from tests.standins import write_standin_classifier

    return write_standin_classifier(tmp_path / "classifier-standin")
