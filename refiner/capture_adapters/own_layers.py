"""Capture family "own": this project's attention layers (refined, official Refiner-ViT normal and shared).

They report their maps themselves through ``attention_hook(softmax=, effective=, v=)`` (``softmax`` is None
for the official shared blocks, which compute no map of their own); the capture checks ``effective @ v``
against the input of the block's output projection as for every family.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from .projections import projection_input_module
from .slot import LayerSlot, dropout_active, select_rows

FAMILY = "own"
DESCRIPTION = "this project's layers (refiner.RefinedAttention, official Refiner-ViT blocks): attention_hook"


def matches(attn: nn.Module) -> bool:
    """Layers with an ``attention_hook`` attribute follow the recording protocol."""
    return hasattr(attn, "attention_hook")


def install(attn: nn.Module, slot: LayerSlot) -> None:
    """Set ``attention_hook`` (restored on exit) and check at the projection input."""
    pending: Dict[str, torch.Tensor] = {}
    previous_hook = attn.attention_hook
    rows = slot.rows

    def on_attention(softmax: Optional[torch.Tensor], effective: torch.Tensor, v: torch.Tensor) -> None:
        def keep(t: torch.Tensor) -> torch.Tensor:
            t = select_rows(t, rows, 2)
            return t.detach().float() if slot.detach else t.float()
        eff = keep(effective)
        slot.rec.effective[slot.index] = eff
        slot.rec.softmax[slot.index] = None if softmax is None else (eff if softmax is effective else keep(softmax))
        pending["effective"], pending["v"] = select_rows(effective, rows, 2).detach(), v.detach()

    def on_projection_input(_module: nn.Module, args: tuple) -> None:
        if slot.verify and pending and not dropout_active(attn):
            slot.check(pending["effective"], pending["v"], args[0].detach(), rows)
        pending.clear()

    attn.attention_hook = on_attention
    slot.restore.append(lambda: setattr(attn, "attention_hook", previous_hook))
    slot.pre_hook(projection_input_module(attn), on_projection_input)


def is_refined(softmax: Optional[torch.Tensor], effective: Optional[torch.Tensor]) -> bool:
    """A layer of ours is refined when its effective map is not its softmax map (by identity)."""
    return softmax is not effective
