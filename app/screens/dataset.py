"""Dataset: the section 5 metrics over many images for both models, with intervals and paired differences.

The page only chooses the images and draws. The statistics, figures and table are made by `analysis` exactly
as ``refiner analyze`` makes them (test canvases: `analysis.dataset_sources.analyze_split`, as ``--dataset
cluttered-mnist``; uploads: `analyze_prepared`, as ``--images``; intervals once by
`analysis.dataset.dataset_statistics` with the CLI's resample counts), so every export equals the CLI's file.
Per image only the small per-layer curves are kept (never the (L, H, N, N) maps). A finished run is kept per
process, so a second Run with the same settings, in this or another session, draws from it; the progress bar
is drawn by this page between batches, never inside a cached function (issue 11: Streamlit replays a cached
function's elements, and one drawn into a block made outside it failed the replay).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable, List, Optional, Sequence, Tuple

import pandas as pd
import streamlit as st

from analysis.analyze_run import AnalyzeRequest
from analysis.attention_metrics import MetricSettings
from analysis.dataset import DatasetAnalysis, DatasetStatistics, dataset_statistics
from analysis.dataset_sources import analyze_prepared, analyze_split
from analysis.export import dataset_rows
from analysis.figures import dataset_figures
from analysis.inputs import enlarged_notes, prepare_image
from analysis.model_records import with_unique_labels
from refiner import LoadedModel
from refiner.hashing import sha256_hex
from refiner.image_input import ACCEPTED_EXTENSIONS, ImageInputError

from ..charts import show_chart
from ..exports import figure_exports, table_exports
from ..images import upload_item
from ..sidebar import Context

CLI = AnalyzeRequest()  # the resample counts, seed and batch size of `refiner analyze`
DATASET = "cluttered-mnist"
RUNS_KEPT = 16          # finished runs kept per process (a few hundred KB each for 1,000 canvases)


@dataclass(frozen=True)
class DatasetRun:
    """One finished run of both models over an image set.

    Attributes:
        analysis: the streamed statistics.
        statistics: every interval and paired comparison, computed once for the figures and the table.
        skipped: messages for uploads that could not be analysed.
        notes: messages for uploads smaller than one patch (analysed enlarged).
    """

    analysis: DatasetAnalysis
    statistics: DatasetStatistics
    skipped: Tuple[str, ...]
    notes: Tuple[str, ...]


def run_dataset(models: Sequence[LoadedModel], count: int, uploads: Sequence[bytes], settings: MetricSettings,
                on_progress: Optional[Callable[[int], None]] = None) -> DatasetRun:
    """Both models over the first ``count`` test canvases, or over the uploads when there are any.

    Args:
        models: slot A's and slot B's models.
        count: test canvases (used when there are no uploads).
        uploads: encoded image files.
        settings: metric settings.
        on_progress: called with the images done so far, between batches (draws the page's progress bar).
    """
    models = with_unique_labels(models)
    skipped: List[str] = []
    notes: List[str] = []
    if uploads:
        items = []
        for index, data in enumerate(uploads):
            name = f"upload {index + 1}"
            try:
                image = upload_item(data).image
                items.append(prepare_image(image, models, name))
            except (ImageInputError, ValueError) as error:
                skipped.append(f"{name}: {error}")
                continue
            notes += [f"{name}: {text}" for text in
                      enlarged_notes({"AB"[slot]: m.info for slot, m in enumerate(models)}, image.size)]
        analysis = analyze_prepared(models, items, settings, on_progress=on_progress)
    else:
        analysis = analyze_split(models, DATASET, CLI.split, None, count, CLI.batch_size, settings,
                                 on_progress=on_progress).analysis
    statistics = dataset_statistics(analysis, n_boot=CLI.n_boot, seed=CLI.seed)
    return DatasetRun(analysis=analysis, statistics=statistics, skipped=tuple(skipped), notes=tuple(notes))


class _Runs:
    """Finished runs by their inputs, least recently used dropped first (shared read-only by sessions)."""

    def __init__(self) -> None:
        self.runs: "OrderedDict[Hashable, DatasetRun]" = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Hashable) -> Optional[DatasetRun]:
        with self.lock:
            if key in self.runs:
                self.runs.move_to_end(key)
            return self.runs.get(key)

    def put(self, key: Hashable, run: DatasetRun) -> None:
        with self.lock:
            self.runs[key] = run
            while len(self.runs) > RUNS_KEPT:
                self.runs.popitem(last=False)


@st.cache_resource(show_spinner=False)
def _runs() -> _Runs:
    return _Runs()


def _image_set() -> Tuple[int, Tuple[bytes, ...]]:
    source = st.radio("Images", ["Dataset test canvases", "Uploads"], horizontal=True, key="ds-source")
    if source == "Dataset test canvases":
        count = st.slider("Number of test canvases", 10, 1000, 50, 10, key="ds-count",
                          help="The first canvases of the fixed 1,000-canvas test set (as refiner analyze "
                               "--dataset cluttered-mnist --max-images N).")
        return count, ()
    files = st.file_uploader("Images", type=list(ACCEPTED_EXTENSIONS), accept_multiple_files=True, key="ds-uploads")
    return 0, tuple(f.getvalue() for f in files or [])


def render(ctx: Context) -> None:
    """Draw the Dataset page."""
    st.title("Dataset-level analysis")
    if not all(ctx.models):
        st.info("Choose two models in the sidebar.")
        return
    count, uploads = _image_set()
    kind = st.radio("Map", ["effective", "softmax"], horizontal=True, key="ds-kind")
    settings = MetricSettings(map_kind=kind)
    if not count and not uploads:
        st.info("Upload some images to analyse.")
        return
    total = len(uploads) or count
    if not st.button("Run", type="primary", key="ds-run") and not st.session_state.get("ds-done"):
        st.caption(f"{total} images, both models.")
        return
    st.session_state["ds-done"] = True
    key = (ctx.models[0].source, ctx.models[1].source, count if not uploads else 0,
           tuple(sha256_hex(data) for data in uploads), settings)
    run = _runs().get(key)
    if run is None:
        bar = st.progress(0.0, text="Running both models...")
        run = run_dataset(ctx.models, count, uploads, settings,
                          on_progress=lambda done: bar.progress(min(done / total, 1.0), text=f"{done}/{total} images"))
        bar.empty()
        _runs().put(key, run)
    for message in run.skipped:
        st.warning(f"Skipped: {message}")
    for message in run.notes:
        st.info(f"Enlarged: {message}")
    if not run.analysis.images:
        st.error("No image could be analysed.")
        return
    statistics = run.statistics
    st.caption(f"{run.analysis.images} images; mean per layer with a 95% bootstrap interval ({statistics.n_boot} "
               f"resamples); paired differences B - A with a sign-flip permutation test "
               f"({statistics.n_permutations} flips). The same figures and table as refiner analyze.")
    figures = dataset_figures(run.analysis, statistics)
    for index, (stem, fig) in enumerate(figures.items()):
        if index % 2 == 0:
            columns = st.columns(2)
        with columns[index % 2]:
            show_chart(fig, key=f"ds-{stem}")
            figure_exports(fig, stem, key=f"exp-ds-{stem}")
    st.header("Dataset metrics (mean and 95% interval per model; B - A paired on the same images)")
    rows = dataset_rows(run.analysis, statistics)
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    table_exports(rows, "dataset_metrics", key="ds-table")
