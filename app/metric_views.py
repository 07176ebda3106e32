"""Tables of the section 5 metrics for two models, driven by `analysis.attention_metrics.METRICS`.

The figures come from `analysis.figures` (shared with ``refiner analyze``); this module only shapes metric
arrays into the pages' tables and curves. No Streamlit here.
"""

from __future__ import annotations

from typing import Dict, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.attention_metrics import METRICS


def head_mean(values: np.ndarray) -> np.ndarray:
    """(L,) per-layer values of a (L,) or (L, H) metric (heads averaged, NaN heads ignored)."""
    array = np.asarray(values, dtype=float)
    return np.nanmean(array.reshape(array.shape[0], -1), axis=1) if array.ndim > 1 else array


def per_layer_table(results: Mapping[str, Mapping[str, np.ndarray]], keys: Sequence[str]) -> pd.DataFrame:
    """Long table: model, layer, relative depth, then one column per metric (head metrics averaged)."""
    rows = []
    for label, metrics in results.items():
        # Not from adjacent_similarity: it has L - 1 values (the table dropped the last layer that way).
        depth = next(np.asarray(metrics[k]).shape[0] for k in keys if k in metrics and k != "adjacent_similarity")
        for layer in range(depth):
            row: Dict[str, object] = {"model": label, "layer": layer + 1, "relative_depth": (layer + 1) / depth}
            for key in keys:
                if key not in metrics or key == "adjacent_similarity":
                    continue
                row[key] = float(head_mean(metrics[key])[layer])
            rows.append(row)
    return pd.DataFrame(rows)


def scalar_table(results: Mapping[str, Mapping[str, np.ndarray]]) -> pd.DataFrame:
    """Table of the scalar metrics (localisation) per model."""
    keys = [k for k, info in METRICS.items() if info.axes == ()]
    return pd.DataFrame([{"model": label, **{k: float(np.asarray(m[k])) for k in keys if k in m}}
                         for label, m in results.items()])


def curve_keys(available: Sequence[str]) -> Sequence[str]:
    """Metric keys drawn as per-layer curves, in `METRICS` order."""
    return [k for k, info in METRICS.items() if k in available and info.axes in (("layer",), ("layer", "head"))]
