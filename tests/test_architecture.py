"""The rooms of the code base and what each may import (docs/architecture.md), checked.

- ``bench/`` (the harness) imports no task and no method: it reaches them only through the
  registry's lazy entries;
- adding a method is one new file under ``methods/``: nothing to list, order or register elsewhere;
- the suite's version is stated once; no file cites a reference document users do not have.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import unlearnbench

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("unlearnbench.datasets", "unlearnbench.methods")


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (absolute names), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def test_the_harness_imports_no_task_and_no_method() -> None:
    offending = [f"{path.relative_to(REPO)}:{line}: {name}"
                 for path in sorted((REPO / "bench").glob("*.py"))
                 for line, name in _imports(path)
                 if name.startswith(FORBIDDEN) or name in ("unlearnbench.datasets", "unlearnbench.methods")]
    assert not offending, "bench/ must reach tasks and methods through the registry only:\n" + "\n".join(offending)


def test_methods_and_tasks_do_not_import_each_other() -> None:
    """A method is a formula on the shared loop (no task knowledge); a task knows no method."""
    offending = []
    for folder, other in (("methods", "unlearnbench.datasets"), ("datasets", "unlearnbench.methods")):
        for path in sorted((REPO / folder).rglob("*.py")):
            offending += [f"{path.relative_to(REPO)}:{line}: {name}" for line, name in _imports(path)
                          if name.startswith(other)]
    assert not offending, "\n".join(offending)


TRIVIAL_METHOD = '''
"""keep_training: half-weighted DDPM fine-tuning on the retain set (a trivial method for the architecture test)."""
from __future__ import annotations

from torch import Tensor

from unlearnbench.diffusion import ddpm_loss
from unlearnbench.loop import Batch, StepContext
from unlearnbench.method import FineTuneMethod
from unlearnbench.registry import METHODS


@METHODS.register
class KeepTraining(FineTuneMethod):
    order = 15

    def loss(self, ctx: StepContext, batch: Batch) -> Tensor:
        x = batch.retain
        return 0.5 * ddpm_loss(ctx.model, ctx.schedule, x, ctx.noise_like(x), ctx.timesteps(len(x)))
'''

PROBE = """
import json, sys
import unlearnbench
from unlearnbench.cli import main
from unlearnbench.registry import METHODS
assert unlearnbench.__file__.startswith(sys.argv[1]), unlearnbench.__file__
code = main(["run", "--tier", "smoke", "--methods", "pretrain,keep_training,retrain", "--metrics",
             "forget_rate,unet_forward", "--out", sys.argv[2], "--no-progress"])
print(json.dumps({"code": code, "names": METHODS.names(), "role": METHODS.get("keep_training").role}))
"""


def _package_copy(root: Path, extra: dict[str, str]) -> Path:
    """``unlearnbench`` as the installed layout (bench/ with methods/ and datasets/ inside), made of links
    to this checkout's files, plus the ``extra`` method files: a copy of the repository with one new file."""
    pkg = root / "unlearnbench"
    pkg.mkdir(parents=True)
    for path in (REPO / "bench").glob("*.py"):
        (pkg / path.name).symlink_to(path)
    (pkg / "methods").mkdir()
    for path in (REPO / "methods").glob("*.py"):
        (pkg / "methods" / path.name).symlink_to(path)
    for name, text in extra.items():
        (pkg / "methods" / name).write_text(textwrap.dedent(text))
    (pkg / "datasets").symlink_to(REPO / "datasets", target_is_directory=True)
    return pkg


def test_a_new_method_is_one_new_file(tmp_path: Path) -> None:
    """Dropping one file into methods/ registers, orders and runs the method: no list, order table,
    registry entry or test list to edit. The new method is a row of the table, among the unlearning
    methods (by its ``order``), and its cell runs on the shared loop."""
    pkg = _package_copy(tmp_path / "tree", {"keep_training.py": TRIVIAL_METHOD})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(pkg.parent), UNLEARNBENCH_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(pkg), str(tmp_path / "out")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = __import__("json").loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, proc.stderr[-3000:]
    names = result["names"]
    assert names[0] == "pretrain" and names[-1] == "retrain" and result["role"] == "unlearning"
    assert names.index("naive_deletion") < names.index("keep_training") < names.index("neggrad")  # order 15
    table = (tmp_path / "out" / "table.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == ["pretrain", "keep_training", "retrain"], table
    record = next((tmp_path / "out" / "records").glob("*__keep_training__*.json"))
    assert '"unet_forward"' in record.read_text() and '"status": "ok"' in record.read_text()


def test_the_version_is_stated_once() -> None:
    project = (REPO / "pyproject.toml").read_text().split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, re.M) and re.search(r'^dynamic = \["version"\]', project, re.M)
    cff = re.search(r"^version:\s*([^\s#]+)", (REPO / "CITATION.cff").read_text(), re.M)
    assert cff and cff.group(1) == unlearnbench.__version__  # citation metadata, kept equal


def test_no_file_cites_a_reference_users_do_not_have() -> None:
    pattern = re.compile(r"(?<![-\w])protocols\.md")  # docs/pixel-protocols.md is a real file
    files = [p for folder in ("bench", "methods", "datasets", "docs", "scripts", "tests")
             for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".md") and p.name != "test_architecture.py"]
    cited = [str(p.relative_to(REPO)) for p in [*files, REPO / "README.md"] if pattern.search(p.read_text())]
    assert not cited, cited
