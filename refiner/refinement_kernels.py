"""Fused per-element kernels of the refined Body's training step on the CPU (issue 12).

The hand-written autograd of `refiner.refinement_autograd` leaves each BatchNorm + ReLU6 stage as a chain of
PyTorch kernels over (M, C) channels-last values with only C = r * H (6-48) channels: the ReLU6 mask, the
column sums of the gradient and of gradient x input, two multiply-adds, each a separate pass (and a fresh
13 MB buffer at the shipped pair's shapes). Here every stage is one or two fused loops, compiled once per
process by inductor's C++ backend (``torch.compile``, dynamic shapes, so one compilation serves every batch
size and map size; inductor keeps compiled code on disk, so later processes reuse it):

- `norm_stats`: mean and biased variance of every column in one pass (Welford);
- `scale_shift_relu6`: ``relu6(z * scale + shift)``;
- `relu6_norm_grad_sums`: the column sums of the masked gradient g and of ``g * z`` in one pass;
- `relu6_norm_grad`: ``a * g + b * z + c``, BatchNorm's input gradient, with the mask recomputed from y;
- `relu6_grad_with_sums`: the masked gradient and its column sums (the expansion's backward).

Each kernel has an eager twin (the same arithmetic as PyTorch operations) that runs when compilation is
switched off (``REFINER_COMPILED_KERNELS=0``), not wanted (not a CPU tensor, inside another compilation) or
fails (no C++ compiler: one warning, then eager for the rest of the process). The tests run the Body both
ways against the ``nn``-layer Body.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Dict, Tuple

import torch

ENV_SWITCH = "REFINER_COMPILED_KERNELS"
_compiled: Dict[str, Callable[..., object]] = {}
_failed = False


def channel_sums(x: torch.Tensor, lines: int = 256) -> torch.Tensor:
    """Sum over the rows of channels-last values, (M, C) -> (C,).

    A reduction over rows of only C (here 6-48) values vectorises poorly (``x.sum(0)``: 1.9 ms for
    (270400, 12) on this CPU). Seen as (M / k, k * C), ``lines`` = k rows side by side, the sum is a
    matrix-vector product with a vector of ones, which BLAS does at memory speed (0.5 ms); each of its k * C
    outputs adds only M / k values one after another, and the k partial sums per channel are added by a
    pairwise reduction, so the result is as close to the exact sum as ``x.sum(0)`` (about 1e-7 relative
    where a single product over all M rows is 100 times further off).
    """
    m, c = x.shape
    rows = m // lines
    if rows == 0:
        return x.sum(0)
    total = torch.mv(x[:rows * lines].reshape(rows, lines * c).t(), x.new_ones(rows)).view(lines, c).sum(0)
    return total + x[rows * lines:].sum(0) if rows * lines < m else total


def _relu6_mask(grad_y: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ReLU6's backward from its output: y is in (0, 6) exactly where its input was."""
    return torch.where((y > 0.0) & (y < 6.0), grad_y, torch.zeros((), dtype=grad_y.dtype))


# --- the kernels as plain PyTorch: what inductor compiles (`_fused_*`) and the eager twins (`_eager_*`) ---

