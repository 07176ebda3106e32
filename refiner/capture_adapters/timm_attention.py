"""Capture family "timm": ``timm.layers.Attention``, the layer of timm's VisionTransformer, DeiT and hybrids.

The block runs fused (``scaled_dot_product_attention``) as usual; the capture takes its q, k, v from the
``qkv`` output, applies the block's q/k norms in fp32, recomputes ``softmax(q k^T / sqrt(d))`` in fp32 and
checks ``map @ v`` against what the block fed its output norm/projection.
"""

from __future__ import annotations

from timm.layers import Attention
from torch import nn

from .projections import capture_qkv, projection_input_module
from .slot import LayerSlot, additive_mask, normed_fp32

FAMILY = "timm"
DESCRIPTION = "timm.layers.Attention (vit_*, deit_*, hybrids such as vit_small_r26_s32_224)"


def matches(attn: nn.Module) -> bool:
    """Exactly timm's ``Attention`` (subclasses may compute something else)."""
    return type(attn) is Attention


def install(attn: nn.Module, slot: LayerSlot) -> None:
    """Hooks on ``qkv`` (q, k, v) and on the projection input (map recompute and check)."""
    take = capture_qkv(attn, slot, attn.num_heads)
    slot.keep_call(attn)

    def on_projection_input(_module: nn.Module, args: tuple) -> None:
        qkv = take()
        if qkv is None:
            return
        q, k, v = qkv
        q, k = normed_fp32(attn.q_norm, q), normed_fp32(attn.k_norm, k)
        mask = additive_mask(slot.call_argument("attn_mask", 1))
        slot.record_softmax(attn, q, k, v, args[0], attn.scale, bias=mask)

    slot.pre_hook(projection_input_module(attn), on_projection_input)
