"""Official-mode Refiner-ViT: a faithful replica of the released Refiner-ViT-S/M/L (DESIGN section 3).

The released models differ from a timm ViT with paper-mode refined attention in several ways, all of which
change the outputs of the released weights, so they are reproduced here exactly:

- a convolutional stem (7x7/2, 3x3, 3x3 convs with BN and ReLU) in front of a (p/2 x p/2) stride-(p/2) patch
  projection, so the effective patch size is p (16 for the released models);
- blocks alternate between "normal" (even index) and "shared" (odd index). A normal block computes its own
  softmax map A and adds s * (the map passed on by the block before); a shared block computes no Q or K and
  multiplies V by s * BN_adapt(A_prev + Body(A_prev)), then passes A_prev on unchanged;
- every residual branch sees its input scaled by 0.5 and its output divided by 0.5, and the MLP output is
  multiplied by a learned per-channel gain initialised to 1e-5;
- an optional auxiliary head on the patch tokens: in eval mode the logits are
  ``head(cls) + 0.5 * max over patches of aux_head(patches)``.

Training-mode choice: ``forward`` in train mode returns ``head(cls)`` only, so a plain cross-entropy training
loop works unchanged; `OfficialRefinerViT.forward_train` returns both the CLS logits and the per-patch
auxiliary logits for a token-labelling loss. The released training code's "MixToken" augmentation (cutmix on
patch tokens inside the model) is a training recipe, not part of the function the weights compute, and is
not reproduced.

Names ``refiner_vit_s``, ``refiner_vit_m``, ``refiner_vit_l`` are registered with timm. The released
checkpoints use other key names; `refiner.convert_official` maps them onto these modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models import register_model
from torch import nn

from .attention_refinement import AttentionRefinement

# The released code scales every residual branch's input by this ratio before its LayerNorm and divides the
# branch output by it; the weights were trained with it, so it is part of the function.
BRANCH_SCALE = 0.5
# Weight of the auxiliary head's max-over-patches logits at evaluation time (released code).
AUX_LOGIT_WEIGHT = 0.5
# Initial value of the MLP's per-channel output gain (released code).
MLP_GAIN_INIT = 1e-5
# Expansion ratio and kernel of the shared blocks' attention refinement (the same for every released size).
SHARED_REFINE_RATIO = 3
SHARED_REFINE_KERNEL = 3
# Released LayerNorms (inside blocks and final) use eps 1e-6.
LAYER_NORM_EPS = 1e-6

# Keyword arguments timm's factory passes to every entry point; they are not model options.
_FACTORY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")

ImageSize = Union[int, Sequence[int]]


@dataclass(frozen=True)
class RefinerViTConfig:
    """Architecture of an official-mode Refiner-ViT.

    Attributes:
        img_size: (H, W) input size in pixels the position embedding is built for; each a multiple of
            ``patch_size``. Other input sizes work too (the position embedding is interpolated).
        patch_size: effective patch size p = stride of the stem (2) times the projection stride (p/2); even.
        in_chans: input image channels.
        num_classes: classifier outputs (0: no head, `forward` returns pooled CLS features).
        embed_dim: token width D.
        depth: number of blocks; even indices are normal blocks, odd indices shared blocks.
        num_heads: H heads per block (D must be divisible by H).
        mlp_ratio: MLP hidden width as a multiple of D.
        drop_path_rate: stochastic depth rate of the last block (linearly increasing from 0 at block 0).
        aux_head: add the auxiliary per-patch classifier (token labelling).
    """

    img_size: Tuple[int, int] = (224, 224)
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 384
    depth: int = 16
    num_heads: int = 12
    mlp_ratio: float = 3.0
    drop_path_rate: float = 0.0
    aux_head: bool = False

    def __post_init__(self) -> None:
        if self.patch_size < 2 or self.patch_size % 2:
            raise ValueError(f"patch_size must be an even number >= 2 (stride-2 stem), got {self.patch_size}")
        height, width = self.img_size
        if height <= 0 or width <= 0 or height % self.patch_size or width % self.patch_size:
            raise ValueError(f"img_size must be a positive multiple of the patch size {self.patch_size}, "
                             f"got {height}x{width}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")

    @property
    def grid_size(self) -> Tuple[int, int]:
        """(Gh, Gw) patch grid at ``img_size``."""
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size


# Released sizes (Refiner_ViT_S/M/L in the original code); every other field keeps its default.
VARIANTS: Dict[str, RefinerViTConfig] = {
    "refiner_vit_s": RefinerViTConfig(embed_dim=384, depth=16, num_heads=12),
    "refiner_vit_m": RefinerViTConfig(embed_dim=420, depth=32, num_heads=12),
    "refiner_vit_l": RefinerViTConfig(embed_dim=512, depth=32, num_heads=16),
}
# Preprocessing of the released models (mean/std 0.5 and crop ratios from the original default_cfgs).
_CROP_PCT = {"refiner_vit_s": 0.9, "refiner_vit_m": 1.0, "refiner_vit_l": 1.13}


def _as_pair(size: ImageSize) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    pair = tuple(int(s) for s in size)
    if len(pair) != 2:
        raise ValueError(f"img_size must be an int or (height, width), got {size!r}")
    return pair  # type: ignore[return-value]


def is_shared_block(index: int) -> bool:
    """Odd blocks reuse the map passed on by the block before; even blocks compute their own."""
    return index % 2 == 1


class ConvStemPatchEmbed(nn.Module):
    """Convolutional stem plus patch projection: (B, C, H, W) -> (B, D, H/p, W/p).

    7x7 stride-2 conv (C->32), BN, ReLU; 3x3 conv (32->64), BN, ReLU; 3x3 conv (64->128), BN, ReLU; then a
    (p/2 x p/2) stride-(p/2) conv 128->D with bias. Only the projection has a bias (the BNs follow the others).

    Attributes:
        patch_size: (p, p), the effective stride, which is what attention capture needs to map tokens to pixels.
        img_size: (H, W) the model was built for.
        grid_size: (Gh, Gw) at ``img_size``.
        num_patches: Gh * Gw.
    """

    def __init__(self, img_size: Tuple[int, int], patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.conv1 = nn.Conv2d(in_chans, 32, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(128)
        half = patch_size // 2
        self.proj = nn.Conv2d(128, embed_dim, kernel_size=half, stride=half)

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """(Gh, Gw) this stem produces for an input of ``img_size`` = (H, W) pixels (any size)."""
        half = self.patch_size[0] // 2
        # conv1 (k 7, stride 2, pad 3) gives ceil(H / 2); the projection then floors by p/2.
        return tuple((((s - 1) // 2 + 1) - half) // half + 1 for s in img_size)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, C, H, W) images. Returns (B, D, Gh, Gw) patch features."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.proj(x)


class OfficialAttention(nn.Module):
    """Normal block attention: ``E = softmax(Q K^T s) [+ s * A_prev]``, output ``proj(E @ V)``.

    Attributes:
        num_heads: H.
        head_dim: d = D / H.
        scale: s = d^-0.5.
        qkv: Linear(D, 3D) with bias.
        proj: Linear(D, D) with bias; its input is ``E @ V`` (recording protocol of docs/CONTRACT.md).
        attention_hook: None, or a callable ``(softmax=A, effective=E, v=v)`` set by attention capture.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.attention_hook: Optional[Callable[..., None]] = None

    def forward(self, x: torch.Tensor, prev_attn: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Attend, mixing in the previous block's map.

        Args:
            x: (B, N, D) normalised tokens.
            prev_attn: (B, H, N, N) map passed on by the block before, or None for the first block.

        Returns:
            (B, N, D) branch output and the (B, H, N, N) effective map E, which this block passes on.
        """
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        # sqrt(s) on both q and k (instead of s on the product) rounds like the released code does.
        root = math.sqrt(self.scale)
        softmax = ((q * root) @ (k * root).transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
        effective = softmax if prev_attn is None else softmax + prev_attn * self.scale
        if self.attention_hook is not None:
            self.attention_hook(softmax=softmax, effective=effective, v=v)
        out = (effective @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out), effective


class SharedAttention(nn.Module):
    """Shared block attention: no Q or K; ``E = s * BN_adapt(A_prev + Body(A_prev))``, output ``proj(E @ V)``.

    Attributes:
        num_heads: H.
        head_dim: d = D / H.
        scale: s = d^-0.5.
        v: Linear(D, D) with bias, the value projection (named ``qkv`` in the released checkpoints).
        refinement: Body, `AttentionRefinement` with r = 3, k = 3, sequence layout.
        adapt_norm: BatchNorm2d over the H heads applied to ``A_prev + Body(A_prev)``.
        proj: Linear(D, D) with bias; its input is ``E @ V``.
        attention_hook: None, or a callable ``(softmax=None, effective=E, v=v)`` set by attention capture.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.v = nn.Linear(dim, dim, bias=True)
        self.refinement = AttentionRefinement(num_heads, ratio=SHARED_REFINE_RATIO, kernel=SHARED_REFINE_KERNEL,
                                              layout="sequence")
        self.adapt_norm = nn.BatchNorm2d(num_heads)
        self.proj = nn.Linear(dim, dim)
        self.attention_hook: Optional[Callable[..., None]] = None

    def forward(self, x: torch.Tensor, prev_attn: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Refine the previous block's map and apply it to this block's values.

        Args:
            x: (B, N, D) normalised tokens.
            prev_attn: (B, H, N, N) map passed on by the (normal) block before; required.

        Returns:
            (B, N, D) branch output and ``prev_attn`` unchanged (a shared block passes A_prev on, not E).
        """
        if prev_attn is None:
            raise ValueError("a shared Refiner-ViT block needs the attention map of the block before it; "
                             "block 0 must be a normal block")
        b, n, c = x.shape
        v = self.v(x).reshape(b, n, self.num_heads, self.head_dim).permute(0, 2, 1, 3)  # (B, H, N, d)
        effective = self.adapt_norm(prev_attn + self.refinement(prev_attn)) * self.scale
        if self.attention_hook is not None:
            self.attention_hook(softmax=None, effective=effective, v=v)
        out = (effective @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out), prev_attn


class GainMlp(nn.Module):
    """Linear, GELU, Linear, then a learned per-channel output gain: (B, N, D) -> (B, N, D).

    Attributes:
        gain: (D,) multiplier of the output, initialised to 1e-5 so each block starts near the identity.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.gain = nn.Parameter(torch.full((dim,), MLP_GAIN_INIT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, N, D). Returns (B, N, D)."""
        return self.fc2(self.act(self.fc1(x))) * self.gain


class RefinerBlock(nn.Module):
    """One Refiner-ViT block; ``attn`` is `OfficialAttention` (even index) or `SharedAttention` (odd index).

    ``x + branch(norm(0.5 * x)) / 0.5`` for both the attention and the MLP branch.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, shared: bool, drop_path: float = 0.0) -> None:
        super().__init__()
        self.shared = shared
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn: nn.Module = SharedAttention(dim, num_heads) if shared else OfficialAttention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = GainMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, prev_attn: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Args: x (B, N, D) tokens; prev_attn (B, H, N, N) or None. Returns (B, N, D) and the map to pass on."""
        branch, next_attn = self.attn(self.norm1(x * BRANCH_SCALE), prev_attn)
        x = x + self.drop_path(branch / BRANCH_SCALE)
        x = x + self.drop_path(self.mlp(self.norm2(x * BRANCH_SCALE))) / BRANCH_SCALE
        return x, next_attn


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: Tuple[int, int],
                       old_grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Resize the patch part of a (1, 1 + Gh*Gw, D) position embedding to another grid.

    Bilinear with ``align_corners=True``, as the released code's optional position-embedding interpolation.

    Args:
        pos_embed: (1, 1 + P, D), CLS position first.
        new_grid: (Gh', Gw') target grid.
        old_grid: (Gh, Gw) of ``pos_embed``; inferred as square when None.

    Returns:
        (1, 1 + Gh'*Gw', D); the CLS position is kept as it is.
    """
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    if old_grid is None:
        side = math.isqrt(patch_pos.shape[1])
        if side * side != patch_pos.shape[1]:
            raise ValueError(f"cannot infer a square grid from {patch_pos.shape[1]} position embeddings")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    dim = patch_pos.shape[-1]
    grid = patch_pos.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bilinear", align_corners=True)
    patch_pos = grid.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return torch.cat([cls_pos, patch_pos], dim=1)


class OfficialRefinerViT(nn.Module):
    """The released Refiner-ViT architecture (official mode of DESIGN section 3).

    Capturable by `refiner.capture_attention`: ``blocks`` (each with ``.attn`` following the recording
    protocol), ``patch_embed.patch_size`` and ``num_prefix_tokens`` (1: the CLS token).

    Args:
        config: the architecture.
    """

    def __init__(self, config: RefinerViTConfig) -> None:
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.num_features = self.embed_dim = config.embed_dim
        self.num_prefix_tokens = 1
        self.global_pool = "token"
        self.patch_embed = ConvStemPatchEmbed(config.img_size, config.patch_size, config.in_chans, config.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        # Sized for the built image size (1 + Gh*Gw positions); other sizes are interpolated in forward.
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, config.embed_dim))
        # Linear stochastic-depth schedule from 0 to drop_path_rate (plain Python: works on the meta device).
        rates = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList([
            RefinerBlock(config.embed_dim, config.num_heads, config.mlp_ratio, shared=is_shared_block(i),
                         drop_path=rates[i])
            for i in range(config.depth)
        ])
        self.norm = nn.LayerNorm(config.embed_dim, eps=LAYER_NORM_EPS)
        self.head = self._make_head(config.num_classes)
        self.aux_head: Optional[nn.Module] = self._make_head(config.num_classes) if config.aux_head else None
        self._init_weights()

    def _make_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _init_weights(self) -> None:
        """Initialisation of the released code: truncated normal (std .02) linears, zero biases."""
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Parameter names the optimizer should not decay."""
        return {"pos_embed", "cls_token"}

    def get_classifier(self) -> nn.Module:
        """The CLS classifier."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the head (and the auxiliary head, if any) with fresh ones of ``num_classes`` outputs."""
        if global_pool not in (None, "token"):
            raise ValueError("Refiner-ViT pools with the CLS token only")
        self.num_classes = num_classes
        self.head = self._make_head(num_classes)
        if self.aux_head is not None:
            self.aux_head = self._make_head(num_classes)

    def _pos_embed(self, grid: Tuple[int, int]) -> torch.Tensor:
        """(1, 1 + Gh*Gw, D) position embedding for ``grid``; exact at the built size."""
        return resample_pos_embed(self.pos_embed, grid, self.patch_embed.grid_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Run the stem and all blocks.

        Args:
            x: (B, C, H, W) images.

        Returns:
            (B, 1 + Gh*Gw, D) tokens after the final LayerNorm; token 0 is CLS.
        """
        x = self.patch_embed(x)  # (B, D, Gh, Gw)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, P, D), row-major over the grid
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self._pos_embed(grid)
        attn: Optional[torch.Tensor] = None
        for block in self.blocks:
            x, attn = block(x, attn)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Classify from the tokens of `forward_features`.

        Args:
            x: (B, 1 + P, D) normalised tokens.
            pre_logits: return the (B, D) CLS features instead of logits.

        Returns:
            (B, num_classes) logits. With an auxiliary head in eval mode:
            ``head(cls) + 0.5 * max over patches of aux_head(patches)``; in train mode ``head(cls)``.
        """
        cls = x[:, 0]
        if pre_logits:
            return cls
        logits = self.head(cls)
        if self.aux_head is not None and self.num_classes > 0 and not self.training:
            logits = logits + AUX_LOGIT_WEIGHT * self.aux_head(x[:, self.num_prefix_tokens:]).amax(dim=1)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, C, H, W) images. Returns (B, num_classes) logits (see `forward_head`)."""
        return self.forward_head(self.forward_features(x))

    def forward_train(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Both classifiers' raw outputs, for a token-labelling loss (any mode).

        Args:
            x: (B, C, H, W) images.

        Returns:
            (B, num_classes) CLS logits and (B, P, num_classes) per-patch auxiliary logits (None without
            an auxiliary head).
        """
        tokens = self.forward_features(x)
        aux = None if self.aux_head is None else self.aux_head(tokens[:, self.num_prefix_tokens:])
        return self.head(tokens[:, 0]), aux


def _pretrained_cfg(name: str, config: RefinerViTConfig) -> Dict[str, Any]:
    """timm-style data config (``resolve_data_config`` reads it) with the released preprocessing."""
    return {
        "architecture": name, "input_size": (config.in_chans, *config.img_size),
        "mean": (0.5,) * config.in_chans, "std": (0.5,) * config.in_chans, "interpolation": "bicubic",
        "crop_pct": _CROP_PCT[name], "num_classes": config.num_classes,
        "first_conv": "patch_embed.conv1", "classifier": "head",
    }


def _jsonable_overrides(overrides: Dict[str, Any]) -> Dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()}


