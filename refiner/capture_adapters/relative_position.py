"""Capture family "relative-position": softmax attention with a learned relative position bias.

timm's BEiT/BEiTv2 ``timm.models.beit.Attention`` (a per-layer bias table, optionally plus a bias shared by
all layers, passed as ``shared_rel_pos_bias``) and ``RelPosAttention`` of ``vit_relpos_*`` (a ``rel_pos``
module, or a shared ``shared_rel_pos``). The capture rebuilds the bias the block adds, with the block's own
table and index, recomputes ``softmax(q k^T / sqrt(d) + bias)`` in fp32 and checks it against the block.
"""

from __future__ import annotations

from typing import Optional

import torch
from timm.models.beit import Attention as BeitAttention
from timm.models.vision_transformer_relpos import RelPosAttention
from torch import nn

from .projections import capture_qkv
from .slot import LayerSlot, fp32_region, normed_fp32

FAMILY = "relative-position"
DESCRIPTION = ("timm.models.beit.Attention (beit, beitv2), "
               "timm.models.vision_transformer_relpos.RelPosAttention (vit_relpos_*)")


def matches(attn: nn.Module) -> bool:
    """Exactly timm's BEiT attention and ``RelPosAttention``."""
    return type(attn) in (BeitAttention, RelPosAttention)


def _bias(attn: nn.Module, slot: LayerSlot) -> Optional[torch.Tensor]:
    """The additive bias (1 or B, H, N, N) the block adds to its scores, as its fused path builds it."""
    with fp32_region(next(attn.parameters()).device):
        if isinstance(attn, BeitAttention):
            shared = slot.call_argument("shared_rel_pos_bias", 1)
            bias = attn._get_rel_pos_bias().float() if attn.relative_position_bias_table is not None else None
        else:
            shared = slot.call_argument("shared_rel_pos", 1)
            bias = attn.rel_pos.get_bias().float() if attn.rel_pos is not None else None
            if bias is not None:
                return bias  # RelPosAttention's fused path uses its own bias alone
        if shared is not None:
            bias = shared.float() if bias is None else bias + shared.float()
        return bias


def install(attn: nn.Module, slot: LayerSlot) -> None:
    """Keep the block's call and q, k, v; recompute with the bias and check at ``proj``'s input."""
    take = capture_qkv(attn, slot, attn.num_heads)
    slot.keep_call(attn)

    def on_projection_input(_module: nn.Module, args: tuple) -> None:
        qkv = take()
        if qkv is None:
            return
        q, k, v = qkv
        if hasattr(attn, "q_norm"):
            q, k = normed_fp32(attn.q_norm, q), normed_fp32(attn.k_norm, k)
        slot.record_softmax(attn, q, k, v, args[0], attn.scale, bias=_bias(attn, slot))

    slot.pre_hook(attn.proj, on_projection_input)
