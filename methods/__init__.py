"""One file per unlearning method; importing this package registers them all.

The import order is the order of rows in tables: the base model, the baselines, the
gradient-rule methods, ReTrack, and the oracle last.
"""
# isort: off
from unlearnbench.methods import pretrain, naive_deletion, neggrad, erasediff  # noqa: F401
from unlearnbench.methods import siss, siss_no_is, retrack, retrack_all, retrain  # noqa: F401
