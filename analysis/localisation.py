"""Does attention land on the object? Share of attention / rollout mass inside a box (DESIGN section 5).

Boxes are ``(x0, y0, x1, y1)`` in pixels of the model input (after preprocessing), x to the right, y down,
half-open like array slices. Each patch counts with the fraction of its area inside the box, so a box that
does not align with the patch grid is measured without rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

from .normalization import DEFAULT_NORMALIZE, Normalize, normalize_rows

Box = Tuple[float, float, float, float]


def _interval_overlap(starts: np.ndarray, size: float, low: float, high: float) -> np.ndarray:
    return np.clip(np.minimum(starts + size, high) - np.maximum(starts, low), 0.0, None) / size


def box_patch_coverage(box: Sequence[float], grid: Tuple[int, int], patch_size: Tuple[int, int]) -> np.ndarray:
    """Fraction of every patch's area that lies inside the box.

    Args:
        box: (x0, y0, x1, y1) in pixels.
        grid: (Gh, Gw).
        patch_size: (ph, pw) in pixels.

    Returns:
        (Gh, Gw) values in [0, 1].
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box must have x1 > x0 and y1 > y0, got {tuple(box)}")
    (gh, gw), (ph, pw) = grid, patch_size
    rows = _interval_overlap(np.arange(gh) * float(ph), float(ph), y0, y1)
    cols = _interval_overlap(np.arange(gw) * float(pw), float(pw), x0, x1)
    return np.outer(rows, cols)


def mass_in_box(weights: np.ndarray, box: Sequence[float], grid: Tuple[int, int], patch_size: Tuple[int, int]
                ) -> np.ndarray:
    """Share of non-negative patch weights inside a box.

    Args:
        weights: (..., Gh * Gw) or (..., Gh, Gw) non-negative weights over patches (e.g. a CLS row).
        box, grid, patch_size: as in `box_patch_coverage`.

    Returns:
        (...) shares in [0, 1] (0 where the weights are all zero).
    """
    coverage = box_patch_coverage(box, grid, patch_size).reshape(-1)
    flat = np.asarray(weights, dtype=np.float64)
    if flat.shape[-1] != coverage.size:
        if flat.ndim < 2 or flat.shape[-2:] != tuple(grid):
            raise ValueError(f"weights of shape {flat.shape} match neither {coverage.size} patches nor grid {grid}")
        flat = flat.reshape(flat.shape[:-2] + (-1,))
    total = flat.sum(axis=-1)
    inside = flat @ coverage
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), 0.0)


def chance_level(box: Sequence[float], grid: Tuple[int, int], patch_size: Tuple[int, int]) -> float:
    """Share inside the box of uniform attention over the patches: the baseline to beat."""
    return float(box_patch_coverage(box, grid, patch_size).mean())


@dataclass
class Localisation:
    """How much of a model's attention falls inside the box on one image.

    Attributes:
        cls_in_box: (L, H) share of the CLS query's patch attention inside the box.
        rollout_in_box: share of the rollout CLS row (patch part) inside the box.
        pointing_hit: whether the rollout's most attended patch overlaps the box.
        chance: share a uniform map would put inside the box.
    """

    cls_in_box: np.ndarray
    rollout_in_box: float
    pointing_hit: bool
    chance: float


def localisation(maps: np.ndarray, rollout: np.ndarray, box: Sequence[float], num_prefix_tokens: int,
                 grid: Tuple[int, int], patch_size: Tuple[int, int], normalize: Normalize = DEFAULT_NORMALIZE,
                 query: int = 0) -> Localisation:
    """CLS attention and rollout mass inside a box.

    Args:
        maps: (L, H, N, N) maps of one image.
        rollout: (N, N) joint attention from `analysis.rollout.attention_rollout`.
        box: (x0, y0, x1, y1) in input pixels.
        num_prefix_tokens: K (must be >= 1: the query is a prefix token).
        grid: (Gh, Gw).
        patch_size: (ph, pw).
        normalize: row normalisation of the maps before taking the CLS row.
        query: the query row (0 = CLS).

    Returns:
        `Localisation`.
    """
    if num_prefix_tokens < 1:
        raise ValueError("localisation of the CLS query needs a model with a prefix token")
    cls_rows = normalize_rows(maps[..., query:query + 1, :], normalize)[..., 0, num_prefix_tokens:]
    coverage = box_patch_coverage(box, grid, patch_size).reshape(-1)
    roll = np.clip(np.asarray(rollout)[query, num_prefix_tokens:], 0.0, None)
    return Localisation(cls_in_box=mass_in_box(cls_rows, box, grid, patch_size),
                        rollout_in_box=float(mass_in_box(roll, box, grid, patch_size)),
                        pointing_hit=bool(coverage[int(np.argmax(roll))] > 0),
                        chance=chance_level(box, grid, patch_size))
