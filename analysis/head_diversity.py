"""How different the heads of one layer are (DESIGN section 5, "Head diversity").

Four views of the same question, all per layer:
- `head_cosine_matrix` / `head_diversity`: 1 - mean pairwise column cosine between heads (the DeepViT
  column cosine of `analysis.similarity`, taken across heads instead of across layers).
- `head_js_distance`: Jensen-Shannon distance between two heads' row distributions, averaged over queries.
- `head_embedding`: all heads as points (PCA or MDS from scikit-learn) for a scatter plot.
- `effective_number_of_heads`: exp of the entropy of the normalised singular values of the stacked head
  maps: 1 when all heads are the same map, H when they are mutually orthogonal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Optional, Sequence, Tuple

import numpy as np

from .blas_threads import Workspace
from .normalization import (DEFAULT_NORMALIZE, Normalize, as_float_array, map_normalised_layers, normalize_rows,
                            row_entropy_nats, safe_divide)


def head_cosine_matrix(maps: np.ndarray, normalize: Normalize = DEFAULT_NORMALIZE) -> np.ndarray:
    """Mean over keys of the column cosine between every pair of heads of a layer.

    Args:
        maps: (L, H, N, N) maps of one image.
        normalize: row normalisation before the cosine.

    Returns:
        (L, H, H) symmetric matrices; the diagonal is the share of non-zero columns (1 for softmax maps).
    """
    maps = as_float_array(maps)
    cosines = map_normalised_layers(lambda _layer, rows, work: layer_head_products(rows, work)[1], maps, normalize,
                                    maps.dtype)
    return _per_layer_matrices(cosines, maps)


def _per_layer_matrices(matrices: Sequence[np.ndarray], maps: np.ndarray) -> np.ndarray:
    """One (H, H) matrix per layer of (L, H, N, N) ``maps``, stacked: (L, H, H)."""
    return np.stack(matrices).reshape(maps.shape[:1] + maps.shape[1:2] * 2)


_PRODUCT_BLOCK_ROWS = 32  # query rows per product in `layer_head_products`: H x 32 x N float64 (3.2 MB at N = 785)


def layer_head_products(rows: np.ndarray, work: Optional[Workspace] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The two H x H products between the heads of one layer: the Gram matrix and the column cosines.

    Both are sums over (query, key) of products of two heads' maps, so they are accumulated over blocks of
    query rows (each block read once, in the cache, for both; no unit-column copy of the layer).

    Args:
        rows: (H, N, N) normalised rows of one layer (float64 in the per-image metrics: for nearly identical
            heads the diversity 1 - cosine is far below float32's resolution, and `effective_number_of_heads`
            needs a float64 Gram matrix).
        work: the calling thread's buffers (`map_in_threads`).

    Returns:
        ``(gram, cosine)``, each (H, H) float64: the Gram matrix of the flattened heads
        (`effective_heads_from_grams`) and `head_cosine_matrix` of this layer.
    """
    work = work or Workspace()
    heads, queries, tokens = rows.shape
    squares = work.array("squares", rows.shape[1:], rows.dtype)
    norms = np.empty((heads, tokens), dtype=rows.dtype)
    for head in range(heads):  # column sums of squares, one head at a time (einsum over the query axis is slow)
        np.square(rows[head], out=squares)
        squares.sum(axis=0, out=norms[head])
    np.sqrt(norms, out=norms)
    norms[norms == 0] = 1  # an all-zero column stays zero, so its cosine with anything is 0
    inverse = 1.0 / norms[:, None, :]
    gram = np.zeros((heads, heads), dtype=np.float64)
    cosine = np.zeros((heads, heads), dtype=np.float64)
    block = max(1, min(_PRODUCT_BLOCK_ROWS, queries))
    unit = work.array("unit", (heads, block, tokens), rows.dtype)
    for start in range(0, queries, block):
        stop = min(queries, start + block)
        part = rows[:, start:stop].reshape(heads, -1)  # a view: each head's rows of the block are contiguous
        gram += part @ part.T
        scaled = np.multiply(rows[:, start:stop], inverse, out=unit[:, :stop - start]).reshape(heads, -1)
        # Mean over t of sum_i U_g[i, t] U_h[i, t] is the Frobenius product of the unit-column maps over N.
        cosine += scaled @ scaled.T
    return gram, cosine / tokens


def off_diagonal_mean(matrices: np.ndarray) -> np.ndarray:
    """Mean of the off-diagonal entries of (..., H, H) matrices: (...,); 0 when H == 1 (no pairs)."""
    heads = matrices.shape[-1]
    if heads < 2:
        return np.zeros(matrices.shape[:-2])
    total = matrices.sum(axis=(-2, -1)) - np.trace(matrices, axis1=-2, axis2=-1)
    return total / (heads * (heads - 1))


