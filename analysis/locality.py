"""Local-pattern statistics of attention maps (DESIGN section 5, "Local patterns").

All functions take one image's maps ``(L, H, N, N)`` (any leading axes work) with K prefix tokens followed
by the Gh x Gw patches in row-major order, and return one number per (layer, head): ``(L, H)``.

- Spatial metrics (mean attention distance, grid-neighbourhood mass) use the patch->patch block
  ``maps[..., K:, K:]`` with its rows renormalised, so prefix tokens do not dilute them (ViT paper, Fig. 7).
- Sequence metrics (band, diagonal, prefix mass, entropy) use the full rows in token order; the band is what
  a k x k convolution over the N x N matrix (the Refiner "sequence" layout) can mix.
- `negative_mass_fraction` reads the raw map: it says how far an effective map is from a distribution.

Distance and mask matrices depend only on the grid and patch size; they are built once per geometry
(``functools.lru_cache``) and returned read-only, and every metric is one matrix-vector product over the
flattened (P x P) blocks, so there is no Python loop over heads or tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Optional, Tuple

import numpy as np

from .blas_threads import Workspace
from .normalization import (DEFAULT_NORMALIZE, Normalize, as_float_array, map_normalised_layers, normalize_rows,
                            renormalize_rows, row_entropy_nats)

Grid = Tuple[int, int]


def _pair(value: int | Tuple[int, int]) -> Tuple[int, int]:
    return (int(value), int(value)) if np.isscalar(value) else (int(value[0]), int(value[1]))


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@lru_cache(maxsize=32)
def _patch_offsets(grid: Grid) -> Tuple[np.ndarray, np.ndarray]:
    rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
    return _frozen(np.abs(rows[:, None] - rows[None, :])), _frozen(np.abs(cols[:, None] - cols[None, :]))


@lru_cache(maxsize=32)
def patch_distance_matrix(grid: Grid, patch_size: Tuple[int, int] = (1, 1)) -> np.ndarray:
    """Euclidean distance between patch centres.

    Args:
        grid: (Gh, Gw) patch grid.
        patch_size: (ph, pw) in pixels; (1, 1) gives the distance in patches.

    Returns:
        (P, P) read-only float64 matrix, P = Gh * Gw, patches in row-major order.
    """
    grid, (ph, pw) = _pair(grid), _pair(patch_size)
    drow, dcol = _patch_offsets(grid)
    return _frozen(np.sqrt((drow * ph) ** 2 + (dcol * pw) ** 2).astype(np.float64))


@lru_cache(maxsize=32)
def chebyshev_mask(grid: Grid, radius: int) -> np.ndarray:
    """(P, P) read-only 0/1 float mask of key patches within Chebyshev distance ``radius`` of the query."""
    drow, dcol = _patch_offsets(_pair(grid))
    return _frozen((np.maximum(drow, dcol) <= radius).astype(np.float64))


@lru_cache(maxsize=32)
def band_mask(num_tokens: int, width: int) -> np.ndarray:
    """(N, N) read-only 0/1 float mask of |i - j| <= width in token order."""
    index = np.arange(num_tokens)
    return _frozen((np.abs(index[:, None] - index[None, :]) <= width).astype(np.float64))


def _check_geometry(maps: np.ndarray, num_prefix_tokens: int, grid: Grid) -> None:
    expected = num_prefix_tokens + grid[0] * grid[1]
    if maps.shape[-1] != expected or maps.shape[-2] != expected:
        raise ValueError(f"maps of shape {maps.shape} do not have N = K + Gh*Gw = {num_prefix_tokens} + "
                         f"{grid[0]}*{grid[1]} = {expected} tokens")


def patch_rows(maps: np.ndarray, num_prefix_tokens: int, normalize: Normalize = DEFAULT_NORMALIZE) -> np.ndarray:
    """The patch->patch block with each row renormalised to sum 1.

    Args:
        maps: (..., N, N).
        num_prefix_tokens: K.
        normalize: applied to the full rows first (sign handling), then the block is renormalised.

    Returns:
        (..., P, P).
    """
    block = normalize_rows(maps, normalize)[..., num_prefix_tokens:, num_prefix_tokens:]
    return renormalize_rows(block)


def _mean_row_contraction(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """mean_i sum_j rows[..., i, j] * weights[i, j] for (..., Q, M) rows and (Q, M) weights (one gemv)."""
    lead = rows.shape[:-2]
    flat = rows.reshape(-1, rows.shape[-2] * rows.shape[-1])
    return (flat @ weights.reshape(-1).astype(flat.dtype)).reshape(lead) / rows.shape[-2]


def mean_attention_distance(maps: np.ndarray, num_prefix_tokens: int, grid: Grid,
                            patch_size: Tuple[int, int] = (1, 1), normalize: Normalize = DEFAULT_NORMALIZE
                            ) -> np.ndarray:
    """Mean attention distance (ViT paper): attention-weighted distance from query to key patch.

    Args:
        maps: (L, H, N, N).
        num_prefix_tokens: K.
        grid: (Gh, Gw).
        patch_size: (ph, pw) pixels per patch for a result in pixels; (1, 1) for a result in patches.
        normalize: sign handling before the patch block is renormalised.

    Returns:
        (L, H) mean over patch queries of sum_j a_ij * d(i, j).
    """
    grid = _pair(grid)
    _check_geometry(maps, num_prefix_tokens, grid)
    return _mean_row_contraction(patch_rows(maps, num_prefix_tokens, normalize),
                                 patch_distance_matrix(grid, _pair(patch_size)))


def grid_neighbourhood_mass(maps: np.ndarray, num_prefix_tokens: int, grid: Grid, radius: int = 1,
                            normalize: Normalize = DEFAULT_NORMALIZE) -> np.ndarray:
    """Share of a patch query's (patch-block, renormalised) attention on patches within Chebyshev ``radius``.

    Returns:
        (L, H) in [0, 1]; 1 for the identity map (radius >= 0).
    """
    grid = _pair(grid)
    _check_geometry(maps, num_prefix_tokens, grid)
    return _mean_row_contraction(patch_rows(maps, num_prefix_tokens, normalize), chebyshev_mask(grid, radius))


def sequence_band_mass(maps: np.ndarray, width: int = 1, normalize: Normalize = DEFAULT_NORMALIZE) -> np.ndarray:
    """Share of each row's mass on keys with |i - j| <= width in token order, mean over all queries.

    Args:
        maps: (L, H, N, N).
        width: half-width of the band (1 is what a 3 x 3 kernel on the N x N matrix reaches).
        normalize: row normalisation mode.

    Returns:
        (L, H).
    """
    rows = normalize_rows(maps, normalize)
    return _mean_row_contraction(rows, band_mask(rows.shape[-1], width))


def diagonal_mass(maps: np.ndarray, normalize: Normalize = DEFAULT_NORMALIZE) -> np.ndarray:
    """Mean over queries of the attention a token pays to itself, ``a_ii``.

    Returns:
        (L, H); 1 for the identity map, 1/N for uniform rows.
    """
    return np.diagonal(normalize_rows(maps, normalize), axis1=-2, axis2=-1).mean(axis=-1)


def prefix_mass(maps: np.ndarray, num_prefix_tokens: int, normalize: Normalize = DEFAULT_NORMALIZE) -> np.ndarray:
    """Mean over *patch* queries of the mass on the K prefix tokens (the "attention sink").

    Returns:
        (L, H); 0 when K == 0.
    """
    rows = normalize_rows(maps, normalize)
    return rows[..., num_prefix_tokens:, :num_prefix_tokens].sum(axis=-1).mean(axis=-1)


def row_entropy(maps: np.ndarray, normalize: Normalize = DEFAULT_NORMALIZE) -> np.ndarray:
    """Entropy of every row divided by log N, so 1 means uniform and 0 a single key.

    Args:
        maps: (..., Q, N).
        normalize: row normalisation mode (entropy needs distributions).

    Returns:
        (..., Q) in [0, 1].
    """
    rows = normalize_rows(maps, normalize)
    tokens = rows.shape[-1]
    if tokens < 2:
        return np.zeros(rows.shape[:-1], dtype=rows.dtype)
    return row_entropy_nats(rows) / np.log(tokens)


def cls_and_patch_entropy(maps: np.ndarray, num_prefix_tokens: int, normalize: Normalize = DEFAULT_NORMALIZE
                          ) -> Tuple[np.ndarray, np.ndarray]:
    """Normalised entropy of the CLS query (row 0) and mean over patch queries, separately.

    Returns:
        (cls, patch), each (L, H); cls is NaN when the model has no prefix token.
    """
    entropy = row_entropy(maps, normalize)
    patch = entropy[..., num_prefix_tokens:].mean(axis=-1)
    cls = entropy[..., 0] if num_prefix_tokens > 0 else np.full(patch.shape, np.nan)
    return cls, patch


def negative_mass_fraction(maps: np.ndarray, scratch: Optional[np.ndarray] = None) -> np.ndarray:
    """Share of the absolute mass of the raw map that is negative: sum max(-a, 0) / sum |a|.

    Args:
        maps: (L, H, N, N) raw maps (no normalisation: this measures what normalisation changes), or one layer's
            (H, N, N).
        scratch: optional float array of ``maps``' shape and dtype that is overwritten (a worker's reused buffer,
            `analysis.blas_threads.Workspace`): without it each pass makes temporaries of the map's size, fresh
            memory that cost 2-4 s over the 32 layers of Refiner-ViT-L at 448 px here.

    Returns:
        (L, H) (or (H,)) in [0, 1]; 0 for every softmax map.
    """
    maps = as_float_array(maps)
    if maps.size and maps.min() >= 0:
        return np.zeros(maps.shape[:-2])  # softmax maps: skip two full passes
    negative = np.maximum(np.negative(maps, out=scratch), 0, out=scratch).sum(axis=(-2, -1))
    total = np.abs(maps, out=scratch).sum(axis=(-2, -1))
    return np.where(total > 0, negative / np.where(total > 0, total, 1), 0.0)


@dataclass
class LocalityMetrics:
    """Every local-pattern statistic of one model on one image; each field is (L, H).

    Attributes:
        distance_px: mean attention distance in pixels.
        distance_patches: mean attention distance in patches.
        cls_entropy: normalised entropy of the CLS query (NaN without a prefix token).
        patch_entropy: normalised entropy averaged over patch queries.
        grid_mass: patch-block mass within Chebyshev ``grid_radius``.
        band_mass: token-order mass within |i - j| <= ``band_width``.
        diagonal_mass: mean a_ii.
        prefix_mass: mean mass of patch queries on prefix tokens.
        negative_fraction: negative share of the raw map's absolute mass.
        grid_radius: the radius used.
        band_width: the band half-width used.
    """

    distance_px: np.ndarray
    distance_patches: np.ndarray
    cls_entropy: np.ndarray
    patch_entropy: np.ndarray
    grid_mass: np.ndarray
    band_mass: np.ndarray
    diagonal_mass: np.ndarray
    prefix_mass: np.ndarray
    negative_fraction: np.ndarray
    grid_radius: int
    band_width: int


def locality_metrics(maps: np.ndarray, num_prefix_tokens: int, grid: Grid, patch_size: Tuple[int, int],
                     normalize: Normalize = DEFAULT_NORMALIZE, grid_radius: int = 1, band_width: int = 1
                     ) -> LocalityMetrics:
    """All local-pattern statistics at once, normalising each layer a single time (`layer_locality`).

    Args:
        maps: (L, H, N, N) maps of one image.
        num_prefix_tokens: K.
        grid: (Gh, Gw).
        patch_size: (ph, pw) in pixels.
        normalize: row normalisation mode for everything but ``negative_fraction``.
        grid_radius: Chebyshev radius of the grid neighbourhood (1: the 3 x 3 patches around the query).
        band_width: half-width of the sequence band.

    Returns:
        `LocalityMetrics` with (L, H) arrays.
    """
    grid, patch_size = _pair(grid), _pair(patch_size)
    maps = as_float_array(maps)
    _check_geometry(maps, num_prefix_tokens, grid)

    def one_layer(layer: int, rows: np.ndarray, work: Workspace) -> Dict[str, np.ndarray]:
        entropy = row_entropy_nats(rows, work.array("logs", maps.shape[2:]))
        values = layer_locality(rows, entropy, num_prefix_tokens, grid, patch_size, grid_radius, band_width)
        values["negative_fraction"] = negative_mass_fraction(maps[layer], work.array("raw", maps.shape[1:], maps.dtype))
        return values

    layers = map_normalised_layers(one_layer, maps, normalize)
    stacked = {key: np.array([values[key] for values in layers], dtype=locality_dtype(key, maps.dtype)).reshape(
        maps.shape[:2]) for key in LAYER_LOCALITY_KEYS + ("negative_fraction",)}
    return LocalityMetrics(grid_radius=int(grid_radius), band_width=int(band_width), **stacked)


# What `layer_locality` returns, per head of one layer.
LAYER_LOCALITY_KEYS = ("distance_px", "distance_patches", "cls_entropy", "patch_entropy", "grid_mass", "band_mass",
                       "diagonal_mass", "prefix_mass")
_ENTROPY_KEYS = ("cls_entropy", "patch_entropy", "negative_fraction")


def locality_dtype(key: str, maps_dtype: np.dtype) -> np.dtype:
    """Masses and distances keep the maps' float dtype, entropies and the negative share are float64 (as always)."""
    return np.dtype(np.float64) if key in _ENTROPY_KEYS else np.dtype(maps_dtype)


