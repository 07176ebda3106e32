"""The sidebar shared by every page: model slots, image (sample or upload), layer, head, query token.

`render_sidebar` returns a `Context`; pages read everything from it and never touch the URL themselves.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import List, Optional, Tuple

import streamlit as st

from analysis.similarity import align_layers
from refiner import LoadedModel, ModelSourceError
from refiner.image_input import ACCEPTED_EXTENSIONS, ImageInputError

from . import cached
from .images import ImageItem, canvas_key, describe_key, sample_keys, upload_key
from .maps import ModelView, token_label
from .selection import Selection, head_value, parse_head, parse_int, url_changes
from .sources import DEFAULT_PAIR, missing_default_message, shipped_sources

UPLOAD_WIDGET = "upload"
EXTRA_SOURCES = "extra_sources"   # sources added on the Models page (short strings)
UPLOAD_ERROR = "upload_error"     # the last rejected upload's message
# The bytes of the last upload that decoded. The uploader widget holds whatever file was dropped last, also a
# rejected one; keeping the accepted bytes apart is what lets a bad upload change nothing (DESIGN section 8).
# One file per session, at most the upload size limit.
ACCEPTED_UPLOAD = "accepted_upload"


@dataclass
class Context:
    """Everything a page needs about the current selection.

    Attributes:
        selection: the selection as in the URL.
        models: (model A, model B); None where the source failed to load (see ``errors``).
        errors: messages about the selection (missing checkpoints, bad upload, ...).
        item: the current image.
        upload: the bytes of the current upload (None for samples), needed to key the caches.
    """

    selection: Selection
    models: Tuple[Optional[LoadedModel], Optional[LoadedModel]]
    errors: List[str]
    item: Optional[ImageItem]
    upload: Optional[bytes]

    @property
    def ready(self) -> bool:
        """Both models and the image are there."""
        return self.item is not None and all(m is not None for m in self.models)

    def views(self) -> Tuple[ModelView, ModelView]:
        """Captured maps of both models on the current image (cached per model and image)."""
        canvas = canvas_key(self.models[0].data if self.models[0] else None)
        return tuple(cached.get_view(m.source, self.selection.img, self.upload, canvas)  # type: ignore[return-value]
                     for m in self.models)

    def layers(self, views: Tuple[ModelView, ModelView]) -> Tuple[int, int]:
        """0-based layer of A and of B at the same relative depth."""
        layer_a = self.selection.layer - 1
        return layer_a, int(align_layers(views[0].depth, views[1].depth)[layer_a])

    @property
    def head(self):
        """Head choice: int index or "mean"/"max"."""
        return head_value(self.selection.head)


def _init_from_url(key: str, value: object) -> None:
    """Seed a widget's state once per session (URL first), then let the widget own it."""
    if key not in st.session_state:
        st.session_state[key] = value


def _on_upload() -> None:
    """Accept a new upload only if it decodes; otherwise keep the current image and remember why."""
    uploaded = st.session_state.get(UPLOAD_WIDGET)
    st.session_state[UPLOAD_ERROR] = ""
    if uploaded is None:
        # Replacing the file fires a change with no file before the new one arrives, so an empty uploader
        # must not drop the accepted image: it stays in the Image picker until another upload decodes.
        return
    data = uploaded.getvalue()
    try:
        cached.get_upload(data)
    except ImageInputError as error:
        st.session_state[UPLOAD_ERROR] = f"{uploaded.name}: {error}"
        return
    st.session_state[ACCEPTED_UPLOAD] = data
    st.session_state["img"] = upload_key(data)


def _load(source: str, errors: List[str]) -> Optional[LoadedModel]:
    try:
        return cached.get_model(source)
    except ModelSourceError as error:
        errors.append(f"Model {source!r}: {error}")
        return None


def _current_upload() -> Optional[bytes]:
    """The last upload that decoded (a later rejected one does not replace it)."""
    return st.session_state.get(ACCEPTED_UPLOAD)