def _fused_norm_stats(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    var, mean = torch.var_mean(z, dim=0, correction=0)
    return mean, var


def _eager_norm_stats(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    count = z.shape[0]
    mean = channel_sums(z) / count
    return mean, (channel_sums(z * z) / count - mean * mean).clamp_(min=0)


def _fused_scale_shift_relu6(z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return (z * scale + shift).clamp(0.0, 6.0)


def _eager_scale_shift_relu6(z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(shift, z, scale).clamp_(0.0, 6.0)


def _fused_relu6_norm_grad_sums(grad_y: torch.Tensor, y: torch.Tensor,
                                z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    grad = _relu6_mask(grad_y, y)
    return grad.sum(0), (grad * z).sum(0)


def _eager_relu6_norm_grad_sums(grad_y: torch.Tensor, y: torch.Tensor,
                                z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    grad = torch.ops.aten.hardtanh_backward(grad_y, y, 0.0, 6.0)
    return channel_sums(grad), channel_sums(grad * z)


def _fused_relu6_norm_grad(grad_y: torch.Tensor, y: torch.Tensor, z: torch.Tensor, a: torch.Tensor,
                           b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return _relu6_mask(grad_y, y) * a + z * b + c


def _eager_relu6_norm_grad(grad_y: torch.Tensor, y: torch.Tensor, z: torch.Tensor, a: torch.Tensor,
                           b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    grad = torch.ops.aten.hardtanh_backward(grad_y, y, 0.0, 6.0)
    return torch.addcmul(c, z, b).addcmul_(grad, a)


def _fused_relu6_grad_with_sums(grad_y: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    grad = _relu6_mask(grad_y, y)
    return grad, grad.sum(0)


def _eager_relu6_grad_with_sums(grad_y: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    grad = torch.ops.aten.hardtanh_backward(grad_y, y, 0.0, 6.0)
    return grad, channel_sums(grad)


_KERNELS = {
    "norm_stats": (_fused_norm_stats, _eager_norm_stats),
    "scale_shift_relu6": (_fused_scale_shift_relu6, _eager_scale_shift_relu6),
    "relu6_norm_grad_sums": (_fused_relu6_norm_grad_sums, _eager_relu6_norm_grad_sums),
    "relu6_norm_grad": (_fused_relu6_norm_grad, _eager_relu6_norm_grad),
    "relu6_grad_with_sums": (_fused_relu6_grad_with_sums, _eager_relu6_grad_with_sums),
}


def compiled_wanted(x: torch.Tensor) -> bool:
    """Whether the compiled kernels should run for these values.

    Only float32 CPU tensors (the Body runs in float32 even under autocast; float64 is for tests, which check
    the eager twins there), switched on, not failed before, and not inside another compilation (which fuses
    the eager twins itself).
    """
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not _failed
            and os.environ.get(ENV_SWITCH, "1") != "0" and not torch.compiler.is_compiling())


def _run(name: str, x: torch.Tensor, *args: torch.Tensor):
    """Kernel ``name`` on (x, *args): compiled where `compiled_wanted`, else its eager twin.

    ``dynamic=True``: one compilation per kernel serves every shape (the number of rows M changes with batch
    and map size, the channels with the model); dynamo compiles again for another torch thread count, since
    inductor writes the thread count into the C++ loops.
    """
    fused, eager = _KERNELS[name]
    if compiled_wanted(x):
        try:
            kernel = _compiled.get(name)
            if kernel is None:
                kernel = _compiled[name] = torch.compile(fused, dynamic=True, fullgraph=True)
            return kernel(x, *args)
        except Exception as error:  # noqa: BLE001 - any compiler failure; eager re-raises real errors
            mark_failed(error)
    return eager(x, *args)


def mark_failed(error: BaseException) -> None:
    """Remember that compilation failed in this process and say so once."""
    global _failed
    _failed = True
    warnings.warn(f"the compiled CPU kernels of the refined Body failed ({type(error).__name__}: {error}); "
                  f"using PyTorch operations from now on (set {ENV_SWITCH}=0 to skip the attempt)",
                  RuntimeWarning, stacklevel=3)


def norm_stats(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(M, C) -> (mean, biased variance), each (C,)."""
    return _run("norm_stats", z)


def scale_shift_relu6(z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``relu6(z * scale + shift)``: z (M, C), scale and shift (C,) -> (M, C)."""
    return _run("scale_shift_relu6", z, scale, shift)


def relu6_norm_grad_sums(grad_y: torch.Tensor, y: torch.Tensor,
                         z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Column sums of g and of ``g * z``, g = ReLU6's backward of grad_y at output y; all (M, C) -> (C,)."""
    return _run("relu6_norm_grad_sums", grad_y, y, z)


def relu6_norm_grad(grad_y: torch.Tensor, y: torch.Tensor, z: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                    c: torch.Tensor) -> torch.Tensor:
    """``a * g + b * z + c`` with g as in `relu6_norm_grad_sums`; (M, C) values, (C,) coefficients."""
    return _run("relu6_norm_grad", grad_y, y, z, a, b, c)


def relu6_grad_with_sums(grad_y: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(g, column sums of g): ReLU6's backward of grad_y at output y, (M, C) -> (M, C), (C,)."""
    return _run("relu6_grad_with_sums", grad_y, y)
