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
    _check_refinable(model, chosen)  # before touching any block: a refusal leaves the model as it was
    num_prefix = int(getattr(model, "num_prefix_tokens", 1))
    grid = model_grid_size(model)
    for index in chosen:
        block = model.blocks[index]
        block.attn = RefinedAttention.from_attention(
            block.attn, ratio=ratio, kernel=kernel, layout=layout, num_prefix_tokens=num_prefix,
            grid_size=grid, zero_init=zero_init)
    spec = dict(getattr(model, "model_spec", None) or {})
    spec["refine"] = {"blocks": list(chosen), "ratio": ratio, "kernel": kernel, "layout": layout,
                      "zero_init": zero_init}
    model.model_spec = spec
    return model


# Attention families refine() does not rewrite, and why (their maps are not softmax(q k^T) of plain q and k).
_UNSUPPORTED = {
    "EvaAttention": "rotary position embedding (eva, eva02, dinov3, vit_*_rope)",
    "AttentionRope": "rotary position embedding (vit_*_rope, naflexvit)",
    "RelPosAttention": "relative position bias (vit_relpos_*)",
    "ClassAttn": "class attention (cait)",
}


def _check_refinable(model: nn.Module, chosen: Sequence[int]) -> None:
    """Raise one TypeError naming every chosen block whose attention refine() cannot rewrite."""
    from timm.layers import Attention

    problems = {}
    for index in chosen:
        attn = getattr(model.blocks[index], "attn", None)
        if isinstance(attn, RefinedAttention):
            raise ValueError(f"block {index} is already refined")
        if type(attn) is not Attention or getattr(attn, "gate", None) is not None:
            name = type(attn).__name__
            module = type(attn).__module__
            why = _UNSUPPORTED.get(name) or ("relative position bias (beit, beitv2)" if module.endswith(".beit")
                                             else "gated attention" if type(attn) is Attention else
                                             f"{module}.{name}")
            problems.setdefault(f"{name}: {why}", []).append(index)
    if problems:
        listed = "; ".join(f"{what} in blocks {indices}" for what, indices in problems.items())
        raise TypeError(f"refine() rewrites timm's plain multi-head Attention (ViT, DeiT, hybrid and register "
                        f"ViTs); this model has {listed}, which it does not refine (the refined map would need "
                        "that family's own q/k and bias handling). Nothing was changed.")


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
