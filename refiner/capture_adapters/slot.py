"""What every capture adapter shares: one attention layer's place in the record, the fp32 recompute, the check.

An adapter reads a block's own tensors with hooks (q, k, v; the input of its output projection), and calls
`LayerSlot.record_softmax` (or `LayerSlot.record` for maps it builds itself). The slot keeps the map in
float32, optionally only some query rows, and checks that ``effective @ v`` reproduces what the block
really multiplied into its output; a capture that disagrees with the model raises `CaptureMismatchError`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from torch import nn


class CaptureMismatchError(RuntimeError):
    """The captured map times V does not reproduce the block's output."""


@contextmanager
def fp32_region(device: torch.device) -> Iterator[None]:
    """No autograd and no autocast: hooks run inside the caller's autocast region (bf16 analysis on a GPU),
    where an "fp32" recompute would otherwise silently run in bf16."""
    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
        yield


def select_rows(t: torch.Tensor, rows: Optional[torch.Tensor], dim: int) -> torch.Tensor:
    """``t`` restricted to query ``rows`` along ``dim`` (all rows when None)."""
    return t if rows is None else t.index_select(dim, rows.to(t.device))


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the ``effective @ v`` check for a block computing in ``dtype``."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2


def dropout_active(attn: nn.Module) -> bool:
    """Whether the layer drops attention weights now (then no recompute can match it, so no check)."""
    if not attn.training:
        return False
    drop = getattr(attn, "attn_drop", None)
    p = getattr(drop, "p", 0.0) if drop is not None else 0.0
    p = max(float(p), float(getattr(attn, "attention_dropout", 0.0) or 0.0))
    inner = getattr(getattr(attn, "attention", None), "dropout", None)  # transformers 4 layout
    return p > 0 or float(getattr(inner, "p", 0.0)) > 0


