"""MNIST T-Shirt (SISS): the tasks ``mnist_tshirt`` and ``mnist_tshirt_mini``, their classifier and metrics."""
from unlearnbench.datasets.mnist_tshirt import metrics  # noqa: F401  (registers is_clf, fid_clf)
from unlearnbench.datasets.mnist_tshirt.task import (  # noqa: F401
    PAPER_UNET, QUICK_UNET, SMOKE_UNET, MnistTShirt, draw_tshirt, load_fashion_tshirt, load_mnist_idx, to_model_space,
)
