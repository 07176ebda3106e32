"""Capture family "talking-heads": CaiT's ``TalkingHeadAttn`` (its self-attention blocks).

Talking-heads attention (Shazeer et al. 2020) mixes heads twice: the scores by a Linear over the head axis
(``proj_l``) before the softmax, the probabilities by another (``proj_w``) after it. The capture records
``softmax`` = the softmax of the mixed scores and ``effective`` = ``proj_w`` of it (the matrix that really
multiplies V; not a probability matrix), both recomputed in fp32 from the block's own q, k and weights, and
checks ``effective @ v`` against the block's projection input. ``meta.refined`` is True for these layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.cait import TalkingHeadAttn
from torch import nn

from .projections import capture_qkv
from .slot import LayerSlot, fp32_region, select_rows

FAMILY = "talking-heads"
DESCRIPTION = "timm.models.cait.TalkingHeadAttn (cait_* self-attention blocks)"


def matches(attn: nn.Module) -> bool:
    """Exactly CaiT's talking-heads attention."""
    return type(attn) is TalkingHeadAttn


def _mix_heads(maps: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """Apply ``linear`` over the head axis of (B, H, Q, N) maps, in fp32."""
    return F.linear(maps.permute(0, 2, 3, 1), linear.weight.float(), linear.bias.float()).permute(0, 3, 1, 2)


def install(attn: nn.Module, slot: LayerSlot) -> None:
    """Hooks on ``qkv`` and ``proj``'s input; the head mixing is redone with the block's ``proj_l``/``proj_w``."""
    take = capture_qkv(attn, slot, attn.num_heads)

    def on_projection_input(_module: nn.Module, args: tuple) -> None:
        qkv = take()
        if qkv is None:
            return
        q, k, v = qkv
        with fp32_region(q.device):
            q = select_rows(q.float(), slot.rows, 2) * attn.scale  # the mixing is per (query, key): rows commute
            scores = _mix_heads(q @ k.float().transpose(-2, -1), attn.proj_l)
            softmax = scores.softmax(dim=-1)
            effective = _mix_heads(softmax, attn.proj_w).contiguous()
        slot.record(attn, softmax, effective, v, args[0])

    slot.pre_hook(attn.proj, on_projection_input)
