"""Token representations after every block, the inputs of CKA (`analysis.cka`).

`record_block_outputs` is a context manager that keeps each block's output tokens during a forward pass,
so one pass can feed attention capture and CKA at once. Hooks are removed on exit, also on error.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Literal, Optional

import numpy as np
import torch
from torch import nn

Pooling = Literal["tokens", "cls", "mean"]


@contextmanager
def record_block_outputs(model: nn.Module) -> Iterator[List[Optional[torch.Tensor]]]:
    """Record the (B, N, D) output of every ``model.blocks[i]`` (detached, float32, on the CPU).

    Yields:
        A list with one entry per block, filled in by each forward pass (the last pass wins).
    """
    outputs: List[Optional[torch.Tensor]] = [None] * len(model.blocks)
    handles = []

    def make_hook(index: int):
        def hook(_module: nn.Module, _args: tuple, output: object) -> None:
            # Some blocks return (tokens, extra): the official Refiner-ViT's (x, attn), transformers' layers.
            tokens = output[0] if isinstance(output, (tuple, list)) else output
            outputs[index] = tokens.detach().float().cpu()
        return hook

    try:
        for i, block in enumerate(model.blocks):
            handles.append(block.register_forward_hook(make_hook(i)))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def pool_block_outputs(outputs: List[Optional[torch.Tensor]], pooling: Pooling, num_prefix_tokens: int,
                       class_token_index: Optional[int] = 0) -> List[np.ndarray]:
    """Turn recorded block outputs into CKA feature matrices.

    Args:
        outputs: per block, (B, N, D) tensors.
        pooling: "tokens": one image's tokens are the examples, (N, D) per layer (B must be 1);
            "cls": the class token, (B, D); "mean": mean over patch tokens, (B, D).
        num_prefix_tokens: K.
        class_token_index: the class token's index ("cls" pooling; None for a model without one, which
            "cls" refuses rather than reading a register token).

    Returns:
        Per layer, an (examples, D) float32 array.
    """
    if any(o is None for o in outputs):
        raise ValueError("some blocks recorded no output; run a forward pass inside record_block_outputs")
    if pooling == "tokens":
        if outputs[0].shape[0] != 1:
            raise ValueError("pooling='tokens' treats one image's tokens as examples; pass a batch of one")
        return [o[0].numpy() for o in outputs]
    if pooling == "cls":
        if num_prefix_tokens < 1 or class_token_index is None:
            raise ValueError("pooling='cls' needs a class token; use pooling='mean' for this model")
        return [o[:, class_token_index].numpy() for o in outputs]
    if pooling == "mean":
        return [o[:, num_prefix_tokens:].mean(dim=1).numpy() for o in outputs]
    raise ValueError(f"pooling must be 'tokens', 'cls' or 'mean', got {pooling!r}")
