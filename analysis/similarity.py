"""Cross-layer attention similarity (DeepViT, Zhou et al., arXiv 2103.11886) and relative-depth alignment.

For layers p, q, head h and key token t the similarity is the cosine, over the query axis, between the
columns ``A^p[h, :, t]`` and ``A^q[h, :, t]``: do the two layers route key t's value to the same queries?
The L x L matrix is its mean over (h, t); DeepViT's "attention collapse" is this matrix approaching 1 for
deep layers. This is a cosine across *layers* with the head fixed, not a cosine across heads (that is
`analysis.head_diversity`).

Models of different depth are compared by relative depth ``l / L`` with l = 1..L (DESIGN section 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .blas_threads import Workspace, map_in_threads
from .normalization import DEFAULT_NORMALIZE, Normalize, as_float_array, normalize_rows, safe_divide

DEFAULT_TAU = 0.5
DEFAULT_BLOCK_THRESHOLD = 0.9


def unit_columns(maps: np.ndarray) -> np.ndarray:
    """Scale every column (key) of every map to unit L2 norm over the query axis.

    Args:
        maps: (..., Q, N) maps.

    Returns:
        (..., Q, N); all-zero columns stay zero, so their cosine with anything is 0.
    """
    maps = as_float_array(maps)
    norms = np.sqrt(np.einsum("...qn,...qn->...n", maps, maps))
    return safe_divide(maps, norms[..., None, :])


def column_cosine(map_p: np.ndarray, map_q: np.ndarray) -> np.ndarray:
    """Cosine between matching columns of two maps, over the query axis.

    Args:
        map_p: (..., Q, N) maps of layer p (e.g. (H, N, N)).
        map_q: (..., Q, N) maps of layer q, same shape.

    Returns:
        (..., N): cosine per key token t (and per leading index, e.g. per head).
    """
    return np.einsum("...qn,...qn->...n", unit_columns(map_p), unit_columns(map_q))


def pairwise_layer_cosines(maps_a: np.ndarray, maps_b: np.ndarray, normalize: Normalize = DEFAULT_NORMALIZE
                           ) -> np.ndarray:
    """All (head, key, layer of a, layer of b) column cosines.

    One head at a time (in parallel threads, `map_in_threads`): that head's maps of every layer are normalised
    (1/H of the maps: 80 MB for Refiner-ViT-L at 448 px instead of a normalised copy of all of them) and
    compared by `head_layer_cosines`.

    Args:
        maps_a: (La, H, N, N) maps of one model for one image.
        maps_b: (Lb, H, N, N) maps (the same array for within-model similarity).
        normalize: row normalisation applied to both before the cosine.

    Returns:
        (H, N, La, Lb): cosine for head h, key t between layer p of a and layer q of b.
    """
    if maps_a.shape[1:] != maps_b.shape[1:]:
        raise ValueError(f"maps must agree in heads and tokens, got {maps_a.shape} and {maps_b.shape}")
    same = maps_b is maps_a
    maps_a = as_float_array(maps_a)
    maps_b = maps_a if same else as_float_array(maps_b)

    heads, keys = maps_a.shape[1], maps_a.shape[3]
    out = np.empty((heads, keys, maps_a.shape[0], maps_b.shape[0]), dtype=np.result_type(maps_a, maps_b))

    def one_head(head: int, work: Workspace) -> None:
        columns_a = key_major_columns(maps_a, head, normalize, work, "a")
        columns_b = columns_a if same else key_major_columns(maps_b, head, normalize, work, "b")
        out[head] = head_layer_cosines(columns_a, columns_b)  # each head's rows of the result: no stacked copy

    map_in_threads(one_head, heads)
    return out


def key_major_columns(maps: np.ndarray, head: int, normalize: Normalize, work: Workspace, name: str) -> np.ndarray:
    """One head's normalised maps of every layer, key-major: (L, H, Q, T) -> (T, L, Q) view of a workspace array.

    Each layer's (Q, T) map is normalised and transposed on its own (2.5 MB at N = 785, in the cache), into an
    (L, T, Q) array whose (T, L, Q) view has contiguous columns for the products in `head_layer_cosines`.
    """
    layers, _, queries, keys = maps.shape
    columns = work.array(name, (layers, keys, queries), maps.dtype)
    rows = work.array(name + "_rows", (queries, keys), maps.dtype)
    for layer in range(layers):
        np.copyto(columns[layer], normalize_rows(maps[layer, head], normalize, out=rows).T)
    return columns.transpose(1, 0, 2)


def head_layer_cosines(columns_a: np.ndarray, columns_b: np.ndarray) -> np.ndarray:
    """Column cosines between every layer of a and of b for one head: (T, La, Q), (T, Lb, Q) -> (T, La, Lb).

    The L x L products over the queries of every key are one batched matmul (strided views: BLAS reads each
    column in place), and the cosine divides by the column norms; an all-zero column has cosine 0 with anything.

    Args:
        columns_a: (T, La, Q) normalised maps of one head, key-major (`key_major_columns`); may be the same
            object as ``columns_b``.
        columns_b: (T, Lb, Q).

    Returns:
        (T, La, Lb) in the dtype of the maps.
    """
    products = np.matmul(columns_a, columns_b.transpose(0, 2, 1))  # (T, La, Lb)
    if columns_b is columns_a:  # the squared column norms are the diagonal of the products
        norm_a = norm_b = np.sqrt(np.diagonal(products, axis1=1, axis2=2))
    else:
        norm_a = np.sqrt(np.einsum("tlq,tlq->tl", columns_a, columns_a))
        norm_b = np.sqrt(np.einsum("tlq,tlq->tl", columns_b, columns_b))
    denominator = norm_a[:, :, None] * norm_b[:, None, :]
    products[denominator == 0] = 0
    denominator[denominator == 0] = 1
    products /= denominator
    return products


@dataclass
class CrossLayerSimilarity:
    """DeepViT cross-layer similarity of one model (or between two models) on one image.

    Attributes:
        matrix: (La, Lb) mean column cosine over heads and keys.
        share_above_tau: (La, Lb) share of (head, key) pairs whose cosine exceeds ``tau``.
        tau: the per-entry threshold used for ``share_above_tau``.
    """

    matrix: np.ndarray
    share_above_tau: np.ndarray
    tau: float


def cross_layer_similarity(maps: np.ndarray, normalize: Normalize = DEFAULT_NORMALIZE, tau: float = DEFAULT_TAU,
                           other: np.ndarray | None = None) -> CrossLayerSimilarity:
    """The L x L cross-layer similarity matrix and the share of entries above ``tau``.

    Args:
        maps: (L, H, N, N) maps of one model for one image (effective maps by convention).
        normalize: row normalisation before the cosine (see `analysis.normalization`).
        tau: threshold on single (head, key) cosines for ``share_above_tau`` (DESIGN default 0.5).
        other: optional (L2, H, N, N) maps of a second model on the same image: the result is then the
            L x L2 cross-model matrix (same heads and tokens required).

    Returns:
        `CrossLayerSimilarity`; for ``other=None`` the matrix is symmetric with ones on the diagonal
        (for layers with no all-zero column).
    """
    maps = as_float_array(maps)
    cosines = pairwise_layer_cosines(maps, maps if other is None else as_float_array(other), normalize)
    return similarity_from_cosines(cosines, tau)


def similarity_from_cosines(cosines: np.ndarray, tau: float = DEFAULT_TAU) -> CrossLayerSimilarity:
    """Reduce (H, N, La, Lb) column cosines to the layer x layer mean and the share above ``tau``."""
    heads, keys = cosines.shape[:2]
    flat = cosines.reshape(heads * keys, -1)
    matrix = flat.mean(axis=0).reshape(cosines.shape[2:])
    share = np.count_nonzero(flat > tau, axis=0).reshape(cosines.shape[2:]) / (heads * keys)
    return CrossLayerSimilarity(matrix=matrix.astype(np.float64), share_above_tau=share, tau=float(tau))


def similar_block_counts(matrix: np.ndarray, threshold: float = DEFAULT_BLOCK_THRESHOLD) -> np.ndarray:
    """For every layer, how many *other* layers have similarity above ``threshold`` with it.

    Args:
        matrix: (L, L) cross-layer similarity.
        threshold: similarity from which two blocks count as "similar" (default 0.9, nearly identical maps).

    Returns:
        (L,) integer counts in [0, L - 1].
    """
    matrix = np.asarray(matrix)
    similar = matrix > threshold
    np.fill_diagonal(similar, False)
    return similar.sum(axis=1)


def adjacent_layer_similarity(matrix: np.ndarray) -> np.ndarray:
    """Similarity of each layer with the next one, ``S[l, l + 1]``.

    Args:
        matrix: (L, L) cross-layer similarity.

    Returns:
        (L - 1,) values; entry l belongs to layer l + 1 (plot at ``relative_depth(L)[1:]``).
    """
    matrix = np.asarray(matrix)
    return np.diagonal(matrix, offset=1).copy()


def relative_depth(depth: int) -> np.ndarray:
    """Relative depth ``l / L`` of layers l = 1..L.

    Returns:
        (L,) values in (0, 1]; the last layer is at 1 for every depth.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return np.arange(1, depth + 1, dtype=np.float64) / depth