def render_sidebar() -> Context:
    """Draw the shared selection widgets and return the page context."""
    params = st.query_params
    errors: List[str] = []
    shipped = shipped_sources()
    default_a, default_b = (DEFAULT_PAIR if set(DEFAULT_PAIR) <= set(shipped)
                            else (shipped[0], shipped[-1]) if shipped else ("", ""))
    _init_from_url("a", params.get("a", default_a))
    _init_from_url("b", params.get("b", default_b))
    _init_from_url("img", params.get("img", sample_keys()[0]))
    extra = list(st.session_state.get(EXTRA_SOURCES, []))
    options = list(dict.fromkeys(shipped + extra + [st.session_state["a"], st.session_state["b"]]))
    options = [o for o in options if o]
    sidebar = st.sidebar
    if not shipped and (message := missing_default_message()):
        errors.append(message)
    if not options:
        return Context(Selection("", "", st.session_state["img"]), (None, None), errors, None, None)

    sidebar.selectbox("Model A", options, key="a", help="Left slot (vanilla by default).")
    sidebar.selectbox("Model B", options, key="b", help="Right slot (refined by default).")
    models = (_load(st.session_state["a"], errors), _load(st.session_state["b"], errors))

    sidebar.file_uploader("Upload an image", type=list(ACCEPTED_EXTENSIONS), key=UPLOAD_WIDGET,
                          on_change=_on_upload, help="JPEG, PNG, WebP, BMP, GIF (first frame) or TIFF, up to 20 MB.")
    if st.session_state.get(UPLOAD_ERROR):
        sidebar.error(st.session_state[UPLOAD_ERROR])
    upload = _current_upload()
    image_options = sample_keys()
    if upload is not None and upload_key(upload) not in image_options:
        image_options = [upload_key(upload)] + image_options
    if st.session_state["img"] not in image_options:
        if str(st.session_state["img"]).startswith("upload:"):
            errors.append("The image in this link was an upload that this session does not have; upload it "
                          "again. Showing a sample meanwhile.")
        st.session_state["img"] = image_options[0]
    sidebar.selectbox("Image", image_options, key="img", format_func=describe_key)
    img = st.session_state["img"]
    item_upload = upload if img.startswith("upload:") and upload is not None and upload_key(upload) == img else None
    canvas = canvas_key(models[0].data if models[0] else None)
    item = cached.get_upload(item_upload) if item_upload is not None else cached.get_sample(img, canvas)
    if item.notes:
        sidebar.caption("Upload: " + "; ".join(item.notes))

    layer, head, query = 1, "mean", 0
    if models[0] is not None and models[1] is not None:
        view_a = cached.get_view(models[0].source, img, item_upload, canvas)
        _init_from_url("layer", parse_int(params.get("layer"), view_a.depth, 1, view_a.depth))
        st.session_state["layer"] = min(max(int(st.session_state["layer"]), 1), view_a.depth)
        layer = sidebar.slider("Layer (model A; B follows by relative depth)", 1, view_a.depth, key="layer")
        heads = min(view_a.num_heads, cached.get_view(models[1].source, img, item_upload, canvas).num_heads)
        head_options = ["mean", "max"] + [str(h) for h in range(heads)]
        _init_from_url("head", parse_head(params.get("head"), heads))
        if st.session_state["head"] not in head_options:
            st.session_state["head"] = "mean"
        head = sidebar.selectbox("Head", head_options, key="head",
                                 format_func=lambda h: f"{h} over heads" if h in ("mean", "max") else f"head {h}")
        tokens = view_a.num_prefix_tokens + view_a.grid[0] * view_a.grid[1]
        _init_from_url("q", parse_int(params.get("q"), 0, 0, tokens - 1))
        st.session_state["q"] = min(max(int(st.session_state["q"]), 0), tokens - 1)
        query = sidebar.selectbox("Query token (or click a patch)", list(range(tokens)), key="q",
                                  format_func=lambda t: token_label(t, view_a.num_prefix_tokens, view_a.grid,
                                                                    view_a.class_token_index))
    selection = Selection(a=st.session_state["a"], b=st.session_state["b"], img=img, layer=int(layer),
                          head=str(head), q=int(query))
    changes = url_changes(st.query_params.to_dict(), selection)
    if changes:
        st.query_params.from_dict(changes)
    return Context(selection=selection, models=models, errors=errors, item=item, upload=item_upload)


# Set by app.main before the page script runs, read by the page script; one value per script-run thread,
# so concurrent sessions never see each other's context.
_CONTEXT: ContextVar[Context] = ContextVar("refiner_app_context")


def set_context(ctx: Context) -> None:
    """Hand the sidebar's context to the page script of this run."""
    _CONTEXT.set(ctx)


def current_context() -> Context:
    """The context of this run (set by `app.main`)."""
    return _CONTEXT.get()


def show_context_errors() -> None:
    """Show the selection's problems (missing checkpoints, lost upload) at the top of the page."""
    for error in current_context().errors:
        st.warning(error)
