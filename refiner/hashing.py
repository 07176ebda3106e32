"""SHA-256 names for bytes, arrays, tensors, files and model weights: the project's one hashing helper.

Manifests, checkpoints, caches and upload keys all name content by `sha256_hex` (in-memory parts) or
`sha256_of_file` (streamed), so the same content gets the same name wherever it is hashed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Union

import numpy as np
import torch
from torch import nn

Part = Union[bytes, bytearray, memoryview, str, np.ndarray, torch.Tensor]


def _as_bytes(part: Part) -> bytes:
    if isinstance(part, str):
        return part.encode()
    if isinstance(part, torch.Tensor):
        t = part.detach().cpu().contiguous()
        # Viewed as bytes (reshape first: a 0-d tensor cannot be viewed), so dtypes numpy lacks (bf16) work too.
        return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    if isinstance(part, np.ndarray):
        return np.ascontiguousarray(part).tobytes()
    return bytes(part)


def sha256_hex(*parts: Part) -> str:
    """Hex SHA-256 of the parts' bytes, concatenated.

    Args:
        parts: bytes; str (UTF-8); numpy arrays and torch tensors (their raw bytes in C order, any device).

    Returns:
        64 hex digits; equal to ``hashlib.sha256(b"".join(bytes of the parts)).hexdigest()``.
    """
    return _digest(parts)


def _digest(parts: Iterable[Part]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(_as_bytes(part))
    return digest.hexdigest()


def sha256_of_file(path: Union[str, Path]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (files of any size)."""
    with open(path, "rb") as handle:
        return _digest(iter(lambda: handle.read(1 << 20), b""))


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 over a model's state dict (sorted names, dtypes, shapes and bytes): names weights that were never
    a file (built, downloaded, converted).

    Two models with equal weights give equal hashes whatever device or file they came from.
    """
    return _digest(part for name, tensor in sorted(model.state_dict().items())
                   for part in (f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|", tensor))
