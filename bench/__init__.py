"""unlearnbench: data unlearning in diffusion models, every method on every task, one harness."""
__version__ = "0.2.0"
