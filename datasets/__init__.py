"""The benchmark tasks: one package per task (family), discovered by the registry.

Each package registers its tasks and their own metrics when imported (``unlearnbench.registry``
imports them on first use). ``assets/`` holds the prepared weights shipped for offline tiers.
"""
