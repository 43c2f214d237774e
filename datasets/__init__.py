"""One file per benchmark task; importing this package registers them all."""
from unlearnbench.datasets import mnist_tshirt  # noqa: F401
