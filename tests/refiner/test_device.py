"""--device auto|cpu|cuda[:N]|mps: what each name resolves to, and a clear refusal of what is not here."""

from __future__ import annotations

import pytest
import torch

from refiner.device import resolve_device


def test_auto_takes_a_gpu_only_when_there_is_one() -> None:
    expected = "cuda" if torch.cuda.is_available() else \
        "mps" if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(" CPU ") == torch.device("cpu")
