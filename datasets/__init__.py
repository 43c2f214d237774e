"""One file per benchmark task; importing this package registers them all."""
from unlearnbench.datasets import celeba_hq, cifar10, mnist_tshirt, sd_memorized  # noqa: F401
