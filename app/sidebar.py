"""The sidebar shared by every page: model slots, image (sample or upload), layer, head, query token.

`render_sidebar` returns a `Context`; pages read everything from it and never touch the URL themselves.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import streamlit as st

from analysis.compare_view import ModelView, model_geometry, token_label
from analysis.inputs import enlarged_notes
from analysis.similarity import align_layers
from refiner import LoadedModel, ModelSourceError
from refiner.image_input import ACCEPTED_EXTENSIONS, ImageInputError

from . import cached
from .images import ImageItem, canvas_key, describe_key, sample_keys, test_canvas_count, upload_key
from .selection import (COMPARE_TABS, DEFAULT_OPACITY, MAP_KINDS, ROLLOUT_FUSIONS, Selection, head_value, parse_choice,
                        parse_flag, parse_head, parse_int, parse_opacity, parse_tab, url_changes)
from .sources import DEFAULT_PAIR, missing_default_message, shipped_sources

UPLOAD_WIDGET = "upload"
EXTRA_SOURCES = "extra_sources"   # sources added on the Models page (short strings)
UPLOAD_ERROR = "upload_error"     # the last rejected upload's message
# The uploads of this session that decoded: image key -> (file name, bytes), oldest first. The uploader widget
# holds whatever file was dropped last, also a rejected one; keeping the accepted files apart is what lets a
# bad upload change nothing (DESIGN section 8) and lets the user switch between several uploads.
UPLOADS = "uploads"
MAX_UPLOADS = 6                   # per session, each at most the upload size limit
LAST_URL = "last_url"             # the query parameters this session wrote last (to tell Back/Forward apart)


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

    def layers(self) -> Tuple[int, int]:
        """0-based layer of A and of B at the same relative depth."""
        layer_a = self.selection.layer - 1
        depths = [model_geometry(m).depth for m in self.models]
        return layer_a, int(align_layers(depths[0], depths[1])[layer_a])

    @property
    def head(self):
        """Head choice: int index or "mean"/"max"."""
        return head_value(self.selection.head)


def _url_value(key: str, params: Mapping[str, str], last: Optional[Mapping[str, str]]) -> Optional[str]:
    """The URL's value of ``key`` when it must set the widget, else None.

    It must on the session's first run (a shared link) and when the browser changed the URL since this
    session last wrote it (Back/Forward, an edited address); otherwise the widget owns the value.
    """
    value = params.get(key)
    if value is None or (last is not None and last.get(key) == value):
        return None
    return value


def _seed(key: str, url_key: str, params: Mapping[str, str], last: Optional[Mapping[str, str]],
          parse: Callable[[str], Any], default: Any) -> None:
    """Set widget state ``key`` from URL parameter ``url_key`` when the URL says so (`_url_value`), else keep it.

    A page's own widget (opacity, map kind, ...) loses its state while another page is shown (Streamlit drops
    the state of widgets not drawn in a run); it comes back from what this session last wrote to the URL, so
    switching pages keeps every option. ``default`` is for a new session whose link does not say.
    """
    text = _url_value(url_key, params, last)
    if text is not None:
        st.session_state[key] = parse(text)
    elif key not in st.session_state:
        st.session_state[key] = parse(last[url_key]) if last and url_key in last else default


def _on_upload() -> None:
    """Accept a new upload only if it decodes; otherwise keep the current image and remember why."""
    uploaded = st.session_state.get(UPLOAD_WIDGET)
    st.session_state[UPLOAD_ERROR] = ""
    if uploaded is None:
        # Replacing the file fires a change with no file before the new one arrives, so an empty uploader
        # must not drop the accepted images: they stay in the Image picker.
        return
    data = uploaded.getvalue()
    try:
        cached.get_upload(data)
    except ImageInputError as error:
        st.session_state[UPLOAD_ERROR] = f"{uploaded.name}: {error}"
        return
    key = upload_key(data)
    uploads = dict(st.session_state.get(UPLOADS) or {})
    uploads.pop(key, None)
    uploads[key] = (uploaded.name, data)
    while len(uploads) > MAX_UPLOADS:  # the oldest goes; the new one is the current image
        uploads.pop(next(iter(uploads)))
    st.session_state[UPLOADS] = uploads
    st.session_state["img"] = key


def _load(source: str, errors: List[str]) -> Optional[LoadedModel]:
    try:
        return cached.get_model(source)
    except ModelSourceError as error:
        errors.append(f"Model {source!r}: {error}")
        return None


def _uploads() -> Dict[str, Tuple[str, bytes]]:
    """This session's accepted uploads: key -> (file name, bytes)."""
    return dict(st.session_state.get(UPLOADS) or {})


