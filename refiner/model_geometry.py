"""What a ViT's token sequence looks like: prefix tokens, effective patch stride, patch grid for an input size.

Everything is read from the model itself (timm ViTs and their relatives, hybrid and conv-stem ViTs,
this project's models, `refiner.hf_vit.HFVisionTransformer`), so a map's token j can be placed on the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from torch import nn


@dataclass(frozen=True)
class TokenLayout:
    """Which tokens precede the patches, in order [CLS?, distillation?, registers..., patches].

    Attributes:
        num_prefix_tokens: K, all tokens before the patches.
        class_token_index: index of the CLS token, or None when the model has none (e.g. global-average
            pooled ViTs with registers, `vit_betwixt_patch16_reg4_gap_256`): metrics "of the CLS query" must
            then use something else and say so.
        num_reg_tokens: register tokens among the prefix tokens.
        num_distill_tokens: distillation tokens (DeiT: 1, right after CLS).
    """

    num_prefix_tokens: int
    class_token_index: Optional[int]
    num_reg_tokens: int = 0
    num_distill_tokens: int = 0

    @property
    def has_class_token(self) -> bool:
        """Whether token ``class_token_index`` is a CLS token."""
        return self.class_token_index is not None


@dataclass(frozen=True)
class AttentionMeta:
    """Geometry of one captured forward pass.

    Attributes:
        num_prefix_tokens: K, tokens before the patches (CLS, distillation, registers) in the self-attention
            layers; N = K + Gh * Gw.
        grid_size: (Gh, Gw) patch grid; N = K + Gh * Gw.
        patch_size: (ph, pw) pixels per token: the effective stride of the whole patch embedding (32 for a
            ResNet-26 hybrid with 1x1 patches on its stride-32 features, not 1).
        img_size: (H, W) of the input image in pixels.
        depth: number of captured attention layers L (for CaiT: its blocks plus its class-attention blocks).
        num_heads: heads per layer.
        refined: whether each layer's effective map differs from its softmax map by construction (refined
            blocks, talking-heads attention).
        class_token_index: index of the CLS token among the prefix tokens, or None if the model has none.
        num_reg_tokens: register tokens among the prefix tokens.
        num_distill_tokens: distillation tokens among the prefix tokens.
        families: per layer, the capture family that read it (`refiner.capture_adapters.SUPPORTED_FAMILIES`).
        class_attention_layers: indices of class-attention layers (CaiT's ``blocks_token_only``). Their maps
            are (B, H, 1, 1 + Gh * Gw): the single query is the CLS token, keys are [CLS, patches], while
            CaiT's self-attention blocks see only the patches (K = 0, no CLS).
    """

    num_prefix_tokens: int
    grid_size: Tuple[int, int]
    patch_size: Tuple[int, int]
    img_size: Tuple[int, int]
    depth: int
    num_heads: List[int]
    refined: List[bool]
    class_token_index: Optional[int] = 0
    num_reg_tokens: int = 0
    num_distill_tokens: int = 0
    families: Tuple[str, ...] = field(default_factory=tuple)
    class_attention_layers: Tuple[int, ...] = field(default_factory=tuple)

    @property
    def num_tokens(self) -> int:
        """N = K + Gh * Gw."""
        return self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]

    @property
    def has_class_token(self) -> bool:
        """Whether the self-attention layers' sequence holds a CLS token (at ``class_token_index``)."""
        return self.class_token_index is not None


def _pair(value: object) -> Tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)  # type: ignore[arg-type]


def model_patch_size(model: nn.Module) -> Tuple[int, int]:
    """(ph, pw): pixels per token, the effective stride of the model's patch embedding.

    Hybrid ViTs (timm ``HybridEmbed``: a CNN backbone, then patches on its features) report the total
    reduction ``feat_ratio``; embeddings that say the image size and grid they were built for give their
    ratio (conv stems); plain patch embeddings give their patch size.

    Raises:
        TypeError: the model says nothing about its patches.
    """
    if hasattr(model, "hf_model") and hasattr(model, "patch_size"):  # refiner.hf_vit.HFVisionTransformer
        return _pair(model.patch_size)
    patch_embed = getattr(model, "patch_embed", None)
    feat_ratio = getattr(patch_embed, "feat_ratio", None)
    if callable(feat_ratio) and hasattr(patch_embed, "feature_ratio"):
        return _pair(feat_ratio(as_scalar=False))
    patch = getattr(patch_embed, "patch_size", None)
    if patch is None:
        raise TypeError(f"{type(model).__name__} has no patch_embed.patch_size")
    patch = _pair(patch)
    img, grid = getattr(patch_embed, "img_size", None), getattr(patch_embed, "grid_size", None)
    if img is not None and grid is not None:
        (h, w), (gh, gw) = _pair(img), _pair(grid)
        if gh and gw and h % gh == 0 and w % gw == 0 and (h // gh, w // gw) != patch:
            return h // gh, w // gw  # a stem that reduces before (or instead of) its patch projection
    return patch


def model_grid_size(model: nn.Module) -> Optional[Tuple[int, int]]:
    """The patch grid the model was built for (None if it does not say)."""
    if hasattr(model, "hf_model") and hasattr(model, "img_size"):
        return model.dynamic_feat_size(model.img_size)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    return None if grid is None else (int(grid[0]), int(grid[1]))


def grid_for_image(model: nn.Module, height: int, width: int) -> Tuple[int, int]:
    """(Gh, Gw) the model produces for an input of ``height`` x ``width`` pixels (dynamic sizes included)."""
    for owner in (model, getattr(model, "patch_embed", None)):
        if owner is not None and hasattr(owner, "dynamic_feat_size"):
            gh, gw = owner.dynamic_feat_size((height, width))
            return int(gh), int(gw)
    ph, pw = model_patch_size(model)
    return height // ph, width // pw


def token_layout(model: nn.Module) -> TokenLayout:
    """Prefix tokens of the model's self-attention layers, read from the model.

    timm's order is [CLS, distillation, registers, patches]; a model without a CLS token
    (``class_token=False``) has ``class_token_index`` None. CaiT's self-attention blocks see only the patches
    (its CLS token joins in the class-attention blocks): K = 0 there.
    """
    if getattr(model, "blocks_token_only", None) is not None:  # CaiT
        return TokenLayout(num_prefix_tokens=0, class_token_index=None)
    num_prefix = int(getattr(model, "num_prefix_tokens", 1))
    has_cls = getattr(model, "has_class_token", None)
    if has_cls is None:
        has_cls = getattr(model, "cls_token", None) is not None if hasattr(model, "cls_token") else num_prefix > 0
    num_distill = int(getattr(model, "num_distill_tokens", 1 if getattr(model, "dist_token", None) is not None
                              else 0))
    reg_token = getattr(model, "reg_token", None)  # (1, R, D) in timm ViTs and EVA (which has no count)
    num_reg = int(getattr(model, "num_reg_tokens", reg_token.shape[1] if reg_token is not None else 0) or 0)
    if not has_cls and num_prefix == 0:
        num_reg = num_distill = 0
    return TokenLayout(num_prefix_tokens=num_prefix, class_token_index=0 if has_cls and num_prefix > 0 else None,
                       num_reg_tokens=num_reg, num_distill_tokens=num_distill)
