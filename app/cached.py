"""The app's caches: models once per process, captured maps in one byte-bounded store, all read-only.

Several browser sessions share these caches; nothing in them is ever mutated (models are frozen in eval
mode; the maps of `app.map_store` are read-only arrays shared without copies; images are returned as copies
by ``st.cache_data``), and every cache is bounded (entries for images, bytes for maps) so memory stays
bounded however many images are looked at.
"""

from __future__ import annotations

import threading
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import streamlit as st

from analysis.attention_metrics import MetricSettings
from analysis.compare_view import ModelView, capture_view, kept_metrics, view_metrics
from refiner.capture_adapters import attention_layers

from .images import ImageItem, sample_item, upload_item
from .map_store import MapStore, budget_from_env
from .sources import LoadedModel, load_source

# One capture at a time per process. A capture holds its float32 maps while it runs (Refiner-ViT-L at 448 px:
# 2.5 GB, several GB with the metrics computed from them) before the view is made smaller; eight sessions
# capturing at once would hold eight times that outside the map store's budget. The captures share the same
# cores anyway, so running them one after the other costs no throughput; a session whose view is kept never waits.
_CAPTURE = threading.Lock()
# What a capture holds at its peak, beyond the model, in float32 map bytes B of the kinds it records (both for a
# refined model, one array for a vanilla one) and M of one kind: the captured maps and their copies out of the
# capture, then the float16 copies (B / 2) of a large view. Measured on Refiner-ViT-L at 448 px (B = 2.52 GB, one
# process, VmHWM above the loaded model): a float32 capture peaks at 4.98 GB (2.0 B), a float16 capture with the
# default metrics at 3.83 GB; the default metrics go through the maps one layer at a time (at
# most 4 threads with buffers of about two maps of one layer each, `analysis.attention_metrics`): 0.28-0.45 GB of
# working memory for M = 1.26 GB on Refiner-ViT-L at 448 px (`benchmarks/metrics_speed.py`; 3.2 M before they
# went layer by layer). The store reserves this while the capture runs (`app.map_store.MapStore.reserving`).
DRAW_WORKING_FACTOR = 2.0       # x B
METRICS_WORKING_FACTOR = 0.5    # + x M
# fp32 map bytes (B, M) of each source's last capture: a later capture reserves for what the model really records.
_MAP_BYTES: Dict[str, Tuple[int, int]] = {}


@st.cache_resource(max_entries=6, show_spinner="Loading model...")
def get_model(source: str) -> LoadedModel:
    """The model of a source, loaded once per process (raises `refiner.ModelSourceError`)."""
    return load_source(source)


@st.cache_data(max_entries=64, show_spinner=False)
def get_sample(key: str, canvas: str) -> ImageItem:
    """A built-in sample image, digits drawn as `app.images.canvas_key` says (KeyError for an unknown key)."""
    return sample_item(key, canvas)


@st.cache_data(max_entries=16, show_spinner=False)
def get_upload(data: bytes) -> ImageItem:
    """A decoded upload (raises `refiner.image_input.ImageInputError`)."""
    return upload_item(data)


@st.cache_resource(show_spinner=False)
def map_store() -> MapStore[ModelView]:
    """The one per-process store of captured views (`app.map_store`), bounded by ``$REFINER_APP_MAP_BUDGET_MB``."""
    return MapStore(budget_from_env())


def _item(image_key: str, upload: Optional[bytes], canvas: str) -> ImageItem:
    return get_upload(upload) if upload is not None else get_sample(image_key, canvas)


