"""Turning attention maps into row distributions (DESIGN section 5, "normalize").

A softmax map is row-stochastic. The effective map of a refined block, ``E = A + Body(A)``, is not: it can
be negative and its rows need not sum to one. Metrics that read a map as "where a query looks" (distance,
entropy, masses, rollout) therefore take ``normalize``:

- ``"none"``: use the map as it is (right for softmax maps; for effective maps it measures raw weights).
- ``"abs_rownorm"`` (default): ``|E| / sum_j |E_ij|``: magnitude of influence, sign ignored.
- ``"clip_rownorm"``: ``max(E, 0) / sum_j max(E_ij, 0)``: only the positive (additive) part.

Rows whose mass is zero after the transform (e.g. an all-negative row under ``clip_rownorm``) stay zero
rather than becoming NaN, so averages over rows stay finite; `negative_mass_fraction` reports how much of a
map the transform changes.
"""

from __future__ import annotations

from typing import Callable, List, Literal, Optional, Tuple, TypeVar

import numpy as np

from .blas_threads import Workspace, map_in_threads
from .layer_maps import LayerMaps

T = TypeVar("T")

Normalize = Literal["none", "abs_rownorm", "clip_rownorm"]
NORMALIZE_MODES: Tuple[str, ...] = ("none", "abs_rownorm", "clip_rownorm")
DEFAULT_NORMALIZE: Normalize = "abs_rownorm"


def as_float_array(maps: np.ndarray) -> np.ndarray:
    """Return ``maps`` as a float32/float64 array without copying when it already is one.

    Args:
        maps: any array-like (a torch tensor on CPU also works through ``np.asarray``), or `LayerMaps`, returned
            as it is (its layers are float32 or float64 already, and stacking them is what it exists to avoid).

    Returns:
        The same data as float64 if it was float64, else float32.
    """
    if isinstance(maps, LayerMaps):
        return maps
    array = np.asarray(maps)
    if array.dtype in (np.float32, np.float64):
        return array
    return array.astype(np.float32)


def check_mode(normalize: str) -> None:
    """Raise a clear ``ValueError`` for an unknown normalisation mode."""
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")


def safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` with 0 where the denominator is 0 (broadcasting as numpy does).

    Returns a new float array (float32 unless an input is float64).
    """
    numerator = np.asarray(numerator)
    denominator = np.asarray(denominator)
    zero = denominator == 0
    out = numerator / np.where(zero, 1, denominator).astype(np.result_type(denominator, np.float32))
    if zero.any():
        out = np.where(zero, 0, out)
    return out.astype(np.result_type(numerator, np.float32), copy=False)


def normalize_rows(maps: np.ndarray, normalize: Normalize = DEFAULT_NORMALIZE,
                   dtype: Optional[np.dtype] = None, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Apply a normalisation mode along the last (key) axis.

    Args:
        maps: (..., Q, N) attention maps; any leading axes (layers, heads, batch).
        normalize: ``"none"``, ``"abs_rownorm"`` or ``"clip_rownorm"`` (see module docstring).
        dtype: dtype of the result (default: that of `as_float_array`). ``np.float64`` normalises a float32
            map in float64 (the per-image metrics do this one layer at a time).
        out: optional C-contiguous (..., Q, N) array to write the result into (a buffer reused per layer);
            its dtype is the result's.

    Returns:
        (..., Q, N) array of ``dtype`` (``out`` when given). With a row-norm mode every row sums to 1 (or is all
        zero when its mass was zero). ``"none"`` without ``out`` returns the input unchanged (no copy) when it
        already has ``dtype``.
    """
    check_mode(normalize)
    maps = as_float_array(maps)
    dtype = np.dtype(out.dtype if out is not None else (maps.dtype if dtype is None else dtype))
    if out is not None and (out.shape != maps.shape or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous array of shape {maps.shape}, got {out.shape}")
    if out is None:
        if normalize == "none" and maps.dtype == dtype:
            return maps
        # One new array, everything else in place: at N = 785 a temporary is 1.26 GB per map kind, and the
        # page faults of fresh temporaries cost more than the arithmetic.
        out = np.empty(maps.shape, dtype=dtype)
    if normalize == "none":
        np.copyto(out, maps)
        return out
    # Slice by slice (one head's map: 2.5 MB at N = 785 in float32), so the three passes run in the cache.
    source, target = maps.reshape((-1,) + maps.shape[-2:]), out.reshape((-1,) + out.shape[-2:])
    for index in range(len(source)):
        if normalize == "abs_rownorm":
            np.abs(source[index], out=target[index])
        else:
            np.maximum(source[index], 0, out=target[index])
        renormalize_rows(target[index], out=target[index])
    return out


def map_normalised_layers(fn: Callable[[int, np.ndarray, Workspace], T], maps: np.ndarray, normalize: Normalize,
                          dtype: np.dtype = np.float64) -> List[T]:
    """``[fn(layer, rows, work) for every layer]``, layers in parallel threads (`map_in_threads`).

    ``rows`` is that layer's (H, Q, N) maps normalised (`normalize_rows`) in ``dtype`` into the calling thread's
    reused buffer (``work``): the one normalised copy the per-layer metrics read, so the normalised maps of all
    layers never exist at once. ``rows`` is overwritten by the thread's next layer: ``fn`` must not return it.

    Args:
        fn: work on one layer: (layer index, its normalised rows, the thread's `Workspace`).
        maps: (L, H, Q, N) float maps (`as_float_array`).
        normalize: row normalisation mode.
        dtype: dtype of ``rows`` (float64 by default: the divergences and Gram matrices need it).
    """
    def one_layer(layer: int, work: Workspace) -> T:
        return fn(layer, normalize_rows(maps[layer], normalize, out=work.array("rows", maps.shape[1:], dtype)), work)

    return map_in_threads(one_layer, len(maps))


def renormalize_rows(weights: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Divide each row (last axis) by its sum; zero-sum rows stay zero.

    Used after taking a sub-block of a map (e.g. the patch->patch block), whose rows no longer sum to 1.

    Args:
        weights: (..., Q, M) non-negative weights (or raw rows for ``normalize="none"``).
        out: optional float array of ``weights``' shape for the result; ``out=weights`` divides in place (no
            temporary: at N = 785 one would be a whole map's worth).

    Returns:
        (..., Q, M) rows summing to 1 (``out`` when given).
    """
    if out is not None:
        sums = weights.sum(axis=-1, keepdims=True)
        sums[sums == 0] = 1  # a zero-mass row is all zeros: 0 / 1 keeps it zero
        return np.divide(weights, sums, out=out)
    weights = as_float_array(weights)
    sums = weights.sum(axis=-1, keepdims=True)
    if np.all(sums != 0):
        return weights / sums  # fast path: no zero rows to protect
    return safe_divide(weights, sums)


_TINY = 1e-30  # 0 log 0 = 0 without a masked log: 0 * log(1e-30) == 0


def row_entropy_nats(p: np.ndarray, scratch: Optional[np.ndarray] = None) -> np.ndarray:
    """-sum p log p over the last axis, in nats, with 0 log 0 = 0 and non-positive entries ignored.

    One unmasked logarithm per entry (numpy's masked ``log(where=...)`` is several times slower) and float64
    sums, one leading slice at a time so that no float64 copy of a large stack is made.

    Args:
        p: (..., N) rows (float32 or float64).
        scratch: optional buffer for the logarithms, of p's shape or of one leading slice's (``p.shape[1:]``),
            and p's dtype (reused by callers in loops).

    Returns:
        (...) float64.
    """
    if p.ndim >= 3 and p.shape[0] > 1:
        out = np.empty(p.shape[:-1], dtype=np.float64)
        shared = scratch is None or scratch.shape == p.shape[1:]  # one slice's buffer, reused for every slice
        scratch = np.empty_like(p[0]) if scratch is None else scratch
        for index in range(p.shape[0]):
            out[index] = row_entropy_nats(p[index], scratch if shared else scratch[index])
        return out
    logs = np.empty_like(p) if scratch is None else scratch.reshape(p.shape)
    low = p.min() if p.size else 0
    if low > 0:
        np.log(p, out=logs)
    else:
        np.log(np.maximum(p, p.dtype.type(_TINY), out=logs), out=logs)
    weights = p if low >= 0 else np.maximum(p, 0)
    if p.dtype == np.float64 and p.ndim >= 1:
        # A batched dot product (BLAS) is twice as fast as einsum for float64 rows.
        return -np.matmul(weights[..., None, :], logs[..., :, None])[..., 0, 0]
    return -np.einsum("...j,...j->...", weights, logs, dtype=np.float64)
