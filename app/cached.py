"""The app's caches: models once per process, captured maps in one byte-bounded store, all read-only.

Several browser sessions share these caches; nothing in them is ever mutated (models are frozen in eval
mode; the maps of `app.map_store` are read-only arrays shared without copies; images are returned as copies
by ``st.cache_data``), and every cache is bounded (entries for images, bytes for maps) so memory stays
bounded however many images are looked at.
"""

from __future__ import annotations

from typing import Optional

import streamlit as st

from analysis.compare_view import ModelView

from .images import ImageItem, sample_item, upload_item
from .map_store import MapStore, budget_from_env
from analysis.compare_view import capture_view
from .sources import LoadedModel, load_source


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


def get_view(source: str, image_key: str, upload: Optional[bytes], canvas: str) -> ModelView:
    """Captured maps of one model on one image: the forward pass runs once per (model, image) while the view
    is in the byte-bounded store; every session reads the same read-only arrays (no pickled copy).

    The image is named by its key (and, for uploads, its bytes, which are also what the key hashes), so
    changing the layer, head or query token never reaches the model again.
    """
    def compute() -> ModelView:
        item = get_upload(upload) if upload is not None else get_sample(image_key, canvas)
        with st.spinner("Running the model..."):
            return capture_view(get_model(source), item.image)

    # An upload's key is the hash of its bytes, so the bytes themselves need not be part of the store's key.
    return map_store().get((source, image_key, canvas), compute)