def get_view(source: str, image_key: str, upload: Optional[bytes], canvas: str, with_metrics: bool = False
             ) -> ModelView:
    """Captured maps of one model on one image: the forward pass runs once per (model, image) while the view
    is in the byte-bounded store; every session reads the same read-only arrays (no pickled copy).

    The image is named by its key (and, for uploads, its bytes, which are also what the key hashes), so
    changing the layer, head or query token never reaches the model again. A large view holds float16 display
    maps (`analysis.compare_view.capture_view`); captured ``with_metrics`` (for the Analysis page) it also keeps
    the default metrics computed from the float32 maps. The flag is not part of the key: a view captured for the
    Compare page serves the Analysis page too, whose metrics then come from a float32 capture (`exact_view`).
    """
    def compute() -> ModelView:
        item = _item(image_key, upload, canvas)
        model = get_model(source)
        with st.spinner("Running the model..."), _CAPTURE, map_store().reserving(
                capture_reserve_bytes(model, with_metrics)):
            view = capture_view(model, item.image, box=item.box,
                                metric_settings=(MetricSettings(),) if with_metrics else ())
        _remember_map_bytes(source, view)
        return view

    # An upload's key is the hash of its bytes, so the bytes themselves need not be part of the store's key.
    return map_store().get((source, image_key, canvas), compute)


def get_metrics(source: str, image_key: str, upload: Optional[bytes], canvas: str, settings: MetricSettings,
                box: Optional[Sequence[float]]) -> Dict[str, np.ndarray]:
    """Every metric of one model on one image, from float32 maps (`analysis.compare_view.view_metrics`).

    A float32 view computes them from its maps, a float16 view returns those it kept from its capture. A float16
    view kept without them (captured for the Compare page) is captured again with the default metrics and replaces
    the kept one, so they are computed once; other settings run the model again in float32 and compute them from
    that capture, not kept. Either capture runs in the capture slot and memory reservation of a capture, and no
    reference to the float16 view is held meanwhile: evicted to make room, it must really be freed (1.3 GB at
    N = 785, which would otherwise be alive outside the budget beside the float32 capture)."""
    key = (source, image_key, canvas)
    view = get_view(source, image_key, upload, canvas, with_metrics=True)
    if view.exact or kept_metrics(view, settings, box) is not None:
        return view_metrics(view, settings, box, exact_view=_no_capture)
    item = _item(image_key, upload, canvas)
    if settings == MetricSettings():  # what a with_metrics capture keeps (for the image's own box: the page's)
        del view
        map_store().discard(key)
        view = get_view(source, image_key, upload, canvas, with_metrics=True)
        kept = kept_metrics(view, settings, box)
        if kept is not None:
            return kept
    del view
    model = get_model(source)
    with st.spinner("Running the model again in float32 for these metric settings..."), _CAPTURE, \
            map_store().reserving(capture_reserve_bytes(model, True)):
        exact = capture_view(model, item.image, precision="float32")
        return view_metrics(exact, settings, box, exact_view=_no_capture)


def _no_capture() -> ModelView:
    raise AssertionError("a float32 view or kept metrics need no new capture")


def capture_reserve_bytes(loaded: LoadedModel, with_metrics: bool) -> int:
    """The memory one capture of ``loaded`` holds at its peak (`DRAW_WORKING_FACTOR`, `METRICS_WORKING_FACTOR`):
    from the model's last capture when there was one, else from its geometry (L blocks x H heads x N^2 float32
    maps of both kinds, an upper bound); 0 for a model whose layers the capture cannot list (it fails anyway)."""
    known = _MAP_BYTES.get(loaded.info.source)
    if known is None:
        try:
            layers, _ = attention_layers(loaded.model)
        except Exception:  # noqa: BLE001 - the capture itself reports an unsupported model, in words
            return 0
        tokens = loaded.info.num_prefix_tokens + loaded.info.grid_size[0] * loaded.info.grid_size[1]
        heads = sum(int(getattr(a, "num_heads", 0) or getattr(a, "num_attention_heads", 0) or
                        getattr(getattr(a, "attention", None), "num_attention_heads", 0) or 1) for a in layers)
        one_kind = heads * tokens * tokens * 4
        known = (2 * one_kind, one_kind)
    held, one_kind = known
    return int(DRAW_WORKING_FACTOR * held + (METRICS_WORKING_FACTOR * one_kind if with_metrics else 0))


def _remember_map_bytes(source: str, view: ModelView) -> None:
    """Record the float32 bytes of the maps a capture of ``source`` records (one array when both kinds share it)."""
    one_kind = view.effective.size * 4
    _MAP_BYTES[source] = (one_kind if view.softmax is view.effective else 2 * one_kind, one_kind)
