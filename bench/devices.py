"""The device a run uses: ``--device`` resolved against what this machine has."""
from __future__ import annotations

import torch

from unlearnbench.validate import UsageError, did_you_mean


def resolve_device(name: str) -> torch.device:
    """The device ``--device`` names (``auto``: CUDA if present); one that is unknown or absent here is a
    ``UsageError`` listing the devices this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = _available_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r} is not a device; {did_you_mean(name, available)}"
                         f"available here: {', '.join(available)}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda" and torch.cuda.is_available() and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                         f"available here: {', '.join(available)}")
    backend = getattr(torch.backends, device.type, None) if device.type == "mps" else getattr(torch, device.type, None)
    if not (backend is not None and hasattr(backend, "is_available") and backend.is_available()):
        raise UsageError(f"--device {name}: no {device.type} device on this machine; available here: "
                         f"{', '.join(available)}")
    return device


def _available_devices() -> list[str]:
    """What ``--device`` may name on this machine."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names
