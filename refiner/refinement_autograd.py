"""Hand-written forward and backward of the refined Body's training-mode stages (issue 12).

The Body (`refiner.attention_refinement`) is memory-bound: every stage reads and writes (B, rH, N, N) maps
with only a few operations per element, so its cost is the number of passes over those maps. Built from
``nn`` layers, a training step makes about 35 such passes (BatchNorm alone reads its input twice forward and
twice backward, in float64 on a CPU, and the head-axis 1x1 convolutions go through layout copies). These
three autograd functions compute exactly the same values and gradients with fewer, cheaper passes:

- `ExpandNormReLU6`: relu6(BN(W A)) for the expansion. W A is linear in A, so BN's batch statistics are
  ``W mean(A)`` and ``diag(W Cov(A) W^T)``, computed from the (H,) sums and (H, H) second moments of A (one
  small GEMM), and BN folds into W: one 1x1 convolution (`expand_heads`) writes the (B, N*N, rH) maps
  channels-last, the layout the depthwise convolution wants.
- `NormReLU6`: relu6(BN(z)) for the depthwise convolution's output: one pass for the statistics, one for
  normalise + ReLU6, and a backward that reads the saved ReLU6 output (kept anyway by the reduction's GEMM)
  for its mask, with one pass for BN's two column sums and one for the input gradient. These passes (and
  the expansion's masked gradient with its sums) are `refiner.refinement_kernels`: fused C++ loops compiled
  by inductor for float32 on a CPU, the same arithmetic as PyTorch operations elsewhere.
- `ReduceNorm`: BN(W y) for the reduction back to H heads, one batched GEMM into the (B, H, N*N) layout of
  the attention maps, its gradient back into the channels-last layout of y.

Every function returns the batch mean and biased variance of its BatchNorm so that the caller can update the
running statistics (`update_running_stats`) exactly as ``nn.BatchNorm2d`` does. The tests compare values,
gradients and running statistics against the ``nn``-layer Body in float64 and float32.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from . import refinement_kernels as kernels


def update_running_stats(norm: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """Update ``norm``'s running statistics from one training batch, as ``nn.BatchNorm2d.forward`` does.

    Args:
        norm: the BatchNorm whose buffers to update (nothing happens if it tracks no running statistics).
        mean: (C,) batch mean.
        var: (C,) biased batch variance; the running variance gets the unbiased one, as in BatchNorm.
        count: number of values per channel in the batch.
    """
    if not norm.track_running_stats or norm.running_mean is None or norm.running_var is None:
        return
    with torch.no_grad():
        factor = norm.momentum if norm.momentum is not None else 0.0
        if norm.num_batches_tracked is not None:
            norm.num_batches_tracked.add_(1)
            if norm.momentum is None:  # cumulative moving average
                factor = 1.0 / float(norm.num_batches_tracked)
        norm.running_mean.lerp_(mean.detach().to(norm.running_mean.dtype), factor)
        unbiased = var.detach() * (count / max(count - 1, 1))
        norm.running_var.lerp_(unbiased.to(norm.running_var.dtype), factor)


def _bn_coefficients(gamma: torch.Tensor, rstd: torch.Tensor, mean: torch.Tensor, sum_grad: torch.Tensor,
                     sum_grad_x: torch.Tensor, count: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel (a, b, c) with BatchNorm's input gradient ``dL/dz = a * g + b * z + c``.

    From ``dL/dz = gamma * rstd * (g - mean(g) - xhat * mean(g * xhat))`` with ``xhat = (z - mean) * rstd``.

    Args:
        gamma, rstd, mean: (C,) BN weight, 1 / sqrt(var + eps) and batch mean.
        sum_grad: (C,) sum of the output gradient g over the batch.
        sum_grad_x: (C,) sum of g * xhat over the batch.
        count: values per channel.
    """
    a = gamma * rstd
    b = -a * rstd * sum_grad_x / count
    c = -a * sum_grad / count - b * mean
    return a, b, c