def diversity_from_head_cosines(head_cos: np.ndarray) -> np.ndarray:
    """Head diversity from `head_cosine_matrix`: (L, H, H) -> (L,) = 1 - mean pairwise cosine.

    The one definition used everywhere (`head_diversity`, `analysis.attention_metrics`). A layer with a
    single head has no pair of heads to differ, so its diversity is 0 (not 1, which would read as
    "maximally diverse").
    """
    if head_cos.shape[-1] < 2:
        return np.zeros(head_cos.shape[:-2])
    return 1.0 - off_diagonal_mean(head_cos)


def head_diversity(maps: np.ndarray, normalize: Normalize = DEFAULT_NORMALIZE) -> np.ndarray:
    """1 - mean pairwise column cosine between the heads of each layer.

    Args:
        maps: (L, H, N, N).
        normalize: row normalisation before the cosine.

    Returns:
        (L,) in [0, 1] for non-negative maps: 0 when all heads of a layer are identical, and 0 for a
        one-head layer (`diversity_from_head_cosines`).
    """
    return diversity_from_head_cosines(head_cosine_matrix(maps, normalize))


_JS_BLOCK_ROWS = 32  # query rows per step: H x 32 x N float64 rows and the (H - 1) x 32 x N mixtures stay in the cache
_TINY = 1e-300  # log(max(m, tiny)): 0 log 0 = 0 without a masked logarithm


def layer_js(rows: np.ndarray, entropy: np.ndarray, work: Optional[Workspace] = None) -> np.ndarray:
    """(H, H) Jensen-Shannon distances of one layer's row distributions, averaged over query rows.

    Everything is float64: the divergence H(m) - (H(p) + H(q)) / 2 cancels almost completely for nearly
    identical rows (head collapse, and every head of an untrained model), where float32 left errors of ~1e-4 in
    the distance. Per pair and row it costs one addition, one logarithm and one dot product of length N (the
    mixture's entropy), since the rows' own entropies are computed once per layer; at N = 785 with 16 heads
    that is 74 M logarithms per layer.

    Args:
        rows: (H, Q, N) float64 rows (distributions; negative entries count as 0, as in `row_entropy_nats`).
        entropy: (H, Q) ``row_entropy_nats(rows)``.
        work: the calling thread's buffers (`map_in_threads`).

    Returns:
        (H, H) float64, symmetric, zero diagonal; distances sqrt(JS / ln 2) in [0, 1].
    """
    heads, queries, keys = rows.shape
    out = np.zeros((heads, heads), dtype=np.float64)
    if heads < 2:
        return out
    low = rows.min() if rows.size else 0.0
    mass = None if low < 0 else rows.sum(axis=-1)  # (H, Q): 1 (or 0) for normalised rows
    block = min(_JS_BLOCK_ROWS, max(queries, 1))
    work = work or Workspace()
    twice_mix, logs = work.array("js_mix", (heads - 1, block, keys)), work.array("js_logs", (heads - 1, block, keys))
    divergence = np.empty((heads, heads, queries))
    log2 = np.log(2.0)
    # Rows of every head in a block of queries stay in the cache while all H (H - 1) / 2 pairs read them, so
    # each map is read from memory once (pair by pair over whole maps read the layer H - 1 times).
    for start in range(0, queries, block):
        stop = min(queries, start + block)
        for first in range(heads - 1):
            count = heads - 1 - first  # pairs (first, first + 1 ...): slices, no index copy of the rows
            s, lg = twice_mix[:count, :stop - start], logs[:count, :stop - start]
            np.add(rows[first + 1:, start:stop], rows[first, start:stop], out=s)  # s = 2 m
            if low < 0:
                np.maximum(s, 0, out=s)
            if low > 0:
                np.log(s, out=lg)
            else:
                np.log(np.maximum(s, _TINY, out=lg), out=lg)
            s_log_s = np.matmul(s[..., None, :], lg[..., :, None])[..., 0, 0]  # (count, rows)
            total = s.sum(axis=-1) if mass is None else mass[first, start:stop] + mass[first + 1:, start:stop]
            # H(m) = -sum (s / 2) log(s / 2) = (ln 2 sum s - sum s log s) / 2
            divergence[first, first + 1:, start:stop] = (
                0.5 * (log2 * total - s_log_s) - 0.5 * (entropy[first, start:stop] + entropy[first + 1:, start:stop]))
    for first in range(heads - 1):
        distance = np.sqrt(np.clip(divergence[first, first + 1:] / log2, 0.0, 1.0)).mean(axis=-1)
        out[first, first + 1:] = distance
        out[first + 1:, first] = distance
    return out


