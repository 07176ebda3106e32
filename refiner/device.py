"""Which device to run on: ``--device auto|cpu|cuda[:N]|mps`` of the app, ``refiner analyze`` and ``refiner eval``."""

from __future__ import annotations

import torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"


def resolve_device(spec: str = "auto") -> torch.device:
    """The device a ``--device`` value names; "auto" takes a GPU when there is one.

    Args:
        spec: "auto" (CUDA, else Apple MPS, else CPU), "cpu", "cuda", "cuda:N" or "mps".

    Raises:
        ValueError: an unknown name, or a device this machine does not have (the message says what it has).
    """
    text = str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"unknown device {spec!r}; choose from {DEVICE_CHOICES}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {spec}: this machine has no CUDA GPU (use cpu or auto)")
        index = 0 if device.index is None else device.index
        if index >= count:
            raise ValueError(f"--device {spec}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
        return torch.device("cuda", index)
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                     and torch.backends.mps.is_available()):
        raise ValueError(f"--device {spec}: Apple MPS is not available here (use cpu or auto)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {spec!r}; choose from {DEVICE_CHOICES}")
    return device
