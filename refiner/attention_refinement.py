"""The convolution over attention maps used by Refiner (arXiv 2106.03714), DESIGN section 3.

The head axis is treated as channels and the (query, key) axes as an image:

    Body = 1x1 conv H->rH, BN, ReLU6, depthwise kxk conv, BN, ReLU6, 1x1 conv rH->H, BN

"Attention expansion" is the first 1x1 conv (more heads than the block has), "distributed local attention"
(DLA) is the depthwise kxk conv over each expanded N x N map, and the last 1x1 conv reduces back to H heads.
"""

from __future__ import annotations

from typing import Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import refinement_fused
from .refinement_autograd import ExpandNormReLU6, NormReLU6, ReduceNorm, expand_heads, update_running_stats

Layout = Literal["sequence", "spatial"]
LAYOUTS: Tuple[str, ...] = ("sequence", "spatial")


class AttentionRefinement(nn.Module):
    """Body(A) of a refined attention block.

    Args:
        num_heads: H, the number of heads of the attention maps that come in and go out.
        ratio: expansion ratio r; the convolutions work on r*H channels.
        kernel: k, size of the depthwise kernel (odd, so that 'same' padding is symmetric).
        layout: "sequence" convolves the N x N matrix in token order (what the paper's code does);
            "spatial" uses k x k neighbourhoods on the patch grid for both the query and the key axis
            (a depthwise 4-D kernel with k^4 taps per channel); prefix rows/columns skip the
            depthwise step (they have no grid position) but still go through the 1x1 convs and BNs.
    """

    def __init__(self, num_heads: int, ratio: int = 3, kernel: int = 3, layout: Layout = "sequence") -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be a positive odd number, got {kernel}")
        if ratio < 1:
            raise ValueError(f"ratio must be >= 1, got {ratio}")
        self.num_heads = num_heads
        self.ratio = ratio
        self.kernel = kernel
        self.layout = layout
        channels = num_heads * ratio
        self.expand = nn.Conv2d(num_heads, channels, 1, bias=False)
        self.expand_norm = nn.BatchNorm2d(channels)
        if layout == "sequence":
            self.local = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels, bias=False)
        else:
            # One k x k (key grid) filter per (channel, query offset): a full 4-D depthwise kernel.
            self.local = nn.Conv2d(channels * kernel * kernel, channels, kernel, padding=kernel // 2,
                                   groups=channels, bias=False)
        self.local_norm = nn.BatchNorm2d(channels)
        self.reduce = nn.Conv2d(channels, num_heads, 1, bias=False)
        self.reduce_norm = nn.BatchNorm2d(num_heads)

    def zero_init_(self) -> None:
        """Make Body output exactly zero at initialisation, so E = A + Body(A) starts as A."""
        nn.init.zeros_(self.reduce_norm.weight)
        nn.init.zeros_(self.reduce_norm.bias)

    def forward(self, attn: torch.Tensor, num_prefix_tokens: int = 0,
                grid_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Compute Body(attn).

        Args:
            attn: (B, H, N, N) attention maps, rows are queries.
            num_prefix_tokens: K, tokens before the patches (only used by the spatial layout).
            grid_size: (Gh, Gw) patch grid with Gh * Gw = N - K (only used by the spatial layout).

        Returns:
            (B, H, N, N) refinement term; it is not a probability matrix.
        """
        if not self.training:
            return self._forward_folded(attn, num_prefix_tokens, grid_size)
        device = attn.device.type
        if torch.is_autocast_enabled(device):
            # The Body runs in fp32 under autocast (as BatchNorm would), on both paths: its statistics need
            # it, and it is memory-bound, so lower precision would buy little.
            with torch.autocast(device, enabled=False):
                return self._forward_train_fp32(attn.float(), num_prefix_tokens, grid_size)
        return self._forward_train_fp32(attn, num_prefix_tokens, grid_size)

    def _forward_train_fp32(self, attn: torch.Tensor, num_prefix_tokens: int,
                            grid_size: Optional[Tuple[int, int]]) -> torch.Tensor:
        """Training-mode forward outside autocast: the fused GPU path where it applies, else the eager one."""
        if refinement_fused.fused_wanted(attn):
            try:
                return refinement_fused.fused_body_step(self, attn, num_prefix_tokens, grid_size)
            except Exception as error:  # noqa: BLE001 - any compiler failure; the eager path re-raises real errors
                refinement_fused.mark_failed(error)
        return self._forward_train(attn, num_prefix_tokens, grid_size)

    def _forward_train(self, attn: torch.Tensor, num_prefix_tokens: int,
                       grid_size: Optional[Tuple[int, int]]) -> torch.Tensor:
        """Training-mode forward (batch statistics, running statistics updated) with hand-written autograd.

        Same values and gradients as the stack of ``nn`` layers; see `refiner.refinement_autograd`.
        """
        b, heads, n, _ = attn.shape
        channels, pixels = self.expand.out_channels, n * n
        count = b * pixels
        weight = self.expand.weight.view(channels, heads)
        norm = self.expand_norm
        x, mean, var = ExpandNormReLU6.apply(attn.reshape(b, heads, pixels), weight, norm.weight, norm.bias,
                                             norm.eps)
        update_running_stats(norm, mean, var, count)
        x = x.view(b, n, n, channels).permute(0, 3, 1, 2)  # (B, rH, N, N), channels-last
        if self.layout == "sequence":
            x = self.local(x)
        else:
            x = self._local_spatial(x, num_prefix_tokens, grid_size)
        norm = self.local_norm
        # A view when x is channels-last (oneDNN's depthwise convolution keeps the layout).
        x, mean, var = NormReLU6.apply(x.permute(0, 2, 3, 1).reshape(count, channels), norm.weight, norm.bias,
                                       norm.eps)
        update_running_stats(norm, mean, var, count)
        norm = self.reduce_norm
        out, mean, var = ReduceNorm.apply(x.view(b, pixels, channels), self.reduce.weight.view(heads, channels),
                                          norm.weight, norm.bias, norm.eps)
        update_running_stats(norm, mean, var, count)
        return out.view(b, heads, n, n)

    def _forward_folded(self, attn: torch.Tensor, num_prefix_tokens: int,
                        grid_size: Optional[Tuple[int, int]]) -> torch.Tensor:
        """Eval-mode forward with each BatchNorm folded into the conv before it (same result, 3 fewer passes)."""
        b, heads, n, _ = attn.shape
        channels, pixels = self.expand.out_channels, n * n
        scale1, shift1 = _bn_affine(self.expand_norm)
        scale2, shift2 = _bn_affine(self.local_norm)
        scale3, shift3 = _bn_affine(self.reduce_norm)
        weight1 = self.expand.weight.view(channels, heads) * scale1[:, None]
        # The same copy-free layouts as in training: (B, H, N*N) -> channels-last (B, N*N, rH) -> (B, H, N*N).
        # In-place ReLU6 only on fresh outputs whose producers do not need them for a backward pass.
        x = expand_heads(attn.reshape(b, heads, pixels), weight1, shift1)
        x = F.relu6(x, inplace=True).view(b, n, n, channels).permute(0, 3, 1, 2)
        if self.layout == "sequence":
            x = F.conv2d(x, self.local.weight * scale2.view(-1, 1, 1, 1), shift2, padding=self.kernel // 2,
                         groups=channels)
        else:
            x = self._local_spatial(x, num_prefix_tokens, grid_size)
            x = x * scale2.view(1, -1, 1, 1) + shift2.view(1, -1, 1, 1)
        x = F.relu6(x, inplace=True).permute(0, 2, 3, 1).reshape(b, pixels, channels)
        weight3 = self.reduce.weight.view(heads, channels) * scale3[:, None]
        out = torch.baddbmm(shift3[:, None], weight3.expand(b, heads, channels), x.transpose(1, 2))
        return out.view(b, heads, n, n)

    def _local_spatial(self, x: torch.Tensor, num_prefix_tokens: int,
                       grid_size: Optional[Tuple[int, int]]) -> torch.Tensor:
        """Depthwise 4-D conv over (query grid, key grid) of the patch->patch block.

        Args:
            x: (B, C, N, N) expanded maps.

        Returns:
            (B, C, N, N); prefix rows and columns are passed through unchanged.
        """
        if grid_size is None:
            raise ValueError("the spatial layout needs the patch grid size")
        b, c, n, _ = x.shape
        gh, gw = grid_size
        k, pad = self.kernel, self.kernel // 2
        if gh * gw != n - num_prefix_tokens:
            raise ValueError(f"grid {gh}x{gw} with {num_prefix_tokens} prefix tokens does not match N={n}")
        patches = x[:, :, num_prefix_tokens:, num_prefix_tokens:].reshape(b, c, gh, gw, gh * gw)
        # Shift the query grid by every offset of the k x k window and fold the offsets into channels,
        # then one grouped conv over the key grid sums over both neighbourhoods.
        padded = F.pad(patches, (0, 0, pad, pad, pad, pad))  # pads the query grid (gw, then gh)
        shifted = torch.stack([padded[:, :, dy:dy + gh, dx:dx + gw] for dy in range(k) for dx in range(k)], dim=2)
        # (B, C, k*k, Gh, Gw, P) -> (B * P_query, C * k*k, Gh_key, Gw_key)
        shifted = shifted.permute(0, 3, 4, 1, 2, 5).reshape(b * gh * gw, c * k * k, gh, gw)
        local = self.local(shifted).reshape(b, gh * gw, c, gh * gw).permute(0, 2, 1, 3)
        out = x.clone()
        out[:, :, num_prefix_tokens:, num_prefix_tokens:] = local
        return out


def _bn_affine(norm: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) such that eval-mode ``norm(x) == x * scale + shift`` per channel."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    return scale, norm.bias - norm.running_mean * scale