def head_js_matrix(maps: np.ndarray, normalize: Normalize = DEFAULT_NORMALIZE) -> np.ndarray:
    """Jensen-Shannon distance between every pair of heads, averaged over query rows.

    The divergence uses log base 2, so the distance sqrt(JS) is in [0, 1]: 0 for identical rows, 1 for rows
    with disjoint support. Each layer is normalised in float64 and computed by `layer_js` (float64 throughout,
    also in the head-collapse regime); layers run in parallel threads (`map_in_threads`).

    Args:
        maps: (L, H, N, N); rows are turned into distributions with ``normalize`` (``"none"`` assumes they
            already are).
        normalize: row normalisation mode.

    Returns:
        (L, H, H) float64, symmetric, zero diagonal.
    """
    maps = as_float_array(maps)
    distances = map_normalised_layers(
        lambda _layer, rows, work: layer_js(rows, row_entropy_nats(rows, work.array("logs", maps.shape[2:])), work),
        maps, normalize)
    return _per_layer_matrices(distances, maps)


def head_js_distance(maps: np.ndarray, normalize: Normalize = DEFAULT_NORMALIZE) -> np.ndarray:
    """Mean pairwise Jensen-Shannon distance between the heads of each layer.

    Args:
        maps: (L, H, N, N).
        normalize: row normalisation mode.

    Returns:
        (L,) in [0, 1].
    """
    return off_diagonal_mean(head_js_matrix(maps, normalize))


def effective_number_of_heads(maps: np.ndarray, normalize: Normalize = DEFAULT_NORMALIZE) -> np.ndarray:
    """exp(entropy of the normalised singular values) of each layer's stacked head maps.

    Each head's (N x N) map is flattened and scaled to unit norm (so a head's overall scale does not
    count as diversity); the singular values s of the (H, N*N) stack, normalised to sum 1, have an entropy
    whose exponential is the number of "distinct directions" among the heads.

    Args:
        maps: (L, H, N, N).
        normalize: row normalisation before flattening.

    Returns:
        (L,) in [1, H]: 1 for identical heads, H for mutually orthogonal heads. Computed in float64 whatever
        the maps' dtype: for nearly identical heads the small eigenvalues of the Gram matrix decide the
        answer, and a float32 Gram matrix put errors of ~1e-2 into it.
    """
    maps = as_float_array(maps)
    grams = map_normalised_layers(lambda _layer, rows, work: layer_head_products(rows, work)[0], maps, normalize)
    return effective_heads_from_grams(_per_layer_matrices(grams, maps))


def effective_heads_from_grams(gram: np.ndarray) -> np.ndarray:
    """`effective_number_of_heads` from the (L, H, H) float64 Gram matrices of the flattened heads: (L,)."""
    # Singular values of the (H, N*N) stack from the small H x H Gram matrix (cheaper than an SVD); unit
    # norm per head is applied to the Gram matrix.
    norms = np.sqrt(np.clip(np.diagonal(gram, axis1=1, axis2=2), 0.0, None))
    gram = safe_divide(gram, norms[:, :, None] * norms[:, None, :])
    eigen = np.linalg.eigvalsh(gram)
    singular = np.sqrt(np.clip(eigen, 0.0, None))
    p = safe_divide(singular, singular.sum(axis=-1, keepdims=True))
    return np.exp(row_entropy_nats(p))


@dataclass
class HeadEmbedding:
    """2-D (or k-D) coordinates of heads for a scatter plot.

    Attributes:
        coords: (M, k) coordinates, one row per head.
        model: (M,) model label of each head.
        layer: (M,) layer index (0-based).
        head: (M,) head index within its layer.
        relative_depth: (M,) (layer + 1) / L of its model, for colouring models of different depth alike.
        method: "pca" or "mds".
        explained_variance_ratio: (k,) for PCA, empty for MDS.
    """

    coords: np.ndarray
    model: np.ndarray
    layer: np.ndarray
    head: np.ndarray
    relative_depth: np.ndarray
    method: str
    explained_variance_ratio: np.ndarray


