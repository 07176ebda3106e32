"""`refine()`: turn any timm ViT, pretrained or not, into a paper-mode refined one (DESIGN section 3)."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

from torch import nn

from .attention_refinement import Layout
from .model_geometry import model_grid_size
from .refined_attention import RefinedAttention


def refine(model: nn.Module, blocks: Optional[Iterable[int]] = None, ratio: int = 3, kernel: int = 3,
           layout: Layout = "sequence", zero_init: bool = False) -> nn.Module:
    """Replace the attention layer of the chosen blocks by `RefinedAttention`, in place.

    Args:
        model: a timm ``VisionTransformer`` (or subclass, e.g. the distilled DeiT).
        blocks: indices of the blocks to refine (negative indices count from the end); default all.
        ratio: expansion ratio r.
        kernel: depthwise kernel size k.
        layout: "sequence" or "spatial".
        zero_init: start the refinement at exactly zero, so the refined model first computes what the
            original computed (use it when refining a trained model).

    Returns:
        The same model object, with ``model.model_spec["refine"]`` recording the options.
    """
    if not hasattr(model, "blocks"):
        raise TypeError(f"refine() needs a timm VisionTransformer with .blocks, got {type(model).__name__}")
    depth = len(model.blocks)
    chosen = _resolve_blocks(blocks, depth)
    num_prefix = int(getattr(model, "num_prefix_tokens", 1))
    grid = model_grid_size(model)
    for index in chosen:
        block = model.blocks[index]
        if isinstance(block.attn, RefinedAttention):
            raise ValueError(f"block {index} is already refined")
        block.attn = RefinedAttention.from_attention(
            block.attn, ratio=ratio, kernel=kernel, layout=layout, num_prefix_tokens=num_prefix,
            grid_size=grid, zero_init=zero_init)
    spec = dict(getattr(model, "model_spec", None) or {})
    spec["refine"] = {"blocks": list(chosen), "ratio": ratio, "kernel": kernel, "layout": layout,
                      "zero_init": zero_init}
    model.model_spec = spec
    return model


def _resolve_blocks(blocks: Optional[Iterable[int]], depth: int) -> Sequence[int]:
    if blocks is None:
        return list(range(depth))
    chosen = []
    for index in blocks:
        index = int(index)
        if not -depth <= index < depth:
            raise ValueError(f"block index {index} is out of range for a model with {depth} blocks")
        chosen.append(index % depth)
    return sorted(set(chosen))
