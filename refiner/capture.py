"""Capture every attention layer's maps during a forward pass (DESIGN section 3, "What capture returns").

    with capture_attention(model) as rec:
        logits = model(images)
    rec.softmax[i], rec.effective[i]   # (B, H, N, N) float32, or None
    rec.meta                           # AttentionMeta: prefix tokens (CLS or not, registers), grid, stride, size

Each layer is read by the adapter of its attention family (`refiner.capture_adapters`: this project's layers,
timm ``Attention``, rotary, relative position bias, CaiT talking-heads and class attention, Hugging Face
ViT/DeiT/DINOv2). With fused attention on, the maps are recomputed in fp32 from the block's own q and k,
so the model's fast path is left as it is, and ``effective @ v`` is compared with what the block really fed
into its output projection, so a capture that silently disagrees with the model is impossible. Hooks are
removed and every attribute that was set is restored on exit, also when the forward pass raises. A layer of
an unsupported family is an `UnsupportedAttentionError` (a TypeError) naming it and listing the supported
families, raised before anything is installed.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import torch
from torch import nn

from .capture_adapters import (SUPPORTED_FAMILIES, CaptureMismatchError, LayerSlot, UnsupportedAttentionError,
                               adapter_for, attention_layers, layer_num_heads)
from .model_geometry import AttentionMeta, grid_for_image, model_patch_size, token_layout

QueryRows = Union[Sequence[int], slice, torch.Tensor, None]

__all__ = ["AttentionCapture", "CaptureMismatchError", "SUPPORTED_FAMILIES", "UnsupportedAttentionError",
           "capture_attention"]


@dataclass
class AttentionCapture:
    """Maps recorded by `capture_attention` for the last forward pass in the ``with`` block.

    One entry per attention layer: ``model.blocks`` in order, then, for CaiT, its class-attention blocks
    (``meta.class_attention_layers``), whose maps are (B, H, 1, 1 + P): one query row (CLS), keys
    [CLS, patches]; ``query_rows`` does not apply to them, and `stacked` leaves them out.

    Attributes:
        softmax: per layer, (B, H, Q, N) float32 softmax map, or None (not captured, or the block computes
            none, like the shared blocks of the official Refiner-ViT). Q = N unless ``query_rows`` was set.
        effective: per layer, (B, H, Q, N) float32 matrix that multiplies V, or None if not captured.
        meta: geometry of the pass (set once the model has run).
        query_rows: indices of the captured query rows (None: all rows).
    """

    softmax: List[Optional[torch.Tensor]]
    effective: List[Optional[torch.Tensor]]
    meta: Optional[AttentionMeta] = None
    query_rows: Optional[torch.Tensor] = None
    max_abs_error: Dict[int, float] = field(default_factory=dict)

    def stacked(self, kind: str = "effective") -> torch.Tensor:
        """Captured maps of the captured self-attention layers stacked: (B, L_captured, H, Q, N) (equal heads
        only; CaiT's class-attention layers, of another shape, are left out)."""
        skip = set(self.meta.class_attention_layers) if self.meta is not None else set()
        maps = [m for i, m in enumerate(self.effective if kind == "effective" else self.softmax)
                if m is not None and i not in skip]
        if not maps:
            raise ValueError(f"no {kind} maps were captured")
        return torch.stack(maps, dim=1)


@contextmanager
def capture_attention(model: nn.Module, blocks: Optional[Iterable[int]] = None, query_rows: QueryRows = None,
                      verify: Union[bool, str] = True, detach: bool = True) -> Iterator[AttentionCapture]:
    """Record softmax and effective attention maps of ``model``'s blocks.

    Args:
        model: a ViT whose attention layers belong to a supported family (`SUPPORTED_FAMILIES`): timm ViTs,
            DeiT, hybrids, eva/eva02/dinov3/rope/PE, beit/beitv2/vit_relpos, cait, our refined models, the
            official Refiner-ViT, `refiner.hf_vit.wrap_hf_model` of transformers ViT/DeiT/DINOv2.
        blocks: layer indices to capture (default all; CaiT's class-attention layers follow its blocks);
            others cost nothing.
        query_rows: only keep these query rows (saves memory and time for large images), e.g. ``[0]`` for
            CLS (check ``meta.class_token_index`` first: some models have none).
        verify: check that ``effective @ v`` reproduces each block's projection input (fp32 tolerance 1e-4
            relative to its scale): True (default) on 32 rows of each map (the first 8, which hold the prefix
            tokens, and 24 spread over the rest; all rows of smaller maps), "all" on every row (as costly as the
            map itself), False not at all. Skipped for blocks in train mode with attention dropout.
        detach: store detached maps (default). With False, maps of our own layers stay on the autograd graph.

    Yields:
        An `AttentionCapture`, filled in by each forward pass (the last pass wins).
    """
    layers, class_layers = attention_layers(model)
    depth = len(layers)
    chosen = set(range(depth)) if blocks is None else {int(i) % depth for i in blocks}
    adapters = {i: adapter_for(layers[i]) for i in chosen}  # fail before touching anything
    if verify not in (True, False, "all"):
        raise ValueError(f"verify must be True, False or 'all', got {verify!r}")
    rows = _as_index(query_rows)
    rec = AttentionCapture(softmax=[None] * depth, effective=[None] * depth, query_rows=rows)
    handles: List[torch.utils.hooks.RemovableHandle] = []
    restore: List[Callable[[], None]] = []
    heads = [layer_num_heads(attn) for attn in layers]
    families = tuple(adapters[i].FAMILY if i in adapters else "" for i in range(depth))
    input_hw: List[int] = []

    def on_model_input(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        image = args[0] if args else next(iter(kwargs.values()))
        input_hw[:] = [int(image.shape[-2]), int(image.shape[-1])]

    def on_model_output(_module: nn.Module, _args: tuple, _output: object) -> None:
        rec.meta = _meta(model, input_hw, rec, depth, heads, families, class_layers)

    try:
        handles.append(model.register_forward_pre_hook(on_model_input, with_kwargs=True))
        handles.append(model.register_forward_hook(on_model_output))
        for index in sorted(chosen):
            slot = LayerSlot(index=index, rec=rec, rows=None if index in class_layers else rows, verify=verify,
                             detach=detach, handles=handles, restore=restore)
            adapters[index].install(layers[index], slot)
        yield rec
    finally:
        for handle in handles:
            handle.remove()
        for undo in restore:
            undo()


def _meta(model: nn.Module, input_hw: List[int], rec: AttentionCapture, depth: int, heads: List[int],
          families: tuple, class_layers: List[int]) -> AttentionMeta:
    height, width = input_hw
    layout = token_layout(model)
    grid = grid_for_image(model, height, width)
    expected = layout.num_prefix_tokens + grid[0] * grid[1]
    for i, captured in enumerate(rec.effective):
        if captured is None:
            continue
        tokens = expected + (1 if i in class_layers else 0)  # class attention: keys are [CLS, patches]
        if captured.shape[-1] != tokens:
            raise CaptureMismatchError(f"layer {i}: {captured.shape[-1]} tokens do not match "
                                       f"{layout.num_prefix_tokens} prefix tokens and a {grid[0]}x{grid[1]} grid")
    # A layer is refined when its effective map is not its softmax map by construction (our refined blocks,
    # talking heads); a vanilla layer records the very same tensor twice.
    refined = [rec.effective[i] is not None and rec.softmax[i] is not rec.effective[i] for i in range(depth)]
    return AttentionMeta(num_prefix_tokens=layout.num_prefix_tokens, grid_size=grid,
                         patch_size=model_patch_size(model), img_size=(height, width), depth=depth,
                         num_heads=heads, refined=refined, class_token_index=layout.class_token_index,
                         num_reg_tokens=layout.num_reg_tokens, num_distill_tokens=layout.num_distill_tokens,
                         families=families, class_attention_layers=tuple(class_layers))


def _as_index(query_rows: QueryRows) -> Optional[torch.Tensor]:
    if query_rows is None:
        return None
    if isinstance(query_rows, slice):
        raise TypeError("pass query rows as a list of indices")
    return torch.as_tensor(query_rows, dtype=torch.long).reshape(-1)
