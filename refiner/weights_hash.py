"""A hash that names a model's weights, also for models that were never a file (built, downloaded, converted)."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 over a model's state dict (sorted names, dtypes, shapes and bytes).

    Two models with equal weights give equal hashes whatever device or file they came from.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reshape(-1) first: a 0-d tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes.
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
