"""Capture every block's attention maps during a forward pass (DESIGN section 3, "What capture returns").

    with capture_attention(model) as rec:
        logits = model(images)
    rec.softmax[i], rec.effective[i]   # (B, H, N, N) float32, or None
    rec.meta                           # AttentionMeta: prefix tokens, grid, patch size, image size

Two kinds of attention layer are understood:
- our own layers (refined, official Refiner-ViT), which call ``attention_hook(softmax=, effective=, v=)``;
- timm's ``Attention`` with fused attention on: the map is recomputed in fp32 from the block's own q and k
  (taken from the ``qkv`` output), so the model's fast path is left as it is.
In both cases ``effective @ v`` is compared with what the block really fed into its output projection, so a
capture that silently disagrees with the model is impossible. Hooks are removed and every attribute that was
set is restored on exit, also when the forward pass raises.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import torch
from timm.layers import Attention
from torch import nn

from .model_geometry import AttentionMeta, grid_for_image, model_patch_size

QueryRows = Union[Sequence[int], slice, torch.Tensor, None]


class CaptureMismatchError(RuntimeError):
    """The captured map times V does not reproduce the block's output."""


@dataclass
class AttentionCapture:
    """Maps recorded by `capture_attention` for the last forward pass in the ``with`` block.

    Attributes:
        softmax: per block, (B, H, Q, N) float32 softmax map, or None (not captured, or the block computes
            none, like the shared blocks of the official Refiner-ViT). Q = N unless ``query_rows`` was set.
        effective: per block, (B, H, Q, N) float32 matrix that multiplies V, or None if not captured.
        meta: geometry of the pass (set once the model has run).
        query_rows: indices of the captured query rows (None: all rows).
    """

    softmax: List[Optional[torch.Tensor]]
    effective: List[Optional[torch.Tensor]]
    meta: Optional[AttentionMeta] = None
    query_rows: Optional[torch.Tensor] = None
    max_abs_error: Dict[int, float] = field(default_factory=dict)

    def stacked(self, kind: str = "effective") -> torch.Tensor:
        """Captured maps of all captured blocks stacked: (B, L_captured, H, Q, N) (equal heads only)."""
        maps = [m for m in (self.effective if kind == "effective" else self.softmax) if m is not None]
        if not maps:
            raise ValueError(f"no {kind} maps were captured")
        return torch.stack(maps, dim=1)


def _attention_module_kind(attn: nn.Module) -> str:
    if hasattr(attn, "attention_hook"):
        return "protocol"
    if type(attn) is Attention:
        return "timm"
    raise TypeError(f"cannot capture attention from {type(attn).__name__}: supported are timm.layers.Attention "
                    "and this project's attention layers")


def _projection_input_module(attn: nn.Module) -> nn.Module:
    """The module whose input is ``(E @ V)`` reshaped to (B, N, H*d)."""
    norm = getattr(attn, "norm", None)
    return norm if isinstance(attn, Attention) and isinstance(norm, nn.Module) else attn.proj


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2