def align_layers(depth_a: int, depth_b: int) -> np.ndarray:
    """For each layer of a model of depth ``depth_a``, the layer of depth-``depth_b`` model at the nearest
    relative depth (ties go to the shallower layer).

    Layer i of A (1-based) sits at i / depth_a and layer j of B at j / depth_b; their distance times
    depth_a * depth_b is the integer |i * depth_b - j * depth_a|, so nearest and ties are decided exactly
    (with floats, 1/2 vs 1/3 and 2/3 was decided by rounding).

    Returns:
        (depth_a,) integer layer indices (0-based) into the second model.
    """
    if depth_a < 1 or depth_b < 1:
        raise ValueError(f"depths must be >= 1, got {depth_a} and {depth_b}")
    i = np.arange(1, depth_a + 1, dtype=np.int64)[:, None]
    j = np.arange(1, depth_b + 1, dtype=np.int64)[None, :]
    # argmin returns the first minimum: the shallower layer of a tie.
    return np.abs(i * depth_b - j * depth_a).argmin(axis=1)


def resample_to_relative_depth(values: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Linearly interpolate per-layer values onto other relative depths.

    Args:
        values: (L, ...) one entry per layer (e.g. per-layer means, or (L, H)).
        target: (M,) relative depths in (0, 1] to evaluate at (e.g. ``relative_depth(M)``).

    Returns:
        (M, ...) interpolated values; outside the source range the end values are held.
    """
    values = np.asarray(values, dtype=np.float64)
    source = relative_depth(values.shape[0])
    flat = values.reshape(values.shape[0], -1)
    out = np.stack([np.interp(target, source, flat[:, j]) for j in range(flat.shape[1])], axis=1)
    return out.reshape((len(target),) + values.shape[1:])