def normed_fp32(norm: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """``norm(t)`` in float32, as autocast runs layer norms: the input is cast to the norm's own weight dtype
    (float32 unless the whole model was cast down, in which case the model computed it in that dtype too)."""
    weight = next(norm.parameters(), None)
    with fp32_region(t.device):
        if weight is None:  # nn.Identity (no qk-norm) or a weightless norm
            return norm(t.float()).float()
        return norm(t.to(weight.dtype)).float()


def additive_mask(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """An attention mask as scaled_dot_product_attention reads it, as an additive float32 bias."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(~mask, float("-inf"))
    return mask.float()


@dataclass
class LayerSlot:
    """One captured attention layer: where its maps go and how they are kept.

    Attributes:
        index: the layer's index in the capture (``rec.effective[index]``).
        rec: the `refiner.capture.AttentionCapture` being filled.
        rows: query rows to keep (None: all).
        verify: check ``effective @ v`` against the block's projection input: True on a spread of rows,
            "all" on every row, False not at all.
        detach: keep detached maps (only our own layers can keep the graph).
        handles: hook handles, removed by the capture on exit.
        restore: undo callables, run by the capture on exit.
    """

    index: int
    rec: Any
    rows: Optional[torch.Tensor]
    verify: Any
    detach: bool
    handles: List[Any] = field(default_factory=list)
    restore: List[Callable[[], None]] = field(default_factory=list)
    pending: Dict[str, Any] = field(default_factory=dict)

    def forward_hook(self, module: nn.Module, hook: Callable) -> None:
        """Register ``hook(module, args, output)`` until the capture ends."""
        self.handles.append(module.register_forward_hook(hook))

    def pre_hook(self, module: nn.Module, hook: Callable, with_kwargs: bool = False) -> None:
        """Register a forward pre-hook (``hook(module, args[, kwargs])``) until the capture ends."""
        self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs))

    def keep_call(self, attn: nn.Module) -> None:
        """Keep the positional and keyword arguments of each call of ``attn`` in ``pending["call"]``."""
        def on_call(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            self.pending["call"] = (args, kwargs)
        self.pre_hook(attn, on_call, with_kwargs=True)

    def call_argument(self, name: str, position: int) -> Any:
        """An argument of the kept call, by keyword or by position (``position`` counts ``x`` as 0)."""
        args, kwargs = self.pending.get("call", ((), {}))
        if name in kwargs:
            return kwargs[name]
        return args[position] if len(args) > position else None

    def record_softmax(self, attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       projected_input: torch.Tensor, scale: float, bias: Optional[torch.Tensor] = None,
                       rows: Any = "default") -> None:
        """Recompute ``softmax(q k^T * scale + bias)`` in fp32 and record it as softmax and effective map.

        Args:
            attn: the attention module (for its train/dropout state).
            q: (B, H, N_q, d) the block's queries after every transform it applies (norm, rotary).
            k: (B, H, N, d) keys, same.
            v: (B, H, N, d) values.
            projected_input: (B, N_q, H*d) what the block feeds its output projection (or the norm before it).
            scale: the block's softmax scale.
            bias: additive (B or 1, H, N_q, N) bias (relative position, mask), or None.
            rows: query rows to keep; default the capture's.
        """
        rows = self.rows if isinstance(rows, str) else rows
        with fp32_region(q.device):
            # Contiguous fp32 copies first: a matmul on the block's strided q/k views (slices of its qkv
            # output) is about three times slower than the copy plus a contiguous matmul.
            q = select_rows(q, rows, 2).float().clone(memory_format=torch.contiguous_format).mul_(scale)
            scores = torch.matmul(q, k.float().contiguous().transpose(-2, -1))  # (B, H, Q, N)
            if bias is not None:
                scores.add_(select_rows(bias.float(), rows, -2) if bias.shape[-2] != 1 else bias.float())
            softmax = torch.softmax(scores, dim=-1, out=scores)  # in place: one (B, H, Q, N) buffer
        self.record(attn, softmax, softmax, v, projected_input, rows)

    def record(self, attn: nn.Module, softmax: Optional[torch.Tensor], effective: torch.Tensor, v: torch.Tensor,
               projected_input: torch.Tensor, rows: Any = "default") -> None:
        """Check ``effective @ v`` against the block's projection input and store both maps (fp32).

        Args:
            attn: the attention module.
            softmax: (B, H, Q, N) the block's softmax map, or None.
            effective: (B, H, Q, N) the matrix that multiplies V.
            v: (B, H, N, d) values.
            projected_input: (B, N_q, H*d) the block's own projection input.
            rows: the rows ``effective`` holds (default the capture's).
        """
        rows = self.rows if isinstance(rows, str) else rows
        if self.verify and not dropout_active(attn):
            self.check(effective, v, projected_input, rows)
        self.rec.softmax[self.index] = softmax
        self.rec.effective[self.index] = effective

    def check(self, effective: torch.Tensor, v: torch.Tensor, projected_input: torch.Tensor,
              rows: Optional[torch.Tensor]) -> None:
        """Compare ``effective @ v`` (B, H, Q, d) with the block's own (B, N, H*d) projection input.

        With ``verify=True`` the comparison covers `CHECKED_ROWS` query rows of every map (the first
        `CHECKED_LEADING_ROWS`, which hold every prefix token of the supported models, and rows evenly spread
        over the rest, the last included): a recompute that misses a position embedding, a bias, a norm or
        a scale is wrong in every row, and checking all rows would cost as much as recomputing the map.
        With ``verify="all"`` every row is compared.
        """
        b, h, q_rows, d = effective.shape[0], effective.shape[1], effective.shape[2], v.shape[-1]
        checked = None if self.verify == "all" else checked_rows(q_rows, effective.device)
        actual = projected_input.detach().float().reshape(b, -1, h, d)
        absolute = rows if checked is None else (checked if rows is None else rows.to(checked.device)[checked])
        actual = select_rows(actual, absolute, 1).transpose(1, 2)  # (B, H, Q', d) view
        with fp32_region(effective.device):  # an fp32 check, also under autocast
            part = select_rows(effective, checked, 2)
            difference = torch.matmul(part.float(), v.float().contiguous()).sub_(actual)
            error = difference.abs_().max().item()
            scale = max(actual.abs().max().item(), 1.0)
        self.rec.max_abs_error[self.index] = error
        if not error <= tolerance(projected_input.dtype) * scale:
            raise CaptureMismatchError(f"block {self.index}: effective @ v differs from the block's output by "
                                       f"{error:.3g} (scale {scale:.3g}); the capture does not describe what the "
                                       "model computed")


CHECKED_LEADING_ROWS = 8
CHECKED_ROWS = 32


def checked_rows(num_rows: int, device: torch.device) -> Optional[torch.Tensor]:
    """Row indices the default check compares (None: all, for maps of at most `CHECKED_ROWS` rows)."""
    if num_rows <= CHECKED_ROWS:
        return None
    rest = torch.linspace(CHECKED_LEADING_ROWS, num_rows - 1, CHECKED_ROWS - CHECKED_LEADING_ROWS).round().long()
    return torch.cat([torch.arange(CHECKED_LEADING_ROWS), rest]).to(device)