@contextmanager
def capture_attention(model: nn.Module, blocks: Optional[Iterable[int]] = None, query_rows: QueryRows = None,
                      verify: bool = True, detach: bool = True) -> Iterator[AttentionCapture]:
    """Record softmax and effective attention maps of ``model``'s blocks.

    Args:
        model: a ViT with ``blocks`` (each with ``.attn``), ``patch_embed.patch_size`` and
            ``num_prefix_tokens``: any timm ViT/DeiT, our refined models, the official Refiner-ViT.
        blocks: block indices to capture (default all); others cost nothing.
        query_rows: only keep these query rows (saves memory for large images), e.g. ``[0]`` for CLS.
        verify: check that ``effective @ v`` reproduces each block's projection input (fp32 tolerance 1e-4
            relative to its scale). Skipped for blocks in train mode with attention dropout.
        detach: store detached maps (default). With False, maps of our own layers stay on the autograd graph.

    Yields:
        An `AttentionCapture`, filled in by each forward pass (the last pass wins).
    """
    depth = len(model.blocks)
    chosen = set(range(depth)) if blocks is None else {int(i) % depth for i in blocks}
    kinds = {i: _attention_module_kind(model.blocks[i].attn) for i in chosen}  # fail before touching anything
    rows = _as_index(query_rows)
    rec = AttentionCapture(softmax=[None] * depth, effective=[None] * depth, query_rows=rows)
    handles: List[torch.utils.hooks.RemovableHandle] = []
    restore: List[Callable[[], None]] = []
    heads = [int(getattr(block.attn, "num_heads", 0)) for block in model.blocks]
    input_hw: List[int] = []

    def on_model_input(_module: nn.Module, args: tuple) -> None:
        image = args[0]
        input_hw[:] = [int(image.shape[-2]), int(image.shape[-1])]

    def on_model_output(_module: nn.Module, _args: tuple, _output: object) -> None:
        rec.meta = _meta(model, input_hw, rec, depth, heads, kinds)

    handles.append(model.register_forward_pre_hook(on_model_input))
    handles.append(model.register_forward_hook(on_model_output))
    try:
        for index in sorted(chosen):
            attn = model.blocks[index].attn
            if kinds[index] == "protocol":
                _install_protocol_capture(index, attn, rec, rows, verify, detach, handles, restore)
            else:
                _install_timm_capture(index, attn, rec, rows, verify, handles)
        yield rec
    finally:
        for handle in handles:
            handle.remove()
        for undo in restore:
            undo()


def _meta(model: nn.Module, input_hw: List[int], rec: AttentionCapture, depth: int, heads: List[int],
          kinds: Dict[int, str]) -> AttentionMeta:
    height, width = input_hw
    num_prefix = int(getattr(model, "num_prefix_tokens", 1))
    grid = grid_for_image(model, height, width)
    captured = next((m for m in rec.effective if m is not None), None)
    if captured is not None and captured.shape[-1] != num_prefix + grid[0] * grid[1]:
        raise CaptureMismatchError(f"{captured.shape[-1]} tokens do not match {num_prefix} prefix tokens and a "
                                   f"{grid[0]}x{grid[1]} grid")
    # A refined block is one whose effective map is not its softmax map by construction.
    refined = [kinds.get(i) == "protocol" and rec.softmax[i] is not rec.effective[i] for i in range(depth)]
    return AttentionMeta(num_prefix_tokens=num_prefix, grid_size=grid, patch_size=model_patch_size(model),
                         img_size=(height, width), depth=depth, num_heads=heads, refined=refined)


def _as_index(query_rows: QueryRows) -> Optional[torch.Tensor]:
    if query_rows is None:
        return None
    if isinstance(query_rows, slice):
        raise TypeError("pass query rows as a list of indices")
    return torch.as_tensor(query_rows, dtype=torch.long).reshape(-1)


def _select_rows(t: torch.Tensor, rows: Optional[torch.Tensor], dim: int) -> torch.Tensor:
    return t if rows is None else t.index_select(dim, rows.to(t.device))


def _check(index: int, effective: torch.Tensor, v: torch.Tensor, projected_input: torch.Tensor,
           rows: Optional[torch.Tensor], rec: AttentionCapture) -> None:
    """Compare ``effective @ v`` (B, H, Q, d) with the block's own (B, N, H*d) projection input.

    The comparison runs in the (B, H, Q, d) layout through a strided view of the block's tensor, and the
    difference is taken in place, so the check costs one matmul and two reductions, no copies.
    """
    b, h, d = effective.shape[0], effective.shape[1], v.shape[-1]
    actual = projected_input.float().reshape(b, -1, h, d)
    actual = _select_rows(actual, rows, 1).transpose(1, 2)  # (B, H, Q, d) view
    inf = float("inf")
    with torch.autocast(device_type=effective.device.type, enabled=False):  # an fp32 check, also under autocast
        difference = torch.matmul(effective.float(), v.float()).sub_(actual)
    error = torch.linalg.vector_norm(difference, ord=inf).item()
    scale = max(torch.linalg.vector_norm(actual, ord=inf).item(), 1.0)
    rec.max_abs_error[index] = error
    if not error <= _tolerance(projected_input.dtype) * scale:
        raise CaptureMismatchError(f"block {index}: effective @ v differs from the block's output by {error:.3g} "
                                   f"(scale {scale:.3g}); the capture does not describe what the model computed")