def _expansion_affine(weight: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, mean_maps: torch.Tensor,
                      second_maps: torch.Tensor, eps: float) -> Tuple[torch.Tensor, ...]:
    """BN of ``weight @ maps`` from the maps' moments: returns (folded weight, shift, batch mean, batch var).

    Args:
        weight: (C, H) expansion weights.
        gamma, beta: (C,) BN affine parameters.
        mean_maps: (H,) mean of the maps over batch and pixels.
        second_maps: (H, H) mean of the products of every pair of heads over batch and pixels.
    """
    covariance = second_maps - mean_maps[:, None] * mean_maps[None, :]
    mean = weight @ mean_maps
    # Clamped: rounding can make a (near-)zero variance slightly negative.
    var = ((weight @ covariance) * weight).sum(1).clamp(min=0)
    scale = gamma * torch.rsqrt(var + eps)
    return weight * scale[:, None], beta - mean * scale, mean, var


def expand_heads(maps: torch.Tensor, weight: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``weight @ maps + shift`` per pixel, written channels-last: (B, H, P) -> (B, P, C).

    With inner size H (4-16) a batched GEMM is a poor kernel (2.0 ms for B 64, H 4, N 65 on this CPU); a
    1x1 convolution of the channels-last maps is oneDNN's (0.7 ms, plus 0.5 ms for the layout copy of A,
    a third of the output's size). float64 (tests) has no oneDNN kernel and keeps the GEMM.
    """
    b, heads, pixels = maps.shape
    channels = weight.shape[0]
    if maps.dtype == torch.float64:
        return torch.baddbmm(shift.expand(b, pixels, channels), maps.transpose(1, 2),
                             weight.t().expand(b, heads, channels))
    image = maps.view(b, heads, pixels, 1).contiguous(memory_format=torch.channels_last)
    out = torch.nn.functional.conv2d(image, weight.view(channels, heads, 1, 1), shift)  # (B, C, P, 1)
    return out.permute(0, 2, 3, 1).reshape(b, pixels, channels)  # a view: the output is channels-last


class ExpandNormReLU6(torch.autograd.Function):
    """``relu6(BN(W @ A))`` per pixel in training mode, BN statistics from the moments of A.

    forward(maps, weight, gamma, beta, eps) -> (y, mean, var):
        maps: (B, H, P) attention maps, P = N * N pixels.
        weight: (C, H) expansion weights (the 1x1 convolution's).
        gamma, beta: (C,) BN affine parameters; eps: BN's epsilon.
        y: (B, P, C) channels-last expanded maps; mean, var: (C,) batch mean and biased variance.
    """

    @staticmethod
    def forward(ctx, maps: torch.Tensor, weight: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                eps: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, heads, pixels = maps.shape
        channels = weight.shape[0]
        count = b * pixels
        mean_maps = maps.sum(dim=(0, 2)) / count
        second_maps = torch.bmm(maps, maps.transpose(1, 2)).sum(0) / count
        folded, shift, mean, var = _expansion_affine(weight, gamma, beta, mean_maps, second_maps, eps)
        y = expand_heads(maps, folded, shift).clamp_(0.0, 6.0)
        ctx.save_for_backward(maps, y, weight, gamma, beta, mean_maps, second_maps, folded)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor, _grad_mean: Optional[torch.Tensor],
                 _grad_var: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
        maps, y, weight, gamma, beta, mean_maps, second_maps, folded = ctx.saved_tensors
        b, heads, pixels = maps.shape
        count = b * pixels
        # ReLU6's mask from its output (y is in (0, 6) exactly where its input was) and the shift's gradient.
        channels = y.shape[-1]
        grad, grad_shift = kernels.relu6_grad_with_sums(grad_y.reshape(-1, channels), y.reshape(-1, channels))
        grad = grad.view(y.shape)  # (B, P, C)
        grad_folded = torch.bmm(maps, grad).sum(0).t()  # (C, H)
        # The statistics are small tensors: let autograd carry their gradient to W, gamma, beta and the moments.
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (weight, gamma, beta, mean_maps, second_maps)]
            new_folded, new_shift, _, _ = _expansion_affine(*leaves, ctx.eps)
            grad_weight, grad_gamma, grad_beta, grad_mean, grad_second = torch.autograd.grad(
                (new_folded, new_shift), leaves, (grad_folded, grad_shift))
        # dL/dA = folded^T grad^T (the GEMM) + (G + G^T) / count @ A (the second moments) + grad_mean / count.
        symmetric = (grad_second + grad_second.t()) / count
        grad_maps = torch.baddbmm((grad_mean / count)[None, :, None], symmetric.expand(b, heads, heads), maps)
        grad_maps.baddbmm_(folded.t().expand(b, heads, folded.shape[0]), grad.transpose(1, 2))
        return grad_maps, grad_weight, grad_gamma, grad_beta, None


class NormReLU6(torch.autograd.Function):
    """``relu6(BN(z))`` in training mode on channels-last maps.

    forward(z, gamma, beta, eps) -> (y, mean, var):
        z: (M, C) values, one column per channel (the channels-last view of (B, C, N, N) maps).
        y: (M, C); mean, var: (C,) batch mean and biased variance.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                eps: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, var = kernels.norm_stats(z)
        rstd = torch.rsqrt(var + eps)
        scale = gamma * rstd
        y = kernels.scale_shift_relu6(z, scale, beta - mean * scale)
        ctx.save_for_backward(z, y, gamma, mean, rstd)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor, _grad_mean: Optional[torch.Tensor],
                 _grad_var: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
        z, y, gamma, mean, rstd = ctx.saved_tensors
        count = z.shape[0]
        sum_grad, sum_grad_z = kernels.relu6_norm_grad_sums(grad_y, y, z)
        sum_grad_x = rstd * (sum_grad_z - mean * sum_grad)
        a, b, c = _bn_coefficients(gamma, rstd, mean, sum_grad, sum_grad_x, count)
        grad_z = kernels.relu6_norm_grad(grad_y, y, z, a, b, c)
        return grad_z, sum_grad_x, sum_grad, None


class ReduceNorm(torch.autograd.Function):
    """``BN(W @ y)`` per pixel in training mode, the reduction back to H heads.

    forward(y, weight, gamma, beta, eps) -> (out, mean, var):
        y: (B, P, C) channels-last maps.
        weight: (H, C) reduction weights; gamma, beta: (H,).
        out: (B, H, P), the layout of the attention maps; mean, var: (H,) batch mean and biased variance.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, weight: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                eps: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, pixels, channels = y.shape
        heads = weight.shape[0]
        count = b * pixels
        x = torch.bmm(weight.expand(b, heads, channels), y.transpose(1, 2))  # (B, H, P)
        mean = x.sum(dim=(0, 2)) / count
        var = ((x * x).sum(dim=(0, 2)) / count - mean * mean).clamp_(min=0)
        rstd = torch.rsqrt(var + eps)
        scale = gamma * rstd
        out = torch.addcmul((beta - mean * scale)[:, None], x, scale[:, None])
        ctx.save_for_backward(y, weight, x, gamma, mean, rstd)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, _grad_mean: Optional[torch.Tensor],
                 _grad_var: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
        y, weight, x, gamma, mean, rstd = ctx.saved_tensors
        b, pixels, channels = y.shape
        heads = weight.shape[0]
        count = b * pixels
        sum_grad = grad_out.sum(dim=(0, 2))
        sum_grad_x = rstd * ((grad_out * x).sum(dim=(0, 2)) - mean * sum_grad)
        a, bb, c = _bn_coefficients(gamma, rstd, mean, sum_grad, sum_grad_x, count)
        grad_x = torch.addcmul(c[:, None], x, bb[:, None]).addcmul_(grad_out, a[:, None])  # (B, H, P)
        grad_weight = torch.bmm(grad_x, y).sum(0)  # (H, C)
        # Back into y's channels-last layout: (B, P, H) @ (B, H, C).
        grad_y = torch.bmm(grad_x.transpose(1, 2), weight.expand(b, heads, channels))
        return grad_y, grad_weight, sum_grad_x, sum_grad, None
