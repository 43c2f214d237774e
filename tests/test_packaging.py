"""Packaging: the folders bench/, methods/ and datasets/ install as ONE package, `unlearnbench`.

Nothing named `datasets`, `methods` or `bench` may become importable at the top level (it
would shadow Hugging Face's `datasets` and friends), neither from the installed package, nor
from a wheel, nor when `run_bench.py` is started from the repository root.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHADOWABLE = ("datasets", "methods", "bench")


def _env() -> dict[str, str]:
    """The test's environment without PYTHONPATH (which could put the checkout on sys.path)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _python(code: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


# Printed by the subprocesses: for each top-level name, where (if anywhere) it would import from.
_SPEC_REPORT = """
import importlib.util, json
def where(name):
    spec = importlib.util.find_spec(name)
    if spec is None:
        return None
    return {"origin": spec.origin, "locations": list(spec.submodule_search_locations or [])}
"""


def _inside_repo(path: str | None) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(REPO)


def _assert_not_from_repo(found: dict, context: str) -> None:
    for name in SHADOWABLE:
        spec = found[name]
        if spec is None:
            continue
        paths = [spec["origin"], *spec["locations"]]
        assert not any(_inside_repo(p) for p in paths), f"{context}: top-level {name!r} resolves into the repo: {spec}"


def test_installed_package_imports_from_the_checkout_without_top_level_names(tmp_path: Path) -> None:
    proc = _python(_SPEC_REPORT + """
import unlearnbench, unlearnbench.methods, unlearnbench.datasets
print(json.dumps({
    "files": {m.__name__: m.__file__ for m in (unlearnbench, unlearnbench.methods, unlearnbench.datasets)},
    "specs": {name: where(name) for name in ("datasets", "methods", "bench")},
}))
""", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    files = {k: Path(v).resolve() for k, v in out["files"].items()}
    assert files["unlearnbench"] == REPO / "bench" / "__init__.py"
    assert files["unlearnbench.methods"] == REPO / "methods" / "__init__.py"
    assert files["unlearnbench.datasets"] == REPO / "datasets" / "__init__.py"
    _assert_not_from_repo(out["specs"], "cwd outside the repo")


def _working_tree_copy(dest: Path) -> Path:
    """What a fresh clone would hold: tracked files plus untracked files git does not ignore.

    Building from a copy keeps build/ and *.egg-info out of the checkout and keeps stale files
    (an old build/lib, ignored training checkpoints under datasets/assets) out of the wheel.
    """
    if shutil.which("git") is None:
        pytest.skip("git is needed to list the working tree's files")
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, check=True).stdout.decode()
    for rel in filter(None, listing.split("\0")):
        src = REPO / rel
        if not src.is_file():  # deleted in the working tree but still in the index
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dest


def test_wheel_contains_only_the_unlearnbench_package(tmp_path: Path) -> None:
    src = _working_tree_copy(tmp_path / "src")
    wheels = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                           "--no-cache-dir", "-q", "-w", str(wheels)],
                          cwd=src, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = wheels.glob("unlearnbench-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    dist_info = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    assert len(dist_info) == 1
    strays = [n for n in names if n.split("/")[0] not in {"unlearnbench", *dist_info}]
    assert not strays, f"files outside unlearnbench/ in the wheel: {strays}"
    assert not any(n.split("/")[0] in SHADOWABLE for n in names)
    for required in ("unlearnbench/__init__.py", "unlearnbench/registry.py", "unlearnbench/cli.py",
                     "unlearnbench/methods/__init__.py", "unlearnbench/methods/retrack.py",
                     "unlearnbench/datasets/__init__.py", "unlearnbench/datasets/mnist_tshirt/__init__.py",
                     "unlearnbench/datasets/mnist_tshirt/task.py",
                     "unlearnbench/datasets/assets/mnist_tshirt_mini/quick/manifest.json"):
        assert required in names, f"{required} missing from the wheel"
    # every method module of the checkout made it in
    for module in (REPO / "methods").glob("*.py"):
        assert f"unlearnbench/methods/{module.name}" in names
    # and every module of every task folder (one package per task under datasets/)
    task_modules = [m for m in (REPO / "datasets").rglob("*.py") if "assets" not in m.relative_to(REPO).parts]
    assert any(m.parent != REPO / "datasets" for m in task_modules)
    for module in task_modules:
        assert f"unlearnbench/datasets/{module.relative_to(REPO / 'datasets').as_posix()}" in names
    assert "unlearnbench = unlearnbench.cli:main" in entry_points.replace("  ", " ")


def test_run_bench_from_repo_root_lists_tasks() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "run_bench.py"), "ls", "tasks"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    assert "mnist_tshirt_mini" in listed and "mnist_tshirt" in listed


def test_run_bench_drops_the_repo_root_from_sys_path() -> None:
    # Control: a plain interpreter in the repo root DOES see the folders as top-level packages
    # (so the check below can fail) ...
    control = _python(_SPEC_REPORT + """
print(json.dumps({name: where(name) for name in ("datasets", "methods", "bench")}))
""", cwd=REPO)
    assert control.returncode == 0, control.stderr
    seen = json.loads(control.stdout.strip().splitlines()[-1])
    assert seen["datasets"] is not None and _inside_repo(seen["datasets"]["origin"])

    # ... and run_bench.py removes that entry before anything is imported.
    proc = _python(_SPEC_REPORT + f"""
import runpy, sys
runpy.run_path({str(REPO / "run_bench.py")!r}, run_name="not_main")
print(json.dumps({{name: where(name) for name in ("datasets", "methods", "bench")}}))
""", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    _assert_not_from_repo(json.loads(proc.stdout.strip().splitlines()[-1]), "after run_bench.py")
