"""Capture family "class-attention": CaiT's ``ClassAttn`` (its ``blocks_token_only``).

A class-attention layer updates only the CLS token: its single query is CLS, its keys and values are
[CLS, patches]. The capture records it as an extra layer after CaiT's self-attention blocks, with maps of
shape (B, H, 1, 1 + P) (``query_rows`` does not apply: the one row is always kept), recomputed in fp32 from
the block's own ``q``, ``k``, ``v`` outputs and checked against its projection input.
"""

from __future__ import annotations

from typing import Dict

import torch
from timm.models.cait import ClassAttn
from torch import nn

from .slot import LayerSlot

FAMILY = "class-attention"
DESCRIPTION = "timm.models.cait.ClassAttn (cait_*: blocks_token_only, one CLS query row)"


def matches(attn: nn.Module) -> bool:
    """Exactly CaiT's class attention."""
    return type(attn) is ClassAttn


def install(attn: nn.Module, slot: LayerSlot) -> None:
    """Hooks on ``q``, ``k``, ``v`` and on ``proj``'s input."""
    store: Dict[str, torch.Tensor] = {}
    for name in ("q", "k", "v"):
        def on_projection(_module: nn.Module, _args: tuple, output: torch.Tensor, name: str = name) -> None:
            store[name] = output.detach()
        slot.forward_hook(getattr(attn, name), on_projection)

    def on_projection_input(_module: nn.Module, args: tuple) -> None:
        if len(store) < 3:
            return
        q, k, v = store.pop("q"), store.pop("k"), store.pop("v")
        b, n, c = k.shape
        h = attn.num_heads
        q = q.reshape(b, 1, h, c // h).transpose(1, 2)  # (B, H, 1, d): the CLS query
        k, v = (t.reshape(b, n, h, c // h).transpose(1, 2) for t in (k, v))
        slot.record_softmax(attn, q, k, v, args[0], attn.scale, rows=None)

    slot.pre_hook(attn.proj, on_projection_input)
