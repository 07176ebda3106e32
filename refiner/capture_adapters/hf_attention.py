"""Capture family "transformers": Hugging Face ViT, DeiT, DINOv2 and DINOv2-with-registers attention.

Used through `refiner.hf_vit.wrap_hf_model`. The model runs with its own attention implementation (sdpa by
default); the capture takes the block's q, k, v from its query/key/value Linears, recomputes
``softmax(q k^T * scaling (+ mask))`` in fp32 and checks ``map @ v`` against the input of the block's output
projection. Both layouts are read: transformers 5 (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``) and 4.45+
(``attention.query``/``key``/``value``, ``output.dense``). ``transformers`` is not imported here (optional).
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

from .slot import LayerSlot, additive_mask

FAMILY = "transformers"
DESCRIPTION = ("transformers ViT, DeiT, Dinov2, Dinov2WithRegisters attention (ViTAttention, ...; "
               "via refiner.hf_vit.wrap_hf_model)")
_MODULES = {f"transformers.models.{family}.modeling_{family}" for family in
            ("vit", "deit", "dinov2", "dinov2_with_registers")}


def matches(attn: nn.Module) -> bool:
    """transformers' ViT-family attention modules: ``ViTAttention`` ... and, in transformers 4, their
    ``...SdpaAttention`` variants (the block-level module, not the inner ``...SelfAttention``)."""
    kind = type(attn)
    return (kind.__module__ in _MODULES and kind.__name__.endswith("Attention")
            and (hasattr(attn, "q_proj") or hasattr(getattr(attn, "attention", None), "query")))


def _parts(attn: nn.Module) -> Tuple[nn.Linear, nn.Linear, nn.Linear, nn.Module, int, float]:
    """(query, key, value, output projection, heads, scaling) for either transformers layout."""
    if hasattr(attn, "q_proj"):
        heads, head_dim = int(attn.num_attention_heads), int(attn.head_dim)
        return attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, heads, float(getattr(attn, "scaling",
                                                                                       head_dim ** -0.5))
    inner = attn.attention
    heads, head_dim = int(inner.num_attention_heads), int(inner.attention_head_size)
    return (inner.query, inner.key, inner.value, attn.output.dense, heads,
            float(getattr(inner, "scaling", head_dim ** -0.5)))


def install(attn: nn.Module, slot: LayerSlot) -> None:
    """Hooks on the q/k/v Linears and on the output projection's input."""
    query, key, value, output, heads, scaling = _parts(attn)
    store: Dict[str, torch.Tensor] = {}
    for name, linear in (("q", query), ("k", key), ("v", value)):
        def on_projection(_module: nn.Module, _args: tuple, out: torch.Tensor, name: str = name) -> None:
            store[name] = out.detach()
        slot.forward_hook(linear, on_projection)
    slot.keep_call(attn)
    mask_position = 1 if hasattr(attn, "q_proj") else 99  # transformers 4 passes head_mask there, not a mask

    def on_projection_input(_module: nn.Module, args: tuple) -> None:
        if len(store) < 3:
            return
        q, k, v = (store.pop(n) for n in ("q", "k", "v"))
        b, n, _ = q.shape
        q, k, v = (t.reshape(b, n, heads, -1).transpose(1, 2) for t in (q, k, v))
        mask = slot.call_argument("attention_mask", mask_position)
        mask = additive_mask(mask) if isinstance(mask, torch.Tensor) else None
        slot.record_softmax(attn, q, k, v, args[0], scaling, bias=mask)

    slot.pre_hook(output, on_projection_input)
