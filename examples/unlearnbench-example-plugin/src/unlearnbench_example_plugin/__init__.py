"""An example unlearnbench plugin: the method ``neggrad_plus`` and the metric ``nearest_forget_l2``."""
