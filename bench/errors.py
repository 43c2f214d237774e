"""Exceptions the command line answers with one line (no heavy imports: the CLI catches them by name)."""
from __future__ import annotations


class EnvironmentFailure(RuntimeError):
    """The machine, not the cell, failed (disk full, device lost, ...): nothing is recorded for the cell."""


class ArtefactCorruptError(RuntimeError):
    """A prepared artefact's files differ from its manifest (edited, swapped or damaged)."""
