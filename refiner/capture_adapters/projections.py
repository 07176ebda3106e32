"""Reading a timm-style block's own q, k and v, whichever way it projects them.

timm attention layers make q, k, v in one of three ways, and the capture reads each without computing the
projection again where the block exposes it:
- a fused ``qkv`` Linear that the block calls: its output, from a forward hook (free);
- a fused ``qkv`` weight with separate ``q_bias``/``v_bias`` that the block applies with ``F.linear``
  (BEiT, EVA): the Linear module is never called. EVA passes q and k through its ``q_norm``/``k_norm``
  modules (identity without qk-norm), so q and k are read there and v from the same projection output;
  BEiT calls no module in between, so its projection is recomputed from the block's input with the
  block's own weight and biases (the one case that costs a projection);
- separate ``q_proj``/``k_proj``/``v_proj`` Linears (unfused EVA/rotary layers): their outputs.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .slot import LayerSlot

QKV = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def applies_own_qkv_bias(attn: nn.Module) -> bool:
    """Whether the block projects with ``F.linear(x, qkv.weight, cat(q_bias, k_bias, v_bias))``."""
    return getattr(attn, "q_bias", None) is not None and not getattr(attn, "qkv_bias_separate", False)


def capture_qkv(attn: nn.Module, slot: LayerSlot, num_heads: int, num_kv_heads: Optional[int] = None
                ) -> Callable[[], Optional[QKV]]:
    """Install hooks that keep the block's q, k, v; return ``take()`` giving them once per call.

    Args:
        attn: the attention module (with ``qkv`` or ``q_proj``/``k_proj``/``v_proj``).
        slot: the layer's slot (hooks are registered there; the block's call is kept in it).
        num_heads: query heads H.
        num_kv_heads: key/value heads (grouped-query attention), default H.

    Returns:
        ``take()``: (q (B, H, N, d), k (B, H_kv, N, d), v (B, H_kv, N, d)) in the block's dtype, before
        q/k norms and rotary embedding, or None when the block has not run since the last take.
    """
    kv_heads = num_kv_heads or num_heads
    store: dict = {}
    fused = getattr(attn, "qkv", None)
    if isinstance(fused, nn.Linear) and applies_own_qkv_bias(attn):
        def on_call(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            store["x"] = (args[0] if args else kwargs["x"]).detach()
        slot.pre_hook(attn, on_call, with_kwargs=True)
        norms = [getattr(attn, n, None) for n in ("q_norm", "k_norm")]
        if all(isinstance(m, nn.Module) for m in norms):  # EVA: q and k pass through (identity) norm modules
            for name, norm in zip("qk", norms):
                def on_norm_input(_module: nn.Module, args: tuple, name: str = name) -> None:
                    store[name] = args[0]  # not detached: detach() would drop the view's ``_base``
                slot.pre_hook(norm, on_norm_input)

        def take_recomputed() -> Optional[QKV]:
            x = store.pop("x", None)
            q, k = store.pop("q", None), store.pop("k", None)
            if x is None:
                return None
            v = None if q is None or k is None else _values_beside(q, k, num_heads)
            if v is not None:
                return q.detach(), k.detach(), v.detach()
            bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
            with torch.no_grad():
                qkv = F.linear(x, weight=fused.weight, bias=bias)
            return _split_fused(qkv, num_heads)
        return take_recomputed

    if isinstance(fused, nn.Linear):
        def on_qkv(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            store["qkv"] = output.detach()  # a later in-place bias add (qkv_bias_separate) shows up here too
        slot.forward_hook(fused, on_qkv)

        def take_fused() -> Optional[QKV]:
            qkv = store.pop("qkv", None)
            return None if qkv is None else _split_fused(qkv, num_heads)
        return take_fused

    names = ("q_proj", "k_proj", "v_proj")
    if not all(isinstance(getattr(attn, n, None), nn.Linear) for n in names):
        raise TypeError(f"{type(attn).__name__} has neither a qkv Linear nor q_proj/k_proj/v_proj")
    for name in names:
        def on_projection(_module: nn.Module, _args: tuple, output: torch.Tensor, name: str = name) -> None:
            store[name] = output.detach()
        slot.forward_hook(getattr(attn, name), on_projection)

    def take_separate() -> Optional[QKV]:
        if not all(n in store for n in names):
            return None
        q, k, v = (store.pop(n) for n in names)
        return _heads(q, num_heads), _heads(k, kv_heads), _heads(v, kv_heads)
    return take_separate


def _values_beside(q: torch.Tensor, k: torch.Tensor, num_heads: int) -> Optional[torch.Tensor]:
    """v (B, H, N, d) read from the fused projection output that the block's q and k are views of.

    The block splits one (B, N, 3*H*d) tensor into q, k, v; q and k reach the norm modules as views of it
    (``_base``), so v is the third part of the same tensor, read without computing anything. None when q
    and k are not such views (then the projection is recomputed); the ``effective @ v`` check would
    reject a wrong v in any case.
    """
    base = q._base
    b, _, n, d = q.shape
    width = num_heads * d
    if base is None or k._base is not base or not base.is_contiguous() or base.numel() != b * n * 3 * width:
        return None
    base = base.view(b, n, 3 * width)  # F.linear may have made it as a (B*N, 3*H*d) matrix
    if q.data_ptr() != base.data_ptr() or k.data_ptr() != base.data_ptr() + width * base.element_size():
        return None  # q and k are not the first two parts of it
    _, _, v = _split_fused(base, num_heads)
    return v if v.shape == q.shape else None


def _split_fused(qkv: torch.Tensor, num_heads: int) -> QKV:
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads*d) -> (B, heads, N, d)."""
    b, n, _ = t.shape
    return t.reshape(b, n, heads, -1).transpose(1, 2)


def projection_input_module(attn: nn.Module) -> nn.Module:
    """The module whose input is ``(E @ V)`` reshaped to (B, N, H*d): the output norm if the block has one
    (``scale_norm``), else ``proj``."""
    norm = getattr(attn, "norm", None)
    return norm if isinstance(norm, nn.Module) else attn.proj
