"""The published experimental protocols whose hyper-parameters the methods record.

A task exposes the protocol it follows (``Task.protocol``) and a method keys its published
hyper-parameters by these objects (``Method.published``), so the family names are written once,
here. A protocol is a ``str`` (its name) so it serialises into configs and records as before.
"""
from __future__ import annotations


class Protocol(str):
    """A protocol family: its name (what configs record) and where its settings are published."""

    source: str

    def __new__(cls, name: str, source: str) -> "Protocol":
        self = super().__new__(cls, name)
        self.source = source
        return self

    def __reduce__(self) -> tuple:  # pickled and copied with its source (str's would drop the argument)
        return Protocol, (str(self), self.source)


MNIST_TSHIRT = Protocol("mnist_tshirt", "SISS (Alberti et al. 2025) MNIST T-Shirt; ReTrack configs")
CIFAR10 = Protocol("cifar10", "ReTrack / SISS CIFAR-10, one training image per run")
CELEBA_HQ = Protocol("celeba_hq", "ReTrack / SISS CelebA-HQ 256, one face per run")
STABLE_DIFFUSION = Protocol("sd", "ReTrack / SISS Stable Diffusion v1.4 memorized prompts")

PROTOCOLS = {p: p for p in (MNIST_TSHIRT, CIFAR10, CELEBA_HQ, STABLE_DIFFUSION)}
