"""Dataset: the section 5 metrics over many images for both models, with intervals and paired differences.

Per image only the small per-layer summaries are kept (never the (L, H, N, N) maps), so memory does not grow
with the maps' size. Results are cached per (models, images, settings); the progress bar shows while the
models run.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import streamlit as st

from analysis.attention_metrics import METRICS, MetricSettings, compute_map_metrics
from analysis.similarity import resample_to_relative_depth, relative_depth
from refiner.image_input import ACCEPTED_EXTENSIONS, ImageInputError

from .. import cached
from ..exports import figure_exports, table_exports
from ..images import sample_item, upload_item
from ..maps import run_model
from ..metric_views import curve_keys, depth_curves
from ..sidebar import Context

BOOTSTRAP = 1000
PerLayer = Dict[str, np.ndarray]  # metric key -> (images, L) head-averaged values


def _summaries(metrics: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """(L,) head-averaged per-layer values of every curve metric."""
    return {k: np.nanmean(np.asarray(metrics[k], dtype=float).reshape(metrics[k].shape[0], -1), axis=1)
            for k in curve_keys(list(metrics))}


@st.cache_data(max_entries=8, show_spinner=False)
def _run(sources: Tuple[str, str], image_keys: Tuple[str, ...], uploads: Tuple[bytes, ...],
         settings: MetricSettings, canvas: int, _progress: Optional[Callable[[float, str], None]] = None
         ) -> Tuple[List[PerLayer], List[str]]:
    """Per-layer summaries of both models over the images; returns them and the skipped images' messages."""
    models = [cached.get_model(s) for s in sources]
    items, skipped = [], []
    for key in image_keys:
        items.append(sample_item(key, canvas))
    for data in uploads:
        try:
            items.append(upload_item(data))
        except ImageInputError as error:
            skipped.append(str(error))
    collected: List[Dict[str, List[np.ndarray]]] = [{}, {}]
    for index, item in enumerate(items):
        for slot, model in enumerate(models):
            try:
                view = run_model(model, item.image)
            except ImageInputError as error:
                skipped.append(f"{item.key}: {error}")
                break
            metrics = compute_map_metrics(view.maps(settings.map_kind), view.num_prefix_tokens, view.grid,
                                          view.patch_size, settings, item.box)
            for key, value in _summaries(metrics).items():
                collected[slot].setdefault(key, []).append(value)
        if _progress is not None:
            _progress((index + 1) / len(items), f"{index + 1}/{len(items)} images")
    return [{k: np.stack(v) for k, v in c.items()} for c in collected], skipped


def _interval(values: np.ndarray, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over images and its 95% percentile-bootstrap interval, per layer: three (L,) arrays."""
    rng = np.random.default_rng(seed)
    count = values.shape[0]
    means = np.stack([np.nanmean(values[rng.integers(0, count, count)], axis=0) for _ in range(BOOTSTRAP)])
    return np.nanmean(values, axis=0), np.nanpercentile(means, 2.5, axis=0), np.nanpercentile(means, 97.5, axis=0)


def _image_set(canvas: int) -> Tuple[Tuple[str, ...], Tuple[bytes, ...]]:
    source = st.radio("Images", ["Dataset test canvases", "Uploads"], horizontal=True, key="ds-source")
    if source == "Dataset test canvases":
        count = st.slider("Number of test canvases", 10, 300, 50, 10, key="ds-count")
        return tuple(f"digit:{i}" for i in range(count)), ()
    files = st.file_uploader("Images", type=list(ACCEPTED_EXTENSIONS), accept_multiple_files=True, key="ds-uploads")
    return (), tuple(f.getvalue() for f in files or [])


def render(ctx: Context) -> None:
    """Draw the Dataset page."""
    st.title("Dataset-level analysis")
    if not all(ctx.models):
        st.info("Choose two models in the sidebar.")
        return
    canvas = int(ctx.models[0].data["img_size"][0])
    keys, uploads = _image_set(canvas)
    kind = st.radio("Map", ["effective", "softmax"], horizontal=True, key="ds-kind")
    settings = MetricSettings(map_kind=kind)
    if not keys and not uploads:
        st.info("Upload some images to analyse.")
        return
    if not st.button("Run", type="primary", key="ds-run") and not st.session_state.get("ds-done"):
        st.caption(f"{len(keys) + len(uploads)} images, both models.")
        return
    st.session_state["ds-done"] = True
    bar = st.progress(0.0, text="Running both models...")
    sources = (ctx.models[0].source, ctx.models[1].source)
    results, skipped = _run(sources, keys, uploads, settings, canvas,
                            _progress=lambda share, text: bar.progress(share, text=text))
    bar.empty()
    for message in skipped:
        st.warning(f"Skipped: {message}")
    if not results[0]:
        st.error("No image could be analysed.")
        return
    labels = [f"{'AB'[slot]}: {m.label}" for slot, m in enumerate(ctx.models)]
    count = next(iter(results[0].values())).shape[0]
    st.caption(f"{count} images; mean per layer with a 95% bootstrap interval ({BOOTSTRAP} resamples).")
    rows = []
    for index, key in enumerate(curve_keys(list(results[0]))):
        stats = {label: _interval(r[key]) for label, r in zip(labels, results)}
        if index % 2 == 0:
            columns = st.columns(2)
        with columns[index % 2]:
            fig = depth_curves(key, {label: s[0] for label, s in stats.items()},
                               intervals={label: (s[1], s[2]) for label, s in stats.items()})
            st.plotly_chart(fig, key=f"ds-{key}")
            figure_exports(fig, f"dataset-{key}", key=f"exp-ds-{key}")
        # Paired difference A - B per image, on A's layers (B resampled to A's relative depths).
        a, b = results[0][key], results[1][key]
        b_on_a = resample_to_relative_depth(b.T, relative_depth(a.shape[1])).T if a.shape[1] != b.shape[1] else b
        diff_mean, diff_low, diff_high = _interval(a - b_on_a)
        for layer in range(a.shape[1]):
            rows.append({"metric": key, "label": METRICS[key].label, "layer": layer + 1,
                         "mean_a": float(stats[labels[0]][0][layer]),
                         "mean_b": float(np.interp((layer + 1) / a.shape[1], relative_depth(b.shape[1]),
                                                   stats[labels[1]][0])),
                         "diff_a_minus_b": float(diff_mean[layer]), "diff_low": float(diff_low[layer]),
                         "diff_high": float(diff_high[layer]),
                         "interval_excludes_0": bool(diff_low[layer] > 0 or diff_high[layer] < 0)})
    st.header("Paired differences (A - B on the same images)")
    table = pd.DataFrame(rows)
    st.dataframe(table, hide_index=True)
    table_exports(table, "dataset-paired-differences", key="ds-table")
