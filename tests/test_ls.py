"""``ls`` answers from the shipped catalogue without importing the heavy stack, and the catalogue is the registry's."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from unlearnbench import catalog

HEAVY = ("torch", "diffusers", "transformers", "torch_fidelity", "faiss")


def test_ls_imports_none_of_the_heavy_stack() -> None:
    code = ("import sys; from unlearnbench.cli import main\n"
            "assert all(main(['ls', w]) == 0 for w in ('methods', 'tasks', 'metrics'))\n"
            f"print(sorted(set(sys.modules) & set({HEAVY!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "selective_amnesia" in done.stdout and "image_folder" in done.stdout and "mia_loss" in done.stdout


def test_the_shipped_catalogue_is_the_registrys() -> None:
    shipped = json.loads(catalog.SHIPPED.read_text())
    assert shipped["fingerprint"] == catalog.fingerprint(), "stale: run `python -m unlearnbench.catalog`"
    assert shipped == catalog.build(), "stale: run `python -m unlearnbench.catalog`"


def test_descriptions_are_whole_sentences() -> None:
    for row in catalog.load()["methods"]:
        assert row["description"].rstrip(")").endswith("."), row


def test_a_stale_catalogue_is_rebuilt_into_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "shipped.json"
    stale.write_text(json.dumps({"fingerprint": "an edit ago", "methods": [], "tasks": [], "metrics": []}))
    monkeypatch.setattr(catalog, "SHIPPED", stale)
    monkeypatch.setenv("UNLEARNBENCH_CACHE", str(tmp_path / "cache"))
    built = catalog.load()
    assert built["methods"] and (tmp_path / "cache" / "catalog.json").exists()
    monkeypatch.setattr(catalog, "build", lambda: pytest.fail("the cached catalogue should have been used"))
    assert catalog.load() == built