def render_sidebar() -> Context:
    """Draw the shared selection widgets and return the page context. Nothing here runs a model: the layer, head and
    query pickers take the models' geometry (`analysis.compare_view.model_geometry`), so only a page that draws
    maps captures them."""
    params = st.query_params.to_dict()
    last = st.session_state.get(LAST_URL)
    errors: List[str] = []
    shipped = shipped_sources()
    default_a, default_b = (DEFAULT_PAIR if set(DEFAULT_PAIR) <= set(shipped)
                            else (shipped[0], shipped[-1]) if shipped else ("", ""))
    _seed("a", "a", params, last, str, default_a)
    _seed("b", "b", params, last, str, default_b)
    _seed("img", "img", params, last, str, "digit:0")
    _seed("kind", "kind", params, last, lambda t: parse_choice(t, MAP_KINDS, MAP_KINDS[0]), MAP_KINDS[0])
    _seed("compare-tab", "tab", params, last, parse_tab, COMPARE_TABS[0])
    _seed("opacity", "opacity", params, last, parse_opacity, DEFAULT_OPACITY)
    _seed("shared", "shared", params, last, parse_flag, False)
    _seed("an-fusion", "fusion", params, last, lambda t: parse_choice(t, ROLLOUT_FUSIONS, ROLLOUT_FUSIONS[0]),
          ROLLOUT_FUSIONS[0])
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
    canvas = canvas_key(models[0].data if models[0] else None)

    types = ", ".join(t.upper() for t in ACCEPTED_EXTENSIONS)
    # No type filter in the uploader: Streamlit's own refusal ("application/pdf files are not allowed") does not
    # say what is accepted; `_on_upload` refuses any file that is not an image in words that do, and keeps the
    # current image.
    sidebar.file_uploader("Upload an image", type=None, key=UPLOAD_WIDGET,
                          on_change=_on_upload,
                          help=f"Accepted types: {types} (GIF: first frame), up to 20 MB. Each upload is added to "
                               "the Image picker, so you can switch between them.")
    if st.session_state.get(UPLOAD_ERROR):
        sidebar.error(st.session_state[UPLOAD_ERROR])
    uploads = _uploads()
    image_options = list(reversed(list(uploads))) + sample_keys(canvas)
    if st.session_state["img"] not in image_options:
        if str(st.session_state["img"]).startswith("upload:"):
            errors.append("The image in this link was an upload that this session does not have; upload it "
                          "again. Showing a sample meanwhile.")
        else:
            errors.append(f"There is no image {st.session_state['img']!r} (test canvases are digit:0 to "
                          f"digit:{test_canvas_count(canvas) - 1}); showing a sample meanwhile.")
        st.session_state["img"] = image_options[0]
    # Upload names bound now, not read from the session when the label is drawn (AppTest formats labels
    # outside the session, where this session's uploads are not visible).
    names = {k: name for k, (name, _) in uploads.items()}
    sidebar.selectbox("Image", image_options, key="img", format_func=lambda k: describe_key(k, names),
                      help="Test canvases of the models' dataset (type a number to find one), sample photos, and "
                           "this session's uploads.")
    img = st.session_state["img"]
    item_upload = uploads[img][1] if img in uploads else None
    item = cached.get_upload(item_upload) if item_upload is not None else cached.get_sample(img, canvas)
    if item.notes:
        sidebar.caption("Upload: " + "; ".join(item.notes))
    # Tiny images are enlarged, never refused (one rule); the notes name the slots they apply to.
    for note in enlarged_notes({"AB"[i]: m.info for i, m in enumerate(models) if m is not None}, item.image.size):
        sidebar.warning(note)

    layer, head, query = 1, "mean", 0
    if models[0] is not None and models[1] is not None:
        geometry_a, geometry_b = model_geometry(models[0]), model_geometry(models[1])
        depth = geometry_a.depth
        _seed("layer", "layer", params, last, lambda t: parse_int(t, depth, 1, depth), depth)
        st.session_state["layer"] = min(max(int(st.session_state["layer"]), 1), depth)
        layer = sidebar.slider("Layer (model A; B follows by relative depth)", 1, depth, key="layer")
        heads = min(geometry_a.num_heads, geometry_b.num_heads)
        head_options = ["mean", "max"] + [str(h) for h in range(heads)]
        _seed("head", "head", params, last, lambda t: parse_head(t, heads), "mean")
        if st.session_state["head"] not in head_options:
            st.session_state["head"] = "mean"
        head = sidebar.selectbox("Head", head_options, key="head",
                                 format_func=lambda h: f"{h} over heads" if h in ("mean", "max") else f"head {h}")
        # The format function is kept by the session with the widget: it holds these small values, never a view
        # (whose maps would then stay alive after the map store dropped them, outside its budget).
        prefix, grid, cls = geometry_a.num_prefix_tokens, geometry_a.grid, geometry_a.class_token_index
        tokens = prefix + grid[0] * grid[1]
        _seed("q", "q", params, last, lambda t: parse_int(t, 0, 0, tokens - 1), 0)
        st.session_state["q"] = min(max(int(st.session_state["q"]), 0), tokens - 1)
        query = sidebar.selectbox("Query token (or click a patch)", list(range(tokens)), key="q",
                                  format_func=lambda t: token_label(t, prefix, grid, cls))
    state = st.session_state
    selection = Selection(a=state["a"], b=state["b"], img=img, layer=int(layer), head=str(head), q=int(query),
                          kind=str(state["kind"]), tab=str(state["compare-tab"]), opacity=float(state["opacity"]),
                          shared=bool(state["shared"]), fusion=str(state["an-fusion"]))
    changes = url_changes(params, selection)
    if changes:
        st.query_params.from_dict(changes)
    st.session_state[LAST_URL] = selection.to_url()
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
