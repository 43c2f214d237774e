"""Plugins by entry points: the example package end to end, and what a broken plugin does to the suite."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from unlearnbench.registry import PluginError, Registry

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "unlearnbench-example-plugin"


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "run_bench.py"), *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The example plugin installed (by pip, from its folder) into a private site folder on PYTHONPATH, so the
    other tests never see its method."""
    site = tmp_path_factory.mktemp("plugin-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(EXAMPLE)], check=True, capture_output=True, timeout=300)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def test_ls_shows_the_plugin_entries_with_their_package(plugin_env: dict[str, str]) -> None:
    methods = _run(["ls", "methods"], plugin_env)
    metrics = _run(["ls", "metrics"], plugin_env)
    assert methods.returncode == 0 and metrics.returncode == 0, methods.stderr + metrics.stderr
    row = next(line for line in methods.stdout.splitlines() if line.startswith("neggrad_plus "))
    assert "unlearnbench-example-plugin 0.1.0" in row
    assert "unlearnbench 0." in next(line for line in methods.stdout.splitlines() if line.startswith("retrack "))
    assert "unlearnbench-example-plugin 0.1.0" in next(
        line for line in metrics.stdout.splitlines() if line.startswith("nearest_forget_l2 "))


def test_the_example_plugin_runs_end_to_end_on_the_smoke_tier(plugin_env: dict[str, str], tmp_path: Path) -> None:
    env = {**plugin_env, "UNLEARNBENCH_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "results"
    done = _run(["run", "--tier", "smoke", "--methods", "naive_deletion,neggrad_plus", "--metrics",
                 "forget_rate,nearest_forget_l2", "--set", "neggrad_plus.beta=0.9", "--out", str(out),
                 "--no-progress"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    records = {json.loads(p.read_text())["cell"]["method"]: json.loads(p.read_text())
               for p in (out / "records").glob("*.json")}
    plugin, built_in = records["neggrad_plus"], records["naive_deletion"]
    assert plugin["status"] == "ok"
    assert plugin["config"]["method_origin"] == {"package": "unlearnbench-example-plugin", "version": "0.1.0"}
    assert plugin["config"]["hparams"] == {"beta": 0.9}
    assert "method_origin" not in built_in["config"]  # built-in cells keep the identity they always had
    for record in (plugin, built_in):
        assert record["config"]["metric_origins"]["nearest_forget_l2"]["package"] == "unlearnbench-example-plugin"
        value = record["metrics"]["nearest_forget_l2"]
        assert value["value"] >= 0 and value["higher_is_better"] is True
    assert "neggrad_plus" in (out / "table.md").read_text()


# ------------------------------------------------------------------ broken plugins, by fake distributions


def _fake_distribution(site: Path, name: str, entry_points: str, modules: dict[str, str]) -> None:
    """An installed distribution as pip leaves it: ``<name>-0.3.dist-info`` with METADATA and entry points."""
    info = site / f"{name.replace('-', '_')}-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


GOOD = """
    from unlearnbench.method import FineTuneMethod

    class Copycat(FineTuneMethod):
        '''A plugin method that is fine.'''

        def loss(self, ctx, batch):
            raise NotImplementedError
"""


@pytest.fixture()
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    _fake_distribution(site, "good-plugin", """
        [fake.methods]
        copycat = good_plugin_mod:Copycat
    """, {"good_plugin_mod": GOOD})
    _fake_distribution(site, "broken-plugin", """
        [fake.methods]
        crashes = broken_plugin_mod:Method
        retrack = good_plugin_mod:Copycat
        not_a_method = broken_plugin_mod2:NotAMethod
    """, {"broken_plugin_mod": "raise ImportError('needs a library that is not installed')\n",
          "broken_plugin_mod2": "class NotAMethod:\n    pass\n"})
    monkeypatch.syspath_prepend(str(site))
    return site


def _registry() -> Registry:
    """A method registry like the suite's (one built-in lazy entry), reading the fake group."""
    return Registry("method", "unlearnbench.method:Method",
                    lambda r: r.add_lazy("retrack", "unlearnbench.methods.retrack:ReTrack"), group="fake.methods")


def test_a_good_plugin_loads_with_its_origin(plugin_site: Path, capsys: pytest.CaptureFixture) -> None:
    registry = _registry()
    cls = registry.get("copycat")
    assert cls.name == "copycat"
    assert registry.origin("copycat") == {"package": "good-plugin", "version": "0.3"}
    assert registry.origin("retrack")["package"] == "unlearnbench"


def test_broken_plugins_are_set_aside_and_the_rest_works(plugin_site: Path, capsys: pytest.CaptureFixture) -> None:
    registry = _registry()
    assert sorted(registry.names()) == ["copycat", "retrack"]
    warned = capsys.readouterr().err
    assert "broken-plugin 0.3" in warned and "crashes = broken_plugin_mod:Method" in warned
    assert "needs a library that is not installed" in warned
    assert "'retrack'" in warned and "already registered by unlearnbench" in warned
    assert "must be a unlearnbench.method.Method" in registry.broken["not_a_method"]
    assert registry.origin("retrack")["package"] == "unlearnbench"  # the built-in keeps its name
    for name in ("crashes", "not_a_method"):
        with pytest.raises(PluginError, match=f"plugin '{name}' of package broken-plugin 0.3"):
            registry.get(name)


def test_the_docs_show_the_example_plugins_real_entry_points() -> None:
    """docs/extending.md quotes the example's entry points: they must be the ones the example declares."""
    import tomllib

    declared = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]["entry-points"]
    docs = (REPO / "docs" / "extending.md").read_text()
    assert set(declared) == {"unlearnbench.methods", "unlearnbench.metrics"}
    for group, points in declared.items():
        assert f'[project.entry-points."{group}"]' in docs
        for name, target in points.items():
            assert f'{name} = "{target}"' in docs
