"""The fused GPU path of the refined Body: ``torch.compile`` of its training step (issue 12).

On a GPU the Body's many memory-bound passes (BatchNorm statistics and normalisation, ReLU6, their backward)
are what a fusing compiler is for: inductor turns the layer stack into a few Triton kernels (the depthwise
convolution stays cuDNN's) and chooses what to recompute in the backward instead of storing it. On a CPU the
same compilation was measured slower than the hand-written autograd of `refiner.refinement_autograd`
(benchmarks/compile_refined.py, benchmarks/gpu_suite.sh), so `AttentionRefinement` takes this path only for
CUDA tensors in training mode. ``REFINER_FUSED_BODY=0`` turns it off; if compilation fails (no Triton, say),
a warning is given once and the eager path is used from then on.

The compiled function is the Body's plain layer stack, so its values and gradients are the layers' own;
tests/refiner/test_attention_refinement.py compares it with the eager Body on the CPU (inductor's C++ backend).
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

ENV_SWITCH = "REFINER_FUSED_BODY"
_compiled: Optional[Callable[..., torch.Tensor]] = None
_failed = False


def body_layers(body: nn.Module, attn: torch.Tensor, num_prefix_tokens: int,
                grid_size: Optional[Tuple[int, int]]) -> torch.Tensor:
    """The Body as its layer stack in training mode (batch statistics; running statistics updated).

    Args:
        body: an `AttentionRefinement`.
        attn: (B, H, N, N) attention maps.

    Returns:
        (B, H, N, N) refinement term.
    """
    x = F.relu6(body.expand_norm(body.expand(attn)))
    x = body.local(x) if body.layout == "sequence" else body._local_spatial(x, num_prefix_tokens, grid_size)
    x = F.relu6(body.local_norm(x))
    return body.reduce_norm(body.reduce(x))


def fused_wanted(attn: torch.Tensor) -> bool:
    """Whether the Body should take the compiled path for these maps (CUDA, not switched off, not failed)."""
    return (attn.is_cuda and not _failed and os.environ.get(ENV_SWITCH, "1") != "0"
            and not torch.compiler.is_compiling())


def fused_body_step(body: nn.Module, attn: torch.Tensor, num_prefix_tokens: int = 0,
                    grid_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """`body_layers` compiled with inductor (Triton on a GPU, C++ on a CPU); one compilation for all blocks.

    Raises whatever compilation raises; `AttentionRefinement` catches it and falls back (`mark_failed`).
    """
    global _compiled
    if _compiled is None:
        # dynamic=None: a new batch size first recompiles with static shapes, then dynamically.
        _compiled = torch.compile(body_layers)
    return _compiled(body, attn, num_prefix_tokens, grid_size)


def mark_failed(error: BaseException) -> None:
    """Remember that compilation failed in this process and say so once."""
    global _failed
    _failed = True
    warnings.warn(f"the compiled GPU path of the refined Body failed ({type(error).__name__}: {error}); "
                  f"using the eager path from now on (set {ENV_SWITCH}=0 to skip the attempt)", RuntimeWarning,
                  stacklevel=3)
