"""The whole DESIGN section 5 metric suite for one model's maps on one image, as a flat table of arrays.

`compute_map_metrics` is what the per-image pipeline, the dataset pipeline and the latency benchmark run.
It goes through the maps one layer at a time (layers in parallel threads): each layer is normalised once, in
float64, and that one copy is read by the per-layer kernels of the sibling modules (`layer_locality`,
`layer_js`, `layer_head_products`, the head fusion of the rollout); the cross-layer cosines then
take one head at a time. Results are a
``dict[str, np.ndarray]`` whose keys and axes are described by `METRICS`, so aggregation, export and
figures can treat every metric alike.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from .blas_threads import Workspace, single_blas_thread
from .head_diversity import (diversity_from_head_cosines, effective_heads_from_grams, layer_head_products,
                             layer_js, off_diagonal_mean)
from .locality import LAYER_LOCALITY_KEYS, locality_dtype, layer_locality, negative_mass_fraction
from .localisation import localisation
from .normalization import Normalize, as_float_array, check_mode, map_normalised_layers, row_entropy_nats
from .rollout import HeadFusion, fuse_heads, rollout_cls_map, rollout_of_fused
from .similarity import (adjacent_layer_similarity, cross_layer_similarity, similar_block_counts)


@dataclass(frozen=True)
class MetricInfo:
    """What one metric key holds.

    Attributes:
        axes: names of its axes ("layer", "head", "layer2", "query", "key", "row", "col"); () for scalars.
        label: human-readable name with unit, for figures and tables.
        summary: whether it is a small per-image summary kept for dataset statistics (maps are not).
    """

    axes: Tuple[str, ...]
    label: str
    summary: bool = True


METRICS: Dict[str, MetricInfo] = {
    "similarity": MetricInfo(("layer", "layer2"), "cross-layer similarity (column cosine)"),
    "similarity_share": MetricInfo(("layer", "layer2"), "share of (head, key) cosines above tau"),
    "adjacent_similarity": MetricInfo(("layer",), "similarity with the next layer"),
    "similar_blocks": MetricInfo(("layer",), "number of similar blocks"),
    "head_cosine": MetricInfo(("layer", "head", "head2"), "column cosine between heads"),
    "head_diversity": MetricInfo(("layer",), "head diversity (1 - mean cosine)"),
    "head_js": MetricInfo(("layer",), "mean Jensen-Shannon distance between heads"),
    "effective_heads": MetricInfo(("layer",), "effective number of heads"),
    "distance_px": MetricInfo(("layer", "head"), "mean attention distance (pixels)"),
    "distance_patches": MetricInfo(("layer", "head"), "mean attention distance (patches)"),
    "cls_entropy": MetricInfo(("layer", "head"), "CLS-query entropy / log N"),
    "patch_entropy": MetricInfo(("layer", "head"), "patch-query entropy / log N"),
    "grid_mass": MetricInfo(("layer", "head"), "grid-neighbourhood mass"),
    "band_mass": MetricInfo(("layer", "head"), "sequence-band mass"),
    "diagonal_mass": MetricInfo(("layer", "head"), "diagonal mass"),
    "prefix_mass": MetricInfo(("layer", "head"), "prefix (sink) mass"),
    "negative_fraction": MetricInfo(("layer", "head"), "negative-mass fraction"),
    "rollout": MetricInfo(("query", "key"), "attention rollout", summary=False),
    "rollout_cls": MetricInfo(("row", "col"), "rollout of the CLS query (share of patch mass)", summary=False),
    # Models without a class token (register-only / global-average-pooled ViTs) get this instead.
    "rollout_patch_mean": MetricInfo(("row", "col"), "rollout of the mean patch query (no CLS token)",
                                     summary=False),
    "cls_in_box": MetricInfo(("layer", "head"), "CLS attention inside the box (share)"),
    "rollout_in_box": MetricInfo((), "rollout mass inside the box (share)"),
    "pointing_hit": MetricInfo((), "rollout maximum inside the box (0/1)"),
    "box_chance": MetricInfo((), "uniform attention inside the box (share)"),
}


@dataclass(frozen=True)
class MetricSettings:
    """Every knob of the metric suite, recorded in export manifests.

    Attributes:
        normalize: row normalisation of non-stochastic maps ("none", "abs_rownorm", "clip_rownorm").
        tau: per-(head, key) cosine threshold of the cross-layer "share above tau".
        block_threshold: layer-mean similarity from which two blocks count as similar.
        grid_radius: Chebyshev radius (patches) of the grid-neighbourhood mass.
        band_width: half-width |i - j| <= k of the sequence-band mass.
        head_fusion: rollout head fusion ("mean", "max", "min").
        discard_ratio: rollout share of lowest entries discarded per layer.
        map_kind: which captured map the metrics read ("effective" multiplies V; "softmax" is the block's
            own softmax, absent for some official Refiner-ViT blocks).
    """

    normalize: Normalize = "abs_rownorm"
    tau: float = 0.5
    block_threshold: float = 0.9
    grid_radius: int = 1
    band_width: int = 1
    head_fusion: HeadFusion = "mean"
    discard_ratio: float = 0.0
    map_kind: str = "effective"

    def __post_init__(self) -> None:
        check_mode(self.normalize)
        if self.map_kind not in ("effective", "softmax"):
            raise ValueError(f"map_kind must be 'effective' or 'softmax', got {self.map_kind!r}")

    def to_dict(self) -> Dict[str, object]:
        """Plain dict for JSON manifests."""
        return asdict(self)


def compute_map_metrics(maps: np.ndarray, num_prefix_tokens: int, grid: Tuple[int, int],
                        patch_size: Tuple[int, int], settings: MetricSettings = MetricSettings(),
                        box: Optional[Sequence[float]] = None, class_token_index: Optional[int] = 0
                        ) -> Dict[str, np.ndarray]:
    """Every section 5 metric of one model's maps on one image.

    Args:
        maps: (L, H, N, N) maps (float32 or float64), N = K + Gh * Gw.
        num_prefix_tokens: K.
        grid: (Gh, Gw).
        patch_size: (ph, pw) in pixels.
        settings: `MetricSettings`.
        box: optional (x0, y0, x1, y1) object box in input pixels; adds the localisation keys.
        class_token_index: the CLS token's index (0 for ViT/DeiT), or None for models without one (e.g.
            registers with global average pooling). Without a CLS token the metrics defined on the CLS query
            are left out (``cls_entropy``, the localisation keys) and the rollout map is that of the mean
            patch query, under its own key ``rollout_patch_mean``, never under a CLS name.

    Returns:
        ``{key: array}`` with the axes given by `METRICS` (L layers, H heads, N tokens).
    """
    maps = as_float_array(maps)
    if maps.ndim != 4 or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(f"maps must be (L, H, N, N), got {maps.shape}")
    grid, patch_size = (int(grid[0]), int(grid[1])), (int(patch_size[0]), int(patch_size[1]))
    with single_blas_thread():
        return _compute(maps, num_prefix_tokens, grid, patch_size, settings, box,
                        class_token_index is not None and num_prefix_tokens > 0)


def rollout_map(metrics: Mapping[str, np.ndarray]) -> Tuple[str, np.ndarray]:
    """The rollout map of a metric table and what it is: ("rollout_cls" | "rollout_patch_mean", (Gh, Gw))."""
    key = "rollout_cls" if "rollout_cls" in metrics else "rollout_patch_mean"
    return key, np.asarray(metrics[key])


def _compute(maps: np.ndarray, num_prefix_tokens: int, grid: Tuple[int, int], patch_size: Tuple[int, int],
             settings: MetricSettings, box: Optional[Sequence[float]], has_cls: bool) -> Dict[str, np.ndarray]:
    layers, tokens = maps.shape[0], maps.shape[-1]
    fused = np.empty((layers, tokens, tokens), dtype=maps.dtype)

    def one_layer(layer: int, rows: np.ndarray, work: Workspace) -> Dict[str, np.ndarray]:
        # The one normalised copy of this layer (float64: the Jensen-Shannon divergence and the Gram matrix need
        # it), read by every per-layer metric; its row entropies are shared by the entropy metrics and the JS.
        # One layer at a time keeps the working set to a few layers' worth (0.08 GB each at N = 785) instead of
        # several normalised copies of all maps.
        entropy = row_entropy_nats(rows, work.array("logs", maps.shape[2:]))
        fused[layer] = fuse_heads(rows[None], settings.head_fusion)[0]
        values = layer_locality(rows, entropy, num_prefix_tokens, grid, patch_size, settings.grid_radius,
                                settings.band_width)
        values["gram"], values["head_cosine"] = layer_head_products(rows, work)
        values.update(head_js=layer_js(rows, entropy, work),
                      # Negative mass is a property of the raw map, before any normalisation.
                      negative_fraction=negative_mass_fraction(maps[layer], work.array("raw", maps.shape[1:], maps.dtype)))
        return values

    per_layer = map_normalised_layers(one_layer, maps, settings.normalize)

    def stacked(key: str) -> np.ndarray:
        return np.stack([values[key] for values in per_layer])

    local = {key: stacked(key).astype(locality_dtype(key, maps.dtype), copy=False) for key in LAYER_LOCALITY_KEYS}
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The rollout (a chain of L products, one thread) runs beside the cross-layer cosines; both only read.
        rollout_job = pool.submit(rollout_of_fused, fused, settings.discard_ratio)
        # Cross-layer cosines need every layer of a head at once: one head at a time, normalised again from the maps.
        similarity = cross_layer_similarity(maps, settings.normalize, settings.tau)
        rollout = rollout_job.result()
    head_cos = stacked("head_cosine")
    out: Dict[str, np.ndarray] = {
        "similarity": similarity.matrix,
        "similarity_share": similarity.share_above_tau,
        "adjacent_similarity": adjacent_layer_similarity(similarity.matrix),
        "similar_blocks": similar_block_counts(similarity.matrix, settings.block_threshold).astype(np.float64),
        "head_cosine": head_cos,
        "head_diversity": diversity_from_head_cosines(head_cos),
        "head_js": off_diagonal_mean(stacked("head_js")),
        "effective_heads": effective_heads_from_grams(stacked("gram")),
        "distance_px": local["distance_px"],
        "distance_patches": local["distance_patches"],
        "patch_entropy": local["patch_entropy"],
        "grid_mass": local["grid_mass"],
        "band_mass": local["band_mass"],
        "diagonal_mass": local["diagonal_mass"],
        "prefix_mass": local["prefix_mass"],
        "negative_fraction": stacked("negative_fraction"),
        "rollout": rollout,
    }
    if has_cls:
        out["cls_entropy"] = local["cls_entropy"]
        out["rollout_cls"] = rollout_cls_map(rollout, num_prefix_tokens, grid)
    else:
        out["rollout_patch_mean"] = rollout[num_prefix_tokens:, num_prefix_tokens:].mean(axis=0).reshape(grid)
    if box is not None and has_cls:
        # Reads only the CLS rows of the maps (normalised again: H rows per layer).
        loc = localisation(maps, rollout, box, num_prefix_tokens, grid, patch_size, settings.normalize)
        out.update(cls_in_box=loc.cls_in_box, rollout_in_box=np.float64(loc.rollout_in_box),
                   pointing_hit=np.float64(loc.pointing_hit), box_chance=np.float64(loc.chance))
    return {key: np.asarray(value) for key, value in out.items()}
