"""Stable Diffusion memorized prompts (ReTrack/SISS): the task ``sd_memorized``, its pipeline wrapper,
prompt folders, CLIP-IQA and the SD metrics."""
from unlearnbench.datasets.sd_memorized import metrics, task  # noqa: F401  (registers the task and its metrics)
