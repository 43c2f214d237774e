#!/usr/bin/env python
"""unlearnbench command line (also installed as the `unlearnbench` console script).

Run from the repository root, Python would put this folder first on sys.path, so the
folders `datasets/`, `methods/` and `bench/` would shadow real packages (Hugging Face's
`datasets` above all); the installed package is `unlearnbench`, so drop that entry first.
"""
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]

from unlearnbench.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
