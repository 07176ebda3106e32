"""Gradient-based attributions of a ViT's prediction (DESIGN section 5, "Attribution").

- `integrated_gradients`, `saliency`: captum's IntegratedGradients and Saliency on the input pixels.
- `attention_gradients`: every block's effective map and the gradient of the target logit with respect
  to it, in one forward and one backward pass.
- `attention_x_gradient`: Chefer, Gur & Wolf ("Generic Attention-model Explainability", ICCV 2021):
  per layer the head mean of (grad * attention) clipped at 0, accumulated as R <- R + A_bar R from R = I;
  the CLS row over the patches is the relevance map.

Unlike the metric modules these take a torch model. Gradients are taken with ``torch.autograd.grad`` on the
requested tensors only, so no ``.grad`` of any parameter is touched, and the model's mode (eval/train)
and its attention flags are left as they were.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch
from timm.layers import Attention
from torch import nn

import refiner


def _batch(image: torch.Tensor) -> torch.Tensor:
    if image.dim() == 3:
        return image.unsqueeze(0)
    if image.dim() == 4 and image.shape[0] == 1:
        return image
    raise ValueError(f"expected one image (C, H, W) or (1, C, H, W), got {tuple(image.shape)}")


def predicted_class(model: nn.Module, image: torch.Tensor) -> int:
    """Arg-max class of ``model`` on one preprocessed image (C, H, W)."""
    with torch.no_grad():
        return int(model(_batch(image)).argmax(dim=-1).item())


def integrated_gradients(model: nn.Module, image: torch.Tensor, target: Optional[int] = None, n_steps: int = 32,
                         baseline: Optional[torch.Tensor] = None, internal_batch_size: int = 8) -> np.ndarray:
    """captum IntegratedGradients of the target logit with respect to the input.

    Args:
        model: classifier, in the mode it should be explained in (normally eval).
        image: (C, H, W) preprocessed input.
        target: class index (default: the predicted class).
        n_steps: Riemann steps of the path integral.
        baseline: (C, H, W) reference input (default zeros, i.e. the dataset mean after normalisation).
        internal_batch_size: images per forward pass along the path (bounds memory).

    Returns:
        (C, H, W) float32 attributions (signed; they sum to f(x) - f(baseline) up to the integration error).
    """
    from captum.attr import IntegratedGradients

    x = _batch(image).detach()
    target = predicted_class(model, image) if target is None else int(target)
    base = torch.zeros_like(x) if baseline is None else _batch(baseline).to(x)
    attribution = IntegratedGradients(model).attribute(x, baselines=base, target=target, n_steps=n_steps,
                                                       internal_batch_size=internal_batch_size)
    return attribution[0].detach().float().numpy()


def saliency(model: nn.Module, image: torch.Tensor, target: Optional[int] = None) -> np.ndarray:
    """captum Saliency: absolute gradient of the target logit with respect to the input.

    Returns:
        (C, H, W) float32 non-negative values.
    """
    from captum.attr import Saliency

    x = _batch(image).detach().clone().requires_grad_(True)  # captum would otherwise warn and set it itself
    target = predicted_class(model, image) if target is None else int(target)
    return Saliency(model).attribute(x, target=target, abs=True)[0].detach().float().numpy()


def pixel_heatmap(attribution: np.ndarray, reduce: str = "abs_sum") -> np.ndarray:
    """Collapse (C, H, W) attributions to an (H, W) map scaled to [0, 1] for overlays.

    Args:
        attribution: (C, H, W).
        reduce: "abs_sum" (sum of magnitudes over channels) or "max" (max over channels, as for Saliency).

    Returns:
        (H, W) float array, max 1 (all zero stays zero).
    """
    values = np.abs(attribution).sum(axis=0) if reduce == "abs_sum" else np.abs(attribution).max(axis=0)
    peak = values.max()
    return values / peak if peak > 0 else values


def _timm_attention_matrix_hook(attn: Attention, store: List[Optional[torch.Tensor]], index: int
                                ) -> torch.utils.hooks.RemovableHandle:
    """On timm's unfused path ``attn_drop(softmax)`` is the matrix that multiplies V: record its output."""
    def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
        store[index] = output
    return attn.attn_drop.register_forward_hook(hook)


@dataclass
class AttentionGradients:
    """Effective maps of every block and the gradient of the target logit with respect to them.

    Attributes:
        maps: (L, H, N, N) float32 effective maps.
        grads: (L, H, N, N) float32 d logit[target] / d map.
        target: the explained class.
        logits: (num_classes,) float32 logits.
    """

    maps: np.ndarray
    grads: np.ndarray
    target: int
    logits: np.ndarray


def attention_gradients(model: nn.Module, image: torch.Tensor, target: Optional[int] = None) -> AttentionGradients:
    """One forward and one backward pass recording every block's effective map and its gradient.

    Our own attention layers are read through ``refiner.capture_attention(detach=False)``. timm's
    ``Attention`` computes its map inside a fused kernel, so for the duration of the call it is switched
    to its unfused path (identical output) and the map is read from ``attn_drop``'s output; the flag is
    restored afterwards, also on error.

    Args:
        model: a ViT that `refiner.capture_attention` supports.
        image: (C, H, W) preprocessed input.
        target: class index (default: the predicted class).

    Returns:
        `AttentionGradients`.
    """
    x = _batch(image).detach()
    blocks = list(model.blocks)
    timm_blocks = [i for i, b in enumerate(blocks) if type(b.attn) is Attention]
    own_blocks = [i for i in range(len(blocks)) if i not in timm_blocks]
    store: List[Optional[torch.Tensor]] = [None] * len(blocks)
    with ExitStack() as stack, torch.enable_grad():
        for i in timm_blocks:
            attn = blocks[i].attn
            previous = attn.fused_attn
            stack.callback(setattr, attn, "fused_attn", previous)
            attn.fused_attn = False
            stack.callback(_timm_attention_matrix_hook(attn, store, i).remove)
        rec = stack.enter_context(refiner.capture_attention(model, blocks=own_blocks, detach=False, verify=False)) \
            if own_blocks else None
        logits = model(x)[0]
        target = int(logits.argmax().item()) if target is None else int(target)
        for i in own_blocks:
            store[i] = rec.effective[i]
        if any(m is None for m in store):
            missing = [i for i, m in enumerate(store) if m is None]
            raise RuntimeError(f"no attention map was recorded for blocks {missing}")
        grads = torch.autograd.grad(logits[target], store, allow_unused=True)
    maps = np.stack([m[0].detach().float().numpy() for m in store])
    grad_arrays = np.stack([np.zeros_like(maps[i]) if g is None else g[0].detach().float().numpy()
                            for i, g in enumerate(grads)])
    return AttentionGradients(maps=maps, grads=grad_arrays, target=target,
                              logits=logits.detach().float().numpy())


def attention_x_gradient(maps: np.ndarray, grads: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Chefer et al. relevance from maps and their gradients (pure numpy).

    Args:
        maps: (L, H, N, N) effective maps.
        grads: (L, H, N, N) gradients of the target logit with respect to them.

    Returns:
        per_layer: (L, N, N) head mean of (grad * map) clipped at 0.
        relevance: (N, N) accumulated R = (I + A_bar_L) ... (I + A_bar_1) applied as R <- R + A_bar R.
    """
    per_layer = np.clip(grads * maps, 0.0, None).mean(axis=1)
    tokens = maps.shape[-1]
    relevance = np.eye(tokens, dtype=np.float64)
    for layer in per_layer:  # sequential by definition: each layer acts on the relevance so far
        relevance = relevance + layer @ relevance
    return per_layer, relevance