def head_embedding(maps_by_model: Mapping[str, np.ndarray], method: Literal["pca", "mds"] = "pca",
                   n_components: int = 2, normalize: Normalize = DEFAULT_NORMALIZE,
                   random_state: int = 0) -> HeadEmbedding:
    """Embed every head of one or more models (same token count) into a common low-dimensional space.

    Features are the flattened, row-normalised (N x N) maps, each scaled to unit norm, so PCA distances
    reflect the pattern rather than its scale. MDS works on the cosine distance between these features.

    Args:
        maps_by_model: model label -> (L, H, N, N) maps of the same image (N equal across models).
        method: "pca" (linear, fast, deterministic) or "mds" (metric MDS on cosine distances).
        n_components: output dimension.
        normalize: row normalisation mode.
        random_state: seed for MDS.

    Returns:
        `HeadEmbedding` with one row per head of every model, models in the given order.
    """
    from sklearn.decomposition import KernelPCA

    stacks, model, layer, head, rel = [], [], [], [], []
    for name, maps in maps_by_model.items():
        maps = as_float_array(maps)
        layers, heads = maps.shape[:2]
        stacks.append(maps)
        model += [name] * (layers * heads)
        layer.append(np.repeat(np.arange(layers), heads))
        head.append(np.tile(np.arange(heads), layers))
        rel.append(np.repeat(np.arange(1, layers + 1) / layers, heads))
    if len({m.shape[2:] for m in stacks}) != 1:
        raise ValueError("head_embedding needs the same token count N for every model")
    # Everything below needs only the (M x M) cosine kernel of the unit-norm features.
    cosines = _cosine_kernel(stacks, normalize)
    n_components = min(n_components, cosines.shape[0])
    if method == "pca":
        # PCA through scikit-learn's KernelPCA on the (M x M) linear kernel: identical scores to PCA on the
        # (M x N^2) features, but the decomposition is of a 144 x 144 matrix for two ViT-S models instead of
        # an SVD of 144 x 38,809 (seconds on a loaded 2-core CPU).
        kernel = cosines
        kpca = KernelPCA(n_components=n_components, kernel="precomputed", eigen_solver="dense")
        coords = kpca.fit_transform(kernel)
        centred_trace = np.trace(kernel) - kernel.sum() / len(kernel)
        eigenvalues = np.clip(kpca.eigenvalues_, 0.0, None)
        ratio = eigenvalues / centred_trace if centred_trace > 1e-12 else np.zeros_like(eigenvalues)
    elif method == "mds":
        distances = np.clip(1.0 - cosines, 0.0, 2.0)
        np.fill_diagonal(distances, 0.0)
        distances = 0.5 * (distances + distances.T)
        coords = _mds(n_components, random_state).fit_transform(distances)
        ratio = np.zeros(0)
    else:
        raise ValueError(f"method must be 'pca' or 'mds', got {method!r}")
    return HeadEmbedding(coords=coords, model=np.asarray(model), layer=np.concatenate(layer),
                         head=np.concatenate(head), relative_depth=np.concatenate(rel), method=method,
                         explained_variance_ratio=np.asarray(ratio))


_GRAM_COLUMNS = 16384  # features per block: float32 sums of 16k products keep ~1e-6 relative error, then float64


def _cosine_kernel(stacks: Sequence[np.ndarray], normalize: Normalize) -> np.ndarray:
    """(M, M) float64 cosines between all heads' flattened, row-normalised maps (a zero map has cosine 0).

    The features (one row per head, N^2 columns) are built and multiplied one block of query rows at a time
    (about `_GRAM_COLUMNS` features): rows normalise independently, so no normalised copy of the maps is made
    (1.26 GB for Refiner-ViT-L at 448 px). float32 maps (captured ones) are multiplied in float32 and the block
    products summed in float64: float32 GEMM speed without a float64 copy.

    Args:
        stacks: (L_i, H_i, N, N) maps of each model (the same N).
        normalize: row normalisation mode.
    """
    total, queries, keys = sum(m.shape[0] * m.shape[1] for m in stacks), stacks[0].shape[2], stacks[0].shape[3]
    gram = np.zeros((total, total))
    step = max(1, _GRAM_COLUMNS // max(keys, 1))
    for start in range(0, queries, step):
        block = np.concatenate([normalize_rows(m[:, :, start:start + step], normalize).reshape(
            m.shape[0] * m.shape[1], -1) for m in stacks])
        gram += block @ block.T
    norms = np.sqrt(np.clip(np.diagonal(gram), 0.0, None))
    return safe_divide(gram, norms[:, None] * norms[None, :])


def _mds(n_components: int, random_state: int) -> object:
    """A metric MDS on precomputed distances across scikit-learn versions (the keyword was renamed in 1.8)."""
    import inspect

    from sklearn.manifold import MDS

    params = inspect.signature(MDS.__init__).parameters
    kwargs = dict(n_components=n_components, random_state=random_state, n_init=1)
    if "init" in params:
        kwargs["init"] = "classical_mds" if "metric_mds" in params else "random"
    if "metric_mds" in params:
        kwargs["metric"] = "precomputed"
    else:
        kwargs["dissimilarity"] = "precomputed"
    return MDS(**kwargs)


def stack_heads(per_layer: Sequence[np.ndarray]) -> np.ndarray:
    """Stack per-layer (H, N, N) maps into (L, H, N, N), checking equal shapes with a clear message."""
    shapes = {np.shape(m) for m in per_layer}
    if len(shapes) != 1:
        raise ValueError(f"layers differ in shape: {sorted(shapes)}")
    return np.stack([as_float_array(m) for m in per_layer])
