"""Paper-mode refined self-attention as a drop-in attention layer for timm's ViT blocks (DESIGN section 3).

    A = softmax(Q K^T * s)          (B, H, N, N)
    E = A + Body(A)                 Body = AttentionRefinement (expansion, depthwise conv, reduction)
    out = proj(E @ V)

``forward`` never returns attention; `refiner.capture_attention` reads it through ``attention_hook``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
from timm.layers import Attention
from torch import nn

from .attention_refinement import AttentionRefinement, Layout


class RefinedAttention(Attention):
    """timm ``Attention`` whose attention maps are refined before they multiply V.

    Args:
        dim: token width D.
        num_heads: H.
        ratio, kernel, layout: see `AttentionRefinement`.
        num_prefix_tokens: K, needed by the spatial layout to find the patch block.
        grid_size: (Gh, Gw) the model was built for; the spatial layout uses it when N matches, and a square
            grid otherwise (inputs of another size with dynamic image size).
        **attention_kwargs: passed to timm's ``Attention`` (qkv_bias, qk_norm, attn_drop, proj_drop, ...).
    """

    def __init__(self, dim: int, num_heads: int = 8, ratio: int = 3, kernel: int = 3,
                 layout: Layout = "sequence", num_prefix_tokens: int = 1,
                 grid_size: Optional[Tuple[int, int]] = None, **attention_kwargs) -> None:
        super().__init__(dim, num_heads=num_heads, **attention_kwargs)
        # The explicit map is needed for the convolution, so the fused kernel cannot be used here.
        self.fused_attn = False
        self.refinement = AttentionRefinement(num_heads, ratio=ratio, kernel=kernel, layout=layout)
        self.num_prefix_tokens = num_prefix_tokens
        self.grid_size = tuple(grid_size) if grid_size is not None else None
        self.attention_hook: Optional[Callable[..., None]] = None

    @classmethod
    def from_attention(cls, attn: Attention, ratio: int = 3, kernel: int = 3, layout: Layout = "sequence",
                       num_prefix_tokens: int = 1, grid_size: Optional[Tuple[int, int]] = None,
                       zero_init: bool = False) -> "RefinedAttention":
        """Build a refined layer that shares nothing with, but copies the weights of, a timm ``Attention``."""
        if type(attn) is not Attention:
            raise TypeError(f"can only refine timm.layers.Attention, got {type(attn).__name__}")
        if getattr(attn, "gate", None) is not None:
            raise TypeError("gated attention is not supported by refine()")
        dim = attn.qkv.in_features
        refined = cls(
            dim, num_heads=attn.num_heads, ratio=ratio, kernel=kernel, layout=layout,
            num_prefix_tokens=num_prefix_tokens, grid_size=grid_size,
            attn_head_dim=attn.head_dim, dim_out=attn.proj.out_features,
            qkv_bias=attn.qkv.bias is not None, proj_bias=attn.proj.bias is not None,
            qk_norm=not isinstance(attn.q_norm, nn.Identity), scale_norm=not isinstance(attn.norm, nn.Identity),
            norm_layer=_norm_layer_of(attn), attn_drop=attn.attn_drop.p, proj_drop=attn.proj_drop.p,
        )
        missing, unexpected = refined.load_state_dict(attn.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("refinement.") for k in missing), (missing, unexpected)
        refined.to(device=attn.qkv.weight.device, dtype=attn.qkv.weight.dtype)
        if zero_init:
            refined.refinement.zero_init_()
        refined.train(attn.training)
        return refined

    def patch_grid(self, num_tokens: int) -> Tuple[int, int]:
        """(Gh, Gw) for a sequence of ``num_tokens`` tokens (spatial layout only)."""
        patches = num_tokens - self.num_prefix_tokens
        if self.grid_size is not None and self.grid_size[0] * self.grid_size[1] == patches:
            return self.grid_size
        side = math.isqrt(patches)
        if side * side != patches:
            raise ValueError(f"cannot infer the patch grid for {patches} patches; "
                             "the spatial layout needs a square grid or the model's own image size")
        return side, side

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        """Args: x (B, N, D). Returns (B, N, D_out)."""
        if attn_mask is not None or is_causal:
            raise NotImplementedError("refined attention does not support attention masks")
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        softmax = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
        grid = self.patch_grid(n) if self.refinement.layout == "spatial" else None
        effective = softmax + self.refinement(softmax, self.num_prefix_tokens, grid)
        if self.attention_hook is not None:
            self.attention_hook(softmax=softmax, effective=effective, v=v)
        x = self.attn_drop(effective) @ v  # (B, H, N, d)
        x = x.transpose(1, 2).reshape(b, n, self.attn_dim)
        x = self.norm(x)
        x = self.proj(x)
        return self.proj_drop(x)


def _norm_layer_of(attn: Attention) -> Optional[type]:
    """The norm class timm used for qk_norm / scale_norm (None when neither is on)."""
    for module in (attn.q_norm, attn.norm):
        if not isinstance(module, nn.Identity):
            return type(module)
    return None
