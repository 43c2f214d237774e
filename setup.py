"""Packaging: the folders bench/, methods/ and datasets/ install as ONE package, ``unlearnbench``
(nothing named ``datasets``, ``methods`` or ``bench`` lands at the top level). Every folder with an
``__init__.py`` below them is a subpackage, found here, so a new task folder needs no edit anywhere.
Everything else is in pyproject.toml.
"""
from pathlib import Path

from setuptools import setup

ROOTS = {"unlearnbench": "bench", "unlearnbench.methods": "methods", "unlearnbench.datasets": "datasets"}


def packages() -> list[str]:
    found = []
    for name, folder in ROOTS.items():
        found.append(name)
        for init in sorted(Path(folder).rglob("__init__.py")):
            sub = init.parent.relative_to(folder).parts
            if sub:
                found.append(".".join((name, *sub)))
    return found


setup(package_dir=ROOTS, packages=packages())
