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
from analysis.compare_view import ModelView, capture_metrics, capture_view, view_metrics
from refiner.capture_adapters import attention_layers, layer_num_heads

from .images import ImageItem, sample_item, upload_item
from .map_store import MapStore, budget_from_env
from .sources import LoadedModel, load_source

# One capture at a time per process. A capture holds its float32 maps while it runs (Refiner-ViT-L at 448 px:
# 2.5 GB, several GB with the metrics computed from them) before the view is made smaller; eight sessions
# capturing at once would hold eight times that outside the map store's budget. The captures share the same
# cores anyway, so running them one after the other costs no throughput; a session whose view is kept never waits.
_CAPTURE = threading.Lock()
# What a capture holds at its peak, beyond the model, in float32 map bytes B of the kinds it records (both for a
# refined model, one array for a vanilla one) and M of one kind. A view's capture: the captured maps, then their
# copies out of the capture (float32, or float16 for a large view: B / 2); measured on Refiner-ViT-L at 448 px
# (B = 2.52 GB, one process, VmHWM above the loaded model) a float32 capture peaks at 4.98 GB (2.0 B). The metrics'
# capture (`analysis.compare_view.capture_metrics`) holds every kind the forward records until it ends, then one
# kind as captured (no copy) and the metrics' buffers, which go through the maps one layer at a time (at most 4
# threads with about two maps of one layer each): 0.28-0.45 GB for M = 1.26 GB there
# (`benchmarks/metrics_speed.py`). The store reserves this while the capture runs (`MapStore.reserving`).
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


def get_view(source: str, image_key: str, upload: Optional[bytes], canvas: str) -> ModelView:
    """Captured maps of one model on one image: the forward pass runs once per (model, image) while the view
    is in the byte-bounded store; every session reads the same read-only arrays (no pickled copy).

    The image is named by its key (and, for uploads, its bytes, which are also what the key hashes), so
    changing the layer, head or query token never reaches the model again. A large view holds float16 display
    maps (`analysis.compare_view.capture_view`); its metrics are kept beside it (`get_metrics`).
    """
    def compute() -> ModelView:
        item = _item(image_key, upload, canvas)
        model = get_model(source)
        with st.spinner("Running the model..."), _CAPTURE, map_store().reserving(capture_reserve_bytes(model)):
            view = capture_view(model, item.image)
        _remember_map_bytes(source, view)
        return view

    # An upload's key is the hash of its bytes, so the bytes themselves need not be part of the store's key.
    return map_store().get((source, image_key, canvas), compute)


def get_metrics(source: str, image_key: str, upload: Optional[bytes], canvas: str, settings: MetricSettings,
                box: Optional[Sequence[float]]) -> Dict[str, np.ndarray]:
    """Every metric of one model on one image, always from float32 maps (`analysis.compare_view.view_metrics`).

    A float32 view kept in the store gives them from its maps (no forward). Otherwise (the view is float16, or not
    captured) they come from a float32 capture made for them (`analysis.compare_view.capture_metrics`), which keeps
    no maps; the tables are kept in the map store under their own key (model, image, settings, box: a few MB at
    N = 785), so a second visit, another session, or the same image after the Compare page costs nothing, and a
    float16 view already kept for the Compare page stays as it is. The Analysis page draws no map, so it never
    makes a display view for a large model."""
    kept = map_store().peek((source, image_key, canvas))
    if kept is not None and kept.exact:
        return view_metrics(kept, settings, box, exact_metrics=_no_capture)
    del kept  # a float16 view held here would be alive outside the budget if the capture below evicted it
    box_key = None if box is None else tuple(float(v) for v in box)

    def compute() -> Dict[str, np.ndarray]:
        item = _item(image_key, upload, canvas)
        model = get_model(source)
        with st.spinner("Computing the metrics from a float32 capture..."), _CAPTURE, \
                map_store().reserving(capture_reserve_bytes(model, for_metrics=True)):
            values = capture_metrics(model, item.image, settings, box_key)
        # Own copies: some tables are views of larger working arrays (cls_entropy of an (L, H, N) entropy table),
        # which the store would otherwise keep (and count) whole.
        return {key: np.array(value, copy=True) for key, value in values.items()}

    return dict(map_store().get(("metrics", source, image_key, canvas, settings, box_key), compute))


def _no_capture() -> Dict[str, np.ndarray]:
    raise AssertionError("a float32 view gives its metrics from its own maps")


def capture_reserve_bytes(loaded: LoadedModel, for_metrics: bool = False) -> int:
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
        heads = sum(layer_num_heads(a) or 1 for a in layers)
        one_kind = heads * tokens * tokens * 4
        known = (2 * one_kind, one_kind)
    held, one_kind = known
    if for_metrics:  # every kind the forward records, until it ends; then one kind and the metrics' buffers
        return int(max(held, (1 + METRICS_WORKING_FACTOR) * one_kind))
    return int(DRAW_WORKING_FACTOR * held)


def _remember_map_bytes(source: str, view: ModelView) -> None:
    """Record the float32 bytes of the maps a capture of ``source`` records (one array when both kinds share it)."""
    one_kind = view.effective.size * 4
    _MAP_BYTES[source] = (one_kind if view.softmax is view.effective else 2 * one_kind, one_kind)