def build_official(name: str, pretrained: bool = False, **overrides: Any) -> OfficialRefinerViT:
    """Build ``refiner_vit_{s,m,l}`` with overrides.

    Args:
        name: one of `VARIANTS`.
        pretrained: must be False; released weights are never downloaded.
        **overrides: any `RefinerViTConfig` field (img_size as int or (H, W)).

    Returns:
        The model with ``model_spec`` and ``pretrained_cfg`` set.

    Raises:
        ValueError: pretrained=True, an unknown override, or an invalid size.
    """
    if pretrained:
        raise ValueError(
            f"{name}: this project never downloads weights. Download the released Refiner-ViT checkpoint (.pth) "
            "from https://github.com/zhoudaquan/Refiner_ViT yourself, convert it with "
            "`refiner convert-official PATH --out DIR`, and load it with refiner.load_checkpoint(DIR)")
    overrides = {k: v for k, v in overrides.items() if k not in _FACTORY_KWARGS}
    fields = set(RefinerViTConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"{name} does not take {', '.join(unknown)}; options are {', '.join(sorted(fields))}")
    values = dict(overrides)
    if "img_size" in values:
        values["img_size"] = _as_pair(values["img_size"])
    config = replace(VARIANTS[name], **values)
    model = OfficialRefinerViT(config)
    model.model_spec = {"name": name, "overrides": _jsonable_overrides(overrides), "refine": None}
    model.pretrained_cfg = _pretrained_cfg(name, config)
    return model


