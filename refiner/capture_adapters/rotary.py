"""Capture family "rotary": rotary position embedding layers, timm ``AttentionRope`` and ``EvaAttention``.

Used by eva, eva02, dinov3 (``vit_*_dinov3``), ``vit_*_rope*`` and the Perception Encoder (``vit_pe_*``).
The block's rotary embedding arrives as its ``rope`` argument; the capture keeps that argument, takes the
block's own q, k, v (see `projections`), applies the q/k norms and the rotation to the patch tokens (the
first ``num_prefix_tokens`` are not rotated, as in the block) in fp32, expands grouped key/value heads,
recomputes the softmax map in fp32 and checks ``map @ v`` against the block's projection input.
"""

from __future__ import annotations

import torch
from timm.layers import AttentionRope, apply_rot_embed_cat
from timm.models.eva import EvaAttention
from torch import nn

from .projections import capture_qkv, projection_input_module
from .slot import LayerSlot, additive_mask, fp32_region, normed_fp32

FAMILY = "rotary"
DESCRIPTION = ("timm.layers.AttentionRope, timm.models.eva.EvaAttention (eva, eva02, vit_*_dinov3, "
               "vit_*_rope*, vit_pe_*)")


def matches(attn: nn.Module) -> bool:
    """Exactly timm's rotary layers."""
    return type(attn) in (AttentionRope, EvaAttention)


def rotate(t: torch.Tensor, rope: torch.Tensor, num_prefix_tokens: int, half: bool) -> torch.Tensor:
    """Apply rotary embedding ``rope`` (N - K, 2d) or (B, N - K, 2d) to the patch tokens of (B, H, N, d)."""
    k = num_prefix_tokens
    return torch.cat([t[:, :, :k, :], apply_rot_embed_cat(t[:, :, k:, :], rope.float(), half=half)], dim=2)


def install(attn: nn.Module, slot: LayerSlot) -> None:
    """Keep the block's call (``rope``, ``attn_mask``), q, k, v; recompute and check at the projection input."""
    kv_heads = int(getattr(attn, "num_kv_heads", attn.num_heads))
    take = capture_qkv(attn, slot, attn.num_heads, kv_heads)
    slot.keep_call(attn)
    groups = attn.num_heads // kv_heads

    def on_projection_input(_module: nn.Module, args: tuple) -> None:
        qkv = take()
        if qkv is None:
            return
        q, k, v = qkv
        q, k = normed_fp32(attn.q_norm, q), normed_fp32(attn.k_norm, k)
        rope = slot.call_argument("rope", 1)
        if rope is not None:
            half = bool(getattr(attn, "rotate_half", False))
            with fp32_region(q.device):
                q = rotate(q, rope, attn.num_prefix_tokens, half)
                k = rotate(k, rope, attn.num_prefix_tokens, half)
        if groups > 1:  # grouped-query attention: kv head h // groups serves query head h, as in the block
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        mask = additive_mask(slot.call_argument("attn_mask", 2))
        slot.record_softmax(attn, q, k, v, args[0], attn.scale, bias=mask)

    slot.pre_hook(projection_input_module(attn), on_projection_input)
