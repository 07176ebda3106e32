"""What a ViT's token sequence looks like: prefix tokens, patch size, patch grid for an input size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from torch import nn


@dataclass(frozen=True)
class AttentionMeta:
    """Geometry of one captured forward pass.

    Attributes:
        num_prefix_tokens: K, tokens before the patches (CLS, distillation, registers).
        grid_size: (Gh, Gw) patch grid; N = K + Gh * Gw.
        patch_size: (ph, pw) pixels per patch (effective stride of the patch embedding).
        img_size: (H, W) of the input image in pixels.
        depth: number of blocks L.
        num_heads: heads per block.
        refined: whether each block's effective map differs from its softmax map by construction.
    """

    num_prefix_tokens: int
    grid_size: Tuple[int, int]
    patch_size: Tuple[int, int]
    img_size: Tuple[int, int]
    depth: int
    num_heads: List[int]
    refined: List[bool]

    @property
    def num_tokens(self) -> int:
        """N = K + Gh * Gw."""
        return self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]


def model_patch_size(model: nn.Module) -> Tuple[int, int]:
    """(ph, pw) from ``model.patch_embed.patch_size``."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is None:
        raise TypeError(f"{type(model).__name__} has no patch_embed.patch_size")
    return (int(patch), int(patch)) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))


def model_grid_size(model: nn.Module) -> Optional[Tuple[int, int]]:
    """The patch grid the model was built for (None if it does not say)."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    return None if grid is None else (int(grid[0]), int(grid[1]))


def grid_for_image(model: nn.Module, height: int, width: int) -> Tuple[int, int]:
    """(Gh, Gw) the model produces for an input of ``height`` x ``width`` pixels."""
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size"):
        gh, gw = patch_embed.dynamic_feat_size((height, width))
        return int(gh), int(gw)
    ph, pw = model_patch_size(model)
    return height // ph, width // pw
