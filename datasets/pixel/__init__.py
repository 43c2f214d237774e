"""The pixel-space tasks with one forget image per run, CIFAR-10 and CelebA-HQ: their shared task base,
injections and injection metrics (``forget_rate_pixel``, ``sscd``)."""
from unlearnbench.datasets.pixel import celeba_hq, cifar10, metrics  # noqa: F401  (registers tasks and metrics)