def _install_protocol_capture(index: int, attn: nn.Module, rec: AttentionCapture, rows: Optional[torch.Tensor],
                              verify: bool, detach: bool, handles: list, restore: list) -> None:
    pending: Dict[str, torch.Tensor] = {}
    previous_hook = attn.attention_hook

    def on_attention(softmax: Optional[torch.Tensor], effective: torch.Tensor, v: torch.Tensor) -> None:
        def keep(t: torch.Tensor) -> torch.Tensor:
            t = _select_rows(t, rows, 2)
            return t.detach().float() if detach else t.float()
        eff = keep(effective)
        rec.effective[index] = eff
        rec.softmax[index] = None if softmax is None else (eff if softmax is effective else keep(softmax))
        pending["effective"], pending["v"] = _select_rows(effective, rows, 2).detach(), v.detach()

    def on_projection_input(_module: nn.Module, args: tuple) -> None:
        if verify and pending and not _dropout_active(attn):
            _check(index, pending["effective"], pending["v"], args[0].detach(), rows, rec)
        pending.clear()

    attn.attention_hook = on_attention
    restore.append(lambda: setattr(attn, "attention_hook", previous_hook))
    handles.append(_projection_input_module(attn).register_forward_pre_hook(on_projection_input))


def _install_timm_capture(index: int, attn: Attention, rec: AttentionCapture, rows: Optional[torch.Tensor],
                          verify: bool, handles: list) -> None:
    pending: Dict[str, torch.Tensor] = {}

    def on_qkv_output(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
        pending["qkv"] = output.detach()

    def on_projection_input(_module: nn.Module, args: tuple) -> None:
        qkv = pending.pop("qkv", None)
        if qkv is None:
            return
        b, n, _ = qkv.shape
        q, k, v = qkv.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        # The hook runs inside the caller's autocast region (bf16 training or analysis on a GPU): without
        # switching it off, the "fp32" recompute and the check would silently run in bf16.
        with torch.no_grad(), torch.autocast(device_type=qkv.device.type, enabled=False):
            q, k = _normed_fp32(attn.q_norm, q), _normed_fp32(attn.k_norm, k)
            q = _select_rows(q, rows, 2)
            softmax = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, Q, N)
        if verify and not _dropout_active(attn):
            _check(index, softmax, v, args[0].detach(), rows, rec)
        rec.softmax[index] = softmax
        rec.effective[index] = softmax  # a vanilla block multiplies V by its softmax map

    handles.append(attn.qkv.register_forward_hook(on_qkv_output))
    handles.append(_projection_input_module(attn).register_forward_pre_hook(on_projection_input))


def _normed_fp32(norm: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """``norm(t)`` in float32, as autocast runs layer norms: the input is cast to the norm's own weight dtype
    (float32 unless the whole model was cast down, in which case the model computed it in that dtype too)."""
    weight = next(norm.parameters(), None)
    if weight is None:  # nn.Identity (no qk-norm) or a weightless norm
        return norm(t.float()).float()
    return norm(t.to(weight.dtype)).float()


def _dropout_active(attn: nn.Module) -> bool:
    drop = getattr(attn, "attn_drop", None)
    return bool(attn.training and drop is not None and getattr(drop, "p", 0.0) > 0)