@register_model
def refiner_vit_s(pretrained: bool = False, **kwargs: Any) -> OfficialRefinerViT:
    """Refiner-ViT-S (official mode): depth 16, D 384, 12 heads, 25.0M parameters at 224 px."""
    return build_official("refiner_vit_s", pretrained, **kwargs)


@register_model
def refiner_vit_m(pretrained: bool = False, **kwargs: Any) -> OfficialRefinerViT:
    """Refiner-ViT-M (official mode): depth 32, D 420, 12 heads, 55.0M parameters at 224 px."""
    return build_official("refiner_vit_m", pretrained, **kwargs)


@register_model
def refiner_vit_l(pretrained: bool = False, **kwargs: Any) -> OfficialRefinerViT:
    """Refiner-ViT-L (official mode): depth 32, D 512, 16 heads, 80.6M parameters at 224 px (released at 448)."""
    return build_official("refiner_vit_l", pretrained, **kwargs)


__all__: List[str] = [
    "ConvStemPatchEmbed", "GainMlp", "OfficialAttention", "OfficialRefinerViT", "RefinerBlock", "RefinerViTConfig",
    "SharedAttention", "VARIANTS", "build_official", "is_shared_block", "refiner_vit_l",
    "refiner_vit_m", "refiner_vit_s", "resample_pos_embed",
]
