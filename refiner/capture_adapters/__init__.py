"""Attention capture adapters, one per attention family (DESIGN section 3, "What capture returns").

Each adapter module has ``FAMILY`` (its name), ``DESCRIPTION`` (the layer classes and model names it covers),
``matches(attn)`` and ``install(attn, slot)``, which registers hooks that recompute the layer's maps in fp32
from the block's own tensors and check ``effective @ v`` against the block's real output.
`refiner.capture.capture_attention` finds each layer's adapter with `adapter_for`; a layer no adapter
understands is an `UnsupportedAttentionError` naming it and listing `SUPPORTED_FAMILIES`.
"""

from __future__ import annotations

from types import ModuleType
from typing import Dict, List, Tuple

from torch import nn

from . import class_attention, hf_attention, own_layers, relative_position, rotary, talking_heads, timm_attention
from .slot import CaptureMismatchError, LayerSlot

ADAPTERS: Tuple[ModuleType, ...] = (own_layers, timm_attention, rotary, relative_position, talking_heads,
                                    class_attention, hf_attention)
SUPPORTED_FAMILIES: Dict[str, str] = {adapter.FAMILY: adapter.DESCRIPTION for adapter in ADAPTERS}

__all__ = ["ADAPTERS", "SUPPORTED_FAMILIES", "CaptureMismatchError", "LayerSlot", "UnsupportedAttentionError",
           "adapter_for", "attention_layers", "supported_families_text"]


class UnsupportedAttentionError(TypeError):
    """A model or attention layer that no capture adapter understands."""


def supported_families_text() -> str:
    """One line per supported family, for error messages."""
    return "; ".join(f"{family}: {text}" for family, text in SUPPORTED_FAMILIES.items())


def adapter_for(attn: nn.Module) -> ModuleType:
    """The adapter module for an attention layer.

    Raises:
        UnsupportedAttentionError: no adapter matches; the message names the layer's class.
    """
    for adapter in ADAPTERS:
        if adapter.matches(attn):
            return adapter
    kind = type(attn)
    raise UnsupportedAttentionError(f"cannot capture attention from {kind.__name__} ({kind.__module__}.{kind.__name__}): "
                                    f"supported families are {supported_families_text()}")


def attention_layers(model: nn.Module) -> Tuple[List[nn.Module], List[int]]:
    """The model's attention layers in capture order, and which of them are class-attention layers.

    Order: ``model.blocks[i].attn`` (timm-style ViTs and this project's models), then CaiT's
    ``blocks_token_only[j].attn``; for `refiner.hf_vit.HFVisionTransformer`, each encoder layer's attention.

    Raises:
        UnsupportedAttentionError: the model has no such layers (swin, levit, pit, ... or a non-ViT).
    """
    if hasattr(model, "hf_model") and callable(getattr(model, "attention_modules", None)):
        return list(model.attention_modules()), []
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or not all(hasattr(b, "attn") for b in blocks):
        raise UnsupportedAttentionError(
            f"cannot capture attention from {type(model).__name__} ({type(model).__module__}): it has no ViT "
            f"blocks (model.blocks[i].attn); supported families are {supported_families_text()}")
    layers = [b.attn for b in blocks]
    extra = getattr(model, "blocks_token_only", None)
    class_layers: List[int] = []
    if extra is not None:
        class_layers = list(range(len(layers), len(layers) + len(extra)))
        layers += [b.attn for b in extra]
    return layers, class_layers


def layer_num_heads(attn: nn.Module) -> int:
    """Heads of one attention layer of `attention_layers` (timm ``num_heads``, Hugging Face ``num_attention_heads``,
    or that of its inner ``attention`` module, the transformers 4 layout); 0 when it says none."""
    return int(getattr(attn, "num_heads", getattr(attn, "num_attention_heads", 0)) or
               getattr(getattr(attn, "attention", None), "num_attention_heads", 0) or 0)
