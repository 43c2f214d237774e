"""One file per unlearning method, named by its file; the registry discovers them (nothing to list here).

Row order in tables comes from each method's ``role`` and ``order``: the model before unlearning,
the unlearning methods, and the oracle last.
"""