@lru_cache(maxsize=32)
def _spatial_weights(grid: Grid, patch_size: Tuple[int, int], radius: int) -> np.ndarray:
    """(P, P, 3) read-only: pixel distance, patch distance and Chebyshev mask of query i to key j in [i]."""
    return _frozen(np.stack([patch_distance_matrix(grid, patch_size), patch_distance_matrix(grid, (1, 1)),
                             chebyshev_mask(grid, radius)], axis=-1))


def layer_locality(rows: np.ndarray, entropy: np.ndarray, num_prefix_tokens: int, grid: Grid,
                   patch_size: Tuple[int, int], grid_radius: int = 1, band_width: int = 1) -> Dict[str, np.ndarray]:
    """Every statistic of `LocalityMetrics` but the negative share, for one layer's normalised rows.

    The patch-block statistics divide each query's contraction by its block row sum instead of making a
    renormalised copy of the block (the same numbers: sum_j (a_ij / s_i) w_ij = (sum_j a_ij w_ij) / s_i), and the
    three contractions are one batched product with the (P, P, 3) weights of query i.

    Args:
        rows: (H, N, N) row-normalised maps of one layer (float64 in the per-image metrics).
        entropy: (H, N) ``row_entropy_nats(rows)`` (nats).
        num_prefix_tokens: K.
        grid: (Gh, Gw).
        patch_size: (ph, pw) in pixels.
        grid_radius: Chebyshev radius of the grid neighbourhood.
        band_width: half-width of the sequence band.

    Returns:
        `LAYER_LOCALITY_KEYS` -> (H,) float64.
    """
    grid, patch_size = _pair(grid), _pair(patch_size)
    heads, tokens = rows.shape[0], rows.shape[-1]
    k = num_prefix_tokens
    block = rows[:, k:, k:]  # (H, P, P)
    block_sums = block.sum(axis=-1)  # (H, P)
    weights = _spatial_weights(grid, patch_size, int(grid_radius)).astype(rows.dtype, copy=False)
    spatial = np.matmul(block[:, :, None, :], weights)[:, :, 0, :]  # (H, P, 3): sum_j a_ij w_c[i, j]
    zero = block_sums == 0  # rows with no patch mass stay zero, as a renormalised zero row would
    block_sums[zero] = 1
    spatial = (spatial / block_sums[..., None]).mean(axis=1)  # (H, 3)
    reach = min(int(band_width), tokens - 1)  # the band |i - j| <= width is 2 * width + 1 diagonals
    band = np.zeros(heads)
    for offset in range(-reach, reach + 1):
        band += np.diagonal(rows, offset, axis1=-2, axis2=-1).sum(axis=-1)
    entropy = entropy / np.log(tokens) if tokens >= 2 else np.zeros_like(entropy)
    return {
        "distance_px": spatial[:, 0], "distance_patches": spatial[:, 1], "grid_mass": spatial[:, 2],
        "cls_entropy": entropy[:, 0] if k > 0 else np.full(heads, np.nan),
        "patch_entropy": entropy[:, k:].mean(axis=-1),
        "band_mass": band / tokens,
        "diagonal_mass": np.diagonal(rows, axis1=-2, axis2=-1).mean(axis=-1),
        "prefix_mass": rows[:, k:, :k].sum(axis=-1).mean(axis=-1),
    }
