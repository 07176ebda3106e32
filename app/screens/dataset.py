"""Dataset: the section 5 metrics over many images for both models, with intervals and paired differences.

Per image only the small per-layer summaries are kept (never the (L, H, N, N) maps), so memory does not grow
with the maps' size. Results are cached per (models, images, settings); the progress bar shows while the
models run.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import streamlit as st

from analysis import figures
from analysis.attention_metrics import METRICS, MetricSettings, compute_map_metrics
from analysis.dataset import align_curves, bootstrap_interval, paired_comparison
from analysis.similarity import relative_depth
from refiner.image_input import ACCEPTED_EXTENSIONS, ImageInputError

from .. import cached
from ..charts import show_chart
from ..exports import figure_exports, table_exports
from ..images import canvas_key, sample_item, upload_item
from analysis.compare_view import capture_view
from ..metric_views import curve_keys, head_mean
from ..model_info import enlarged_notes
from ..sidebar import Context

BOOTSTRAP = 1000      # bootstrap resamples for the intervals
PERMUTATIONS = 2000   # sign flips for the paired test
# Per-layer curves that the dataset page draws (similarity with the next layer has L - 1 values, so it is not
# on the same relative depths; the full similarity matrix is on the Analysis page).
SKIP = ("adjacent_similarity",)
PerLayer = Dict[str, np.ndarray]  # metric key -> (images, L) head-averaged values


def _summaries(metrics: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """(L,) head-averaged per-layer values of every curve metric."""
    return {k: head_mean(metrics[k]) for k in curve_keys(list(metrics)) if k not in SKIP}


# One entry per (models, image, settings): a few KB of per-layer summaries each, so a full 1,000-canvas run of
# both models stays cached (and a second Run, in this or another session, only reads the cache).
@st.cache_data(max_entries=4096, show_spinner=False)
def _image_summaries(sources: Tuple[str, str], image_key: str, upload: Optional[bytes], settings: MetricSettings,
                     canvas: str) -> Tuple[Optional[Tuple[PerLayer, PerLayer]], str]:
    """Per-layer summaries of both models on one image and its note (an image smaller than one patch is
    enlarged, `app.model_info.enlarged_notes`; "" for none), or None and the reason it was skipped.

    Cached and drawing nothing: a cached function must not touch page elements (Streamlit replays a cached
    function's elements, and an element of a block made outside it fails the replay; that was the
    CacheReplayClosureError of a second Run). The progress bar is drawn by the caller, between calls.
    """
    try:
        item = upload_item(upload) if upload is not None else sample_item(image_key, canvas)
    except ImageInputError as error:
        return None, str(error)
    summaries = []
    models = [cached.get_model(source) for source in sources]
    for model in models:
        try:
            view = capture_view(model, item.image)
        except ImageInputError as error:
            return None, f"{item.key}: {error}"
        metrics = compute_map_metrics(view.maps(settings.map_kind), view.num_prefix_tokens, view.grid,
                                      view.patch_size, settings, item.box,
                                      class_token_index=view.class_token_index)
        summaries.append(_summaries(metrics))
    notes = enlarged_notes(models, item.image)
    return (summaries[0], summaries[1]), (f"{image_key}: {' '.join(notes)}" if notes else "")


def _run(sources: Tuple[str, str], image_keys: Tuple[str, ...], uploads: Tuple[bytes, ...],
         settings: MetricSettings, canvas: str, progress: Callable[[float, str], None]
         ) -> Tuple[List[PerLayer], List[str], List[str]]:
    """Per-layer summaries of both models over the images (stacked per metric: (images, L)), the skipped
    images' messages and the notes of the images analysed. ``progress(share, text)`` is called after each
    image."""
    jobs = [(key, None) for key in image_keys] + [(f"upload {i + 1}", data) for i, data in enumerate(uploads)]
    collected: List[Dict[str, List[np.ndarray]]] = [{}, {}]
    skipped: List[str] = []
    notes: List[str] = []
    for index, (key, data) in enumerate(jobs):
        pair, message = _image_summaries(sources, key, data, settings, canvas)
        if pair is None:
            skipped.append(message)
        else:
            if message:
                notes.append(message)
            for slot, summaries in enumerate(pair):
                for metric, value in summaries.items():
                    collected[slot].setdefault(metric, []).append(value)
        progress((index + 1) / len(jobs), f"{index + 1}/{len(jobs)} images")
    return [{k: np.stack(v) for k, v in c.items()} for c in collected], skipped, notes


def _image_set(canvas: str) -> Tuple[Tuple[str, ...], Tuple[bytes, ...]]:
    source = st.radio("Images", ["Dataset test canvases", "Uploads"], horizontal=True, key="ds-source")
    if source == "Dataset test canvases":
        count = st.slider("Number of test canvases", 10, 1000, 50, 10, key="ds-count",
                          help="The first canvases of the fixed 1,000-canvas test set.")
        return tuple(f"digit:{i}" for i in range(count)), ()
    files = st.file_uploader("Images", type=list(ACCEPTED_EXTENSIONS), accept_multiple_files=True, key="ds-uploads")
    return (), tuple(f.getvalue() for f in files or [])


def render(ctx: Context) -> None:
    """Draw the Dataset page."""
    st.title("Dataset-level analysis")
    if not all(ctx.models):
        st.info("Choose two models in the sidebar.")
        return
    canvas = canvas_key(ctx.models[0].data)
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
    results, skipped, notes = _run(sources, keys, uploads, settings, canvas,
                            progress=lambda share, text: bar.progress(share, text=text))
    bar.empty()
    for message in skipped:
        st.warning(f"Skipped: {message}")
    for message in notes:
        st.info(f"Enlarged: {message}")
    if not results[0]:
        st.error("No image could be analysed.")
        return
    labels = [f"{'AB'[slot]}: {m.label}" for slot, m in enumerate(ctx.models)]
    count = next(iter(results[0].values())).shape[0]
    st.caption(f"{count} images; mean per layer with a 95% bootstrap interval ({BOOTSTRAP} resamples); paired "
               f"differences B - A with a sign-flip permutation test ({PERMUTATIONS} flips).")
    rows = []
    for index, key in enumerate(curve_keys(list(results[0]))):
        label = METRICS[key].label
        stats = {name: bootstrap_interval(r[key], n_boot=BOOTSTRAP) for name, r in zip(labels, results)}
        if index % 2 == 0:
            columns = st.columns(2)
        with columns[index % 2]:
            fig = figures.layer_curves({name: s.mean for name, s in stats.items()}, label, label, intervals=stats)
            show_chart(fig, key=f"ds-{key}")
            figure_exports(fig, f"dataset-{key}", key=f"exp-ds-{key}")
        # Paired per image on common relative depths (the shallower model's layers when depths differ).
        a, b = align_curves(results[0][key], results[1][key])
        comparison = paired_comparison(a, b, n_boot=BOOTSTRAP, n_permutations=PERMUTATIONS)
        diff, depth = comparison.difference, relative_depth(a.shape[1])
        for layer in range(a.shape[1]):
            rows.append({"metric": key, "label": label, "layer": layer + 1, "relative_depth": float(depth[layer]),
                         "mean_a": float(np.nanmean(a[:, layer])), "mean_b": float(np.nanmean(b[:, layer])),
                         "diff_b_minus_a": float(diff.mean[layer]), "diff_low": float(diff.low[layer]),
                         "diff_high": float(diff.high[layer]), "p_value": float(comparison.p_value[layer]),
                         "interval_excludes_0": bool(diff.low[layer] > 0 or diff.high[layer] < 0)})
    st.header("Paired differences (B - A on the same images)")
    table = pd.DataFrame(rows)
    st.dataframe(table, hide_index=True)
    table_exports(table, "dataset-paired-differences", key="ds-table")
