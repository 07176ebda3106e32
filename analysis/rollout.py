"""Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020).

The residual connection is modelled by adding the identity to each layer's (head-fused) map and
renormalising its rows, ``A~ = (A + I) / rowsum``; the joint attention of the input to layer l's output is
the product ``R_l = A~_l A~_(l-1) ... A~_1`` (later layers on the left, as token j of layer l mixes tokens of
layer l - 1). The CLS row of R_L, restricted to the patches, is the classic rollout heat map.

Discarding, this project's rule: before adding the identity, the lowest ``round(discard_ratio * (N*N - N))``
off-diagonal entries of each fused map are set to 0; the diagonal is never discarded (every token stays
connected to itself) and does not count towards the share. This differs from Gildenblat's ``vit-explain``,
which ranks all N*N entries of the fused map (diagonal included), discards ``int(discard_ratio * N*N)`` of
them and spares only entry 0 (CLS to CLS); with the default ``discard_ratio = 0`` both are the plain
rollout.
"""

from __future__ import annotations

from typing import Literal, Tuple

import numpy as np

from .normalization import DEFAULT_NORMALIZE, Normalize, as_float_array, normalize_rows, renormalize_rows

HeadFusion = Literal["mean", "max", "min"]


def fuse_heads(maps: np.ndarray, head_fusion: HeadFusion = "mean") -> np.ndarray:
    """Combine heads: (L, H, N, N) -> (L, N, N) by mean, max or min over the head axis."""
    if head_fusion == "mean":
        return maps.mean(axis=1)
    if head_fusion == "max":
        return maps.max(axis=1)
    if head_fusion == "min":
        return maps.min(axis=1)
    raise ValueError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}")


def discard_lowest(fused: np.ndarray, discard_ratio: float) -> np.ndarray:
    """Zero the lowest ``discard_ratio`` share of off-diagonal entries of each (N, N) map.

    Args:
        fused: (L, N, N) head-fused maps (non-negative).
        discard_ratio: in [0, 1).

    Returns:
        (L, N, N) copy with the smallest entries of each layer zeroed (exactly round(ratio * (N*N - N))).
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    out = np.array(fused, copy=True)
    layers, tokens = out.shape[0], out.shape[-1]
    count = int(round(discard_ratio * (tokens * tokens - tokens)))
    if count == 0:
        return out
    off_diagonal = ~np.eye(tokens, dtype=bool).reshape(-1)
    flat = out.reshape(layers, -1)
    candidates = flat[:, off_diagonal]
    # argpartition selects exactly `count` smallest entries per layer without a full sort.
    lowest = np.argpartition(candidates, count - 1, axis=1)[:, :count]
    np.put_along_axis(candidates, lowest, 0.0, axis=1)
    flat[:, off_diagonal] = candidates
    return flat.reshape(out.shape)


def attention_rollout(maps: np.ndarray, head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0,
                      normalize: Normalize = DEFAULT_NORMALIZE, add_identity: bool = True,
                      return_all: bool = False) -> np.ndarray:
    """Rollout of one image's attention.

    Args:
        maps: (L, H, N, N) maps (first layer first).
        head_fusion: "mean", "max" or "min" over heads.
        discard_ratio: share of the lowest off-diagonal fused entries set to 0 per layer (`discard_lowest`:
            this project's rule, not vit-explain's; see the module docstring).
        normalize: row normalisation of each head's map before fusing (needed for effective maps, whose
            negative entries would otherwise make the product meaningless).
        add_identity: model the residual stream (A + I, rows renormalised). False multiplies the
            row-normalised fused maps themselves.
        return_all: also return every intermediate product.

    Returns:
        (N, N) joint attention R_L (row-stochastic), or (L, N, N) with R_1..R_L when ``return_all``.
    """
    maps = as_float_array(maps)
    return rollout_of_fused(fuse_heads(normalize_rows(maps, normalize), head_fusion), discard_ratio, add_identity,
                            return_all)


def rollout_of_fused(fused: np.ndarray, discard_ratio: float = 0.0, add_identity: bool = True,
                     return_all: bool = False) -> np.ndarray:
    """`attention_rollout` from the head-fused maps: (L, N, N) -> (N, N), or (L, N, N) with ``return_all``.

    The per-image metrics fuse each layer's heads while that layer's normalised rows are at hand, so the
    normalised maps of all layers never exist at once. ``fused`` is overwritten (its factors are made in place:
    no further (L, N, N) copies).
    """
    if discard_ratio > 0:
        fused[...] = discard_lowest(fused, discard_ratio)
    tokens = fused.shape[-1]
    if add_identity:
        fused[:, np.arange(tokens), np.arange(tokens)] += 1
    # Rows renormalised after fusion, discard and identity, so every factor (and the product) is stochastic.
    renormalize_rows(fused, out=fused)
    result = np.eye(tokens, dtype=fused.dtype)
    products = []
    for layer in range(fused.shape[0]):  # a chain of L matrix products; inherently sequential
        result = fused[layer] @ result
        products.append(result)
    return np.stack(products) if return_all else result


def rollout_cls_map(rollout: np.ndarray, num_prefix_tokens: int, grid: Tuple[int, int], query: int = 0,
                    renormalize: bool = True) -> np.ndarray:
    """The rollout row of a query (default CLS) over the patches, as an image-shaped grid.

    Args:
        rollout: (N, N) joint attention.
        num_prefix_tokens: K.
        grid: (Gh, Gw).
        query: token index of the query row (0 is CLS).
        renormalize: rescale the patch part to sum 1 (mass on prefix tokens removed).

    Returns:
        (Gh, Gw) map.
    """
    row = np.asarray(rollout)[query, num_prefix_tokens:]
    if renormalize:
        total = row.sum()
        row = row / total if total != 0 else row
    return row.reshape(int(grid[0]), int(grid[1]))
