"""Every page of the app under streamlit.testing.AppTest, with its main interactions."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app.charts import plotly_bundle
from app.images import canvas_key, sample_item, upload_key
from app.launch import SERVE, streamlit_command
from analysis.compare_view import map_query, patch_token, token_label
from app.selection import Selection, parse_head, parse_int, url_changes
from analysis.view_figures import PATCH_TRACE, attention_overlay
from app.views import clicked_patch

APP = str(Path(__file__).resolve().parents[2] / "app" / "main.py")

TIMEOUT = 180


def start(params: dict | None = None, page: str | None = None) -> AppTest:
    """A new session run once, on the default page or straight on ``page`` (e.g. "entries/analysis.py")."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in (params or {}).items():
        at.query_params[key] = value
    if page is not None:
        at.switch_page(page)
    return at.run()


def charts(at: AppTest) -> Dict[str, dict]:
    """{key: plotly figure as the browser receives it} of every chart the last run drew (`app.charts.show_chart`)."""
    drawn = {}
    for element in at.get("bidi_component"):
        if element.proto.component_name == "refiner_chart":
            data = json.loads(element.proto.json)
            if not data.get("preload"):  # `app.charts.preload_plotly`'s element draws nothing
                drawn[_user_key(element.proto.id)] = dict(json.loads(data["figure"]), _data=data)
    return drawn


def preloads(at: AppTest) -> List[str]:
    """The plotly.js URLs the last run asked the browser to load before any chart (`app.charts.preload_plotly`)."""
    return [json.loads(e.proto.json)["plotlyUrl"] for e in at.get("bidi_component")
            if e.proto.component_name == "refiner_chart" and json.loads(e.proto.json).get("preload")]


def _user_key(element_id: str) -> str:
    # Element ids are "$$ID-<hash>-<user key>".
    return element_id.split("-", 2)[2]


def no_exceptions(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_compare_defaults_to_the_pair_and_writes_the_url(app_env: Path) -> None:
    at = start()
    no_exceptions(at)
    assert at.title[0].value == "Compare attention"
    assert at.sidebar.selectbox(key="a").value == "vanilla" and at.sidebar.selectbox(key="b").value == "refined"
    assert at.query_params["a"] == ["vanilla"] or at.query_params["a"] == "vanilla"
    assert {"click-a", "click-b", "top5-0", "top5-1"} <= set(charts(at))  # both overlays and top-5 charts


def test_url_restores_the_selection_and_widgets_update_it(app_env: Path) -> None:
    at = start({"layer": "3", "head": "1", "q": "10", "img": "digit:4"})
    no_exceptions(at)
    assert at.sidebar.slider(key="layer").value == 3
    assert at.sidebar.selectbox(key="head").value == "1"
    assert at.sidebar.selectbox(key="q").value == 10
    at.sidebar.slider(key="layer").set_value(5).run()
    at.sidebar.selectbox(key="head").set_value("max").run()
    at.sidebar.selectbox(key="q").set_value(0).run()
    no_exceptions(at)
    params = {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert params["layer"] == "5" and params["head"] == "max" and params["q"] == "0"


def test_bad_url_values_fall_back(app_env: Path) -> None:
    at = start({"layer": "99", "head": "bogus", "q": "-4", "img": "upload:deadbeef"})
    no_exceptions(at)
    assert at.sidebar.slider(key="layer").value == 8
    assert at.sidebar.selectbox(key="head").value == "mean"
    assert at.sidebar.selectbox(key="q").value == 0
    assert any("upload" in w.value for w in at.warning)


def test_display_options_redraw(app_env: Path) -> None:
    at = start()
    at.slider(key="opacity").set_value(0.3).run()
    at.radio(key="kind").set_value("softmax").run()
    no_exceptions(at)


def test_missing_checkpoints_give_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFINER_APP_CHECKPOINTS", str(tmp_path / "nothing"))
    at = start()
    no_exceptions(at)
    assert any("were not found" in w.value for w in at.warning)


def test_analysis_page(app_env: Path) -> None:
    at = start()
    at.switch_page("entries/analysis.py").run()
    no_exceptions(at)
    assert at.title[0].value == "Analysis of the current image"
    assert len(at.dataframe) >= 2  # per-layer table and the localisation table of a dataset canvas


def test_dataset_page_runs_with_progress(app_env: Path) -> None:
    at = start()
    at.switch_page("entries/dataset.py").run()
    at.slider(key="ds-count").set_value(10).run()
    at.button(key="ds-run").click().run()
    no_exceptions(at)
    table = at.dataframe[0].value
    assert {"model", "metric", "layer", "mean", "ci_low", "ci_high", "p_value"} <= set(table.columns)
    assert set(table["model"]) == {"vanilla", "refined", "refined - vanilla"}  # the CLI's dataset_metrics table
    assert (table.loc[table["metric"] == "accuracy", "n"] == 10).all()


def test_models_page_cards_and_bad_directory(app_env: Path, tmp_path: Path) -> None:
    at = start()
    at.switch_page("entries/models.py").run()
    no_exceptions(at)
    assert any(s.value == "vanilla" for s in at.subheader) and any(s.value == "refined" for s in at.subheader)
    at.text_input[0].set_value(str(tmp_path))  # a form submits its fields with the button, in one run
    at.button[0].click().run()
    assert any("not a model folder" in e.value and "config.json" in e.value for e in at.error)
    before = list(at.sidebar.selectbox(key="a").options)
    at.run()
    assert list(at.sidebar.selectbox(key="a").options) == before  # a refused source changes nothing


def test_models_page_loads_a_directory(app_env: Path) -> None:
    at = start()
    at.switch_page("entries/models.py").run()
    at.text_input[0].set_value(str(app_env / "refined"))
    at.button[0].click().run()
    no_exceptions(at)
    assert any(f"Loaded {app_env / 'refined'}" in s.value for s in at.success)
    at.run()  # the sidebar was drawn before the page loaded the model; the next run offers it
    assert str(app_env / "refined") in at.sidebar.selectbox(key="a").options


def test_models_page_takes_a_random_weights_name_and_refuses_a_bad_one(app_env: Path) -> None:
    at = start()
    at.switch_page("entries/models.py").run()
    at.text_input[0].set_value("random:vit_micro_patch4_32")
    at.button[0].click().run()
    no_exceptions(at)
    assert any("Loaded random:vit_micro_patch4_32" in s.value for s in at.success)
    at.text_input[0].set_value("vit_micro_patch4_3")
    at.button[0].click().run()
    assert any("did you mean" in e.value for e in at.error)


# Pure helpers behind the pages.

def test_selection_helpers() -> None:
    assert parse_int("7", 1, 1, 5) == 5 and parse_int("x", 2, 1, 5) == 2 and parse_int("-3", 2, 0, 5) == 0
    assert parse_head("2", 4) == "2" and parse_head("9", 4) == "mean" and parse_head("max", 4) == "max"
    selection = Selection(a="vanilla", b="refined", img="digit:0", layer=2, head="mean", q=3)
    assert url_changes(selection.to_url(), selection) == {}
    assert url_changes({}, selection)["layer"] == "2"


def test_token_helpers() -> None:
    assert token_label(0, 1, (8, 8)) == "CLS" and token_label(10, 1, (8, 8)) == "patch (1, 1)"
    assert patch_token(1, 1, 1, (8, 8)) == 10
    with pytest.raises(IndexError):
        patch_token(8, 0, 1, (8, 8))

    class View:  # only the geometry map_query reads
        def __init__(self, prefix: int, grid: tuple) -> None:
            self.num_prefix_tokens, self.grid = prefix, grid
    assert map_query(0, View(1, (8, 8)), View(1, (4, 4))) == 0
    assert map_query(1 + 7 * 8 + 7, View(1, (8, 8)), View(1, (4, 4))) == 1 + 15


def test_clicked_patch_reads_the_cell_of_the_overlay_heatmap() -> None:
    picture = np.zeros((48, 48, 3), np.uint8)
    fig = attention_overlay(picture, np.random.default_rng(0).random((8, 8)), (6, 6), 0.5, "t")
    cells = fig.data[PATCH_TRACE]
    assert cells.type == "heatmap" and np.asarray(cells.z).shape == (8, 8) and cells.text[3][5] == "patch (3, 5)"
    assert (cells.x0, cells.dx, cells.y0, cells.dy) == (2.5, 6, 2.5, 6)  # cell (3, 5) covers that patch's pixels
    # What the chart element sends for a click on the cell of patch (3, 5).
    point = {"curve_number": PATCH_TRACE, "point_index": [3, 5], "point_number": [3, 5]}
    assert clicked_patch(point, (8, 8)) == (3, 5)
    assert clicked_patch(dict(point, curve_number=0), (8, 8)) is None   # the picture, not the heatmap
    assert clicked_patch(dict(point, point_index=[8, 0]), (8, 8)) is None
    assert clicked_patch(dict(point, point_index=27), (8, 8)) is None
    assert clicked_patch({"curve_number": PATCH_TRACE}, (8, 8)) is None


def test_upload_key_is_content_addressed() -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, "PNG")
    assert upload_key(buffer.getvalue()) == upload_key(bytes(buffer.getvalue()))
    assert upload_key(buffer.getvalue()) != upload_key(buffer.getvalue() + b"x")


def test_digit_samples_are_canvases_of_model_as_own_test_set(pair_dir: Path) -> None:
    import refiner
    from refiner.data import ClutteredMNIST
    data = refiner.load_model(str(pair_dir / "vanilla")).info.data
    item = sample_item("digit:5", canvas_key(data))
    # Same geometry as the recorded options: the same canvas as test item 5 of that set (48 px, near-centred).
    recorded = data["dataset_options"]
    assert recorded["canvas_size"] == 48 and recorded["max_shift"] == 4  # the conftest pair's record
    canvas, label, box = ClutteredMNIST("test", **{k: v for k, v in recorded.items() if k != "seed"})[5]
    assert item.image.size == (48, 48) and item.label == label and item.box == tuple(box.tolist())
    assert np.array_equal(np.asarray(item.image)[..., 0], (canvas[0].numpy() * 255).round().astype(np.uint8))
    # A model trained on something else: the default geometry at its own input size.
    other = sample_item("digit:5", canvas_key({"dataset": "imagefolder", "img_size": [224, 224]}))
    assert other.image.size == (224, 224)


def test_launch_command() -> None:
    command = streamlit_command(port=8765)
    assert command[1:3] == [str(SERVE), "run"] and "8765" in command
    assert command[command.index("--server.headless") + 1] == "true"


def test_url_sources_of_other_kinds_and_geometries(app_env: Path) -> None:
    """A model from a name with random weights (RGB, 32 px) beside the grey 48 px digit model: each gets its own
    input, every page draws, and a source that cannot load is a message on the page, not a crash."""
    at = start({"a": "vanilla", "b": "random:vit_micro_patch4_32", "q": "0"})
    no_exceptions(at)
    assert at.sidebar.selectbox(key="b").value == "random:vit_micro_patch4_32"
    for page in ("entries/analysis.py", "entries/models.py"):
        at.switch_page(page).run()
        no_exceptions(at)
    at.switch_page("entries/dataset.py").run()
    at.slider(key="ds-count").set_value(10).run()
    at.button(key="ds-run").click().run()  # the canvases fit A; B gets each one through its own transform
    no_exceptions(at)
    assert set(at.dataframe[0].value["model"]) == {"vanilla", "vit_micro_patch4_32", "vit_micro_patch4_32 - vanilla"}
    at = start({"a": "vanilla", "b": "no_such_model_xyz"})
    no_exceptions(at)
    assert any("neither a file or folder nor a model name" in w.value for w in at.warning)


def test_token_labels_without_a_class_token() -> None:
    assert token_label(0, 1, (2, 2)) == "CLS"
    assert token_label(0, 4, (2, 2), class_token_index=None) == "prefix 0"
    assert token_label(5, 4, (2, 2), class_token_index=None) == "patch (0, 1)"


# Bugs found by trying the app as a researcher (issue 11); each test failed before its fix.

def test_dataset_page_runs_twice_and_in_a_second_session(app_env: Path) -> None:
    for _session in range(2):
        at = start()
        at.switch_page("entries/dataset.py").run()
        at.slider(key="ds-count").set_value(10).run()
        for _click in range(2):  # the same settings again: served from the cache, drawn without a replay error
            at.button(key="ds-run").click().run()
            no_exceptions(at)
            assert at.dataframe and len(at.dataframe[0].value) > 0
        assert at.slider(key="ds-count").proto.max == 1000  # the whole 1,000-canvas test set can be run


def test_charts_are_drawn_as_exported_and_redrawn_in_place(app_env: Path) -> None:
    at = start()
    drawn = charts(at)
    overlay = drawn["click-a"]
    # The figure goes to plotly.js untouched (no Streamlit theme): Inferno starts at black, as in the exports.
    heatmap = next(t for t in overlay["data"] if t["type"] == "heatmap")
    assert heatmap["colorscale"][0][1] in ("rgb(0,0,4)", "rgb(0, 0, 4)", "#000004")
    assert overlay["_data"]["clickable"] and not drawn["top5-0"]["_data"]["clickable"]
    # Every chart of the app is cartesian: all are drawn by the cartesian bundle, the one the page preloads.
    assert {c["_data"]["plotlyUrl"] for c in drawn.values()} == set(preloads(at))
    # (the cartesian one while it is the version plotly.py writes for: tests/app/test_charts.py)
    assert preloads(at)[0].endswith("/" + plotly_bundle().name)
    # A layer change keeps every element's key (so the browser diffs into the same plot node) and changes the
    # overlay's revision; the top-5 bars do not depend on the layer and keep theirs.
    at.sidebar.slider(key="layer").set_value(2).run()
    no_exceptions(at)
    again = charts(at)
    assert set(again) == set(drawn)
    assert again["click-a"]["_data"]["revision"] != overlay["_data"]["revision"]
    assert again["top5-0"]["_data"]["revision"] == drawn["top5-0"]["_data"]["revision"]
    at.switch_page("entries/analysis.py").run()
    no_exceptions(at)
    assert charts(at)


def test_analysis_table_has_every_layer(app_env: Path) -> None:
    at = start()
    at.switch_page("entries/analysis.py").run()
    table = at.dataframe[0].value
    for _model, rows in table.groupby("model"):
        assert rows["layer"].tolist() == list(range(1, 9))  # the conftest pair has 8 blocks
        np.testing.assert_allclose(rows["relative_depth"], np.arange(1, 9) / 8)


def _params(at: AppTest) -> dict:
    return {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}


def test_url_restores_the_whole_view(app_env: Path) -> None:
    at = start({"img": "digit:123", "kind": "softmax", "tab": "matrix", "opacity": "0.35", "shared": "1",
                "fusion": "max", "layer": "2"})
    no_exceptions(at)
    assert at.sidebar.selectbox(key="img").value == "digit:123"  # any of the 1,000 test canvases
    assert at.radio(key="kind").value == "softmax" and at.checkbox(key="shared").value is True
    assert at.slider(key="opacity").value == 0.35
    assert at.session_state["compare-tab"] == "N x N matrix"
    assert "matrix-0" in charts(at)
    assert _params(at)["tab"] == "matrix" and _params(at)["kind"] == "softmax"
    # The options survive a visit to another page, and the Analysis page takes the rollout fusion from the URL.
    at.switch_page("entries/analysis.py").run()
    assert at.selectbox(key="an-fusion").value == "max"
    at.switch_page("entries/compare.py").run()
    no_exceptions(at)
    assert at.radio(key="kind").value == "softmax" and at.slider(key="opacity").value == 0.35


def test_changed_url_sets_the_widgets_like_the_back_button(app_env: Path) -> None:
    at = start()
    at.sidebar.slider(key="layer").set_value(3).run()
    assert _params(at)["layer"] == "3"
    at.query_params["layer"] = "5"   # the browser went back to (or was given) a URL with another layer
    at.query_params["kind"] = "softmax"
    at.run()
    no_exceptions(at)
    assert at.sidebar.slider(key="layer").value == 5 and at.radio(key="kind").value == "softmax"
    at.sidebar.slider(key="layer").set_value(6).run()  # and the widgets own the value again afterwards
    assert at.sidebar.slider(key="layer").value == 6 and _params(at)["layer"] == "6"


def test_an_unknown_image_in_the_url_says_so(app_env: Path) -> None:
    at = start({"img": "digit:5000"})
    no_exceptions(at)
    assert any("digit:0 to digit:999" in w.value for w in at.warning)


def test_predictions_say_what_the_model_knows(app_env: Path) -> None:
    at = start({"img": "photo:astronaut"})
    no_exceptions(at)
    captions = " ".join(c.value for c in at.caption)
    assert "Trained on cluttered-mnist (48 px canvases" in captions and "input 48 x 48 px, grey" in captions
    assert "10 classes: 0, 1" in captions
    assert any("far from its training data" in w.value for w in at.warning)
    at = start({"img": "digit:2"})
    assert not any("far from" in w.value for w in at.warning)


def _png_bytes(size: tuple, color: tuple) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def test_uploads_keep_their_names_and_can_be_switched(app_env: Path) -> None:
    from app.images import describe_key
    from app.sidebar import UPLOADS

    first, second = _png_bytes((60, 50), (10, 20, 30)), _png_bytes((64, 64), (200, 100, 0))
    at = start()
    # What the uploader callback stores (AppTest cannot drive st.file_uploader): two accepted uploads.
    at.session_state[UPLOADS] = {upload_key(first): ("cat.png", first), upload_key(second): ("dog.png", second)}
    at.run()
    no_exceptions(at)
    picker = at.sidebar.selectbox(key="img")
    assert picker.options[:2] == ["Upload: dog.png", "Upload: cat.png"]  # newest first
    picker.select_index(1).run()
    no_exceptions(at)
    assert _params(at)["img"] == upload_key(first)
    assert describe_key(upload_key(first), {upload_key(first): "cat.png"}) == "Upload: cat.png"


def test_an_image_smaller_than_a_patch_is_enlarged_with_a_note(app_env: Path) -> None:
    """Issue 11 bug 2: a 1 x 1 px upload was a traceback on Compare and lost the previous image. It is shown
    enlarged, as the model sees it, with one note (`refiner.image_input.small_image_note`), on every page."""
    from app.sidebar import UPLOADS

    previous, tiny = _png_bytes((60, 50), (10, 20, 30)), _png_bytes((1, 1), (250, 250, 250))
    at = start()
    at.session_state[UPLOADS] = {upload_key(previous): ("cat.png", previous), upload_key(tiny): ("dot.png", tiny)}
    at.run()
    at.sidebar.selectbox(key="img").select_index(0).run()  # the newest upload: the 1 x 1 dot
    no_exceptions(at)
    assert _params(at)["img"] == upload_key(tiny)
    notes = [w.value for w in at.sidebar.warning]
    assert any(n.startswith("A and B: The image is 1 x 1 px, smaller than one 6 x 6 patch") and "48 x 48" in n
               for n in notes), notes
    assert {"click-a", "click-b", "top5-0", "top5-1"} <= set(charts(at))  # both overlays and top-5 charts
    assert "Upload: cat.png" in at.sidebar.selectbox(key="img").options  # the previous image is still there
    at.switch_page("entries/analysis.py").run()
    no_exceptions(at)
    assert any("smaller than one 6 x 6 patch" in w.value for w in at.sidebar.warning)
    # A normal image has no such note.
    assert not any("smaller than one" in w.value for w in start({"img": "digit:2"}).sidebar.warning)


def test_dataset_run_enlarges_tiny_uploads_with_a_note(app_env: Path) -> None:
    from app.screens import dataset
    from analysis.attention_metrics import MetricSettings

    tiny, normal = _png_bytes((2, 3), (0, 0, 0)), _png_bytes((48, 48), (90, 90, 90))
    from app.sources import load_source

    done: list = []
    run = dataset.run_dataset([load_source("vanilla"), load_source("refined")], 0, (tiny, normal, b"not an image"),
                              MetricSettings(), on_progress=done.append)
    assert run.analysis.images == 2 and done == [1, 2]  # both analysed, the progress counted between images
    assert len(run.notes) == 1 and run.notes[0].startswith("upload 1: A and B: The image is 2 x 3 px")
    assert len(run.skipped) == 1 and run.skipped[0].startswith("upload 3: ")


def test_a_half_precision_view_shows_the_float32_metrics(app_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large view (here: every view, threshold 0) is drawn from float16 maps, while the Analysis page's metrics
    are those of the float32 capture, for the default settings (kept with the view) and for others (captured
    again)."""
    import streamlit as st

    import analysis.compare_view as compare_view
    from app.screens.compare import HALF_NOTE

    def analysis_tables(normalize: str) -> "pd.DataFrame":
        at = start({"img": "digit:321"})
        no_exceptions(at)
        at.switch_page("entries/analysis.py").run()
        at.selectbox(key="an-norm").set_value(normalize).run()
        no_exceptions(at)
        return at, at.dataframe[0].value

    exact = {norm: analysis_tables(norm)[1] for norm in ("abs_rownorm", "none")}
    st.cache_resource.clear()  # the float32 views and metrics go; the same image is captured again in float16
    st.cache_data.clear()
    monkeypatch.setattr(compare_view, "HALF_PRECISION_BYTES", 0)
    compare = start({"img": "digit:321"})
    assert [c.value for c in compare.caption].count(HALF_NOTE) == 2
    for norm, want in exact.items():
        _, got = analysis_tables(norm)
        assert list(got.columns) == list(want.columns) and len(got) == len(want) == 16
        numbers = [c for c in want.columns if c != "model"]
        np.testing.assert_allclose(got[numbers].to_numpy(float), want[numbers].to_numpy(float), rtol=1e-6, atol=0)
    st.cache_resource.clear()
    st.cache_data.clear()


def test_the_analysis_page_makes_no_display_view_and_keeps_its_metrics(app_env: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Large views (here every view) are float16 and drawn only: the Analysis page's metrics come from a float32
    capture made for them (`capture_metrics`), kept in the map store beside the views, which stay as they are. The
    page itself makes no display view (at N = 785 that was a second capture, and a float16 cast, before the
    metrics), and a later visit, other session or the Compare page after it runs nothing again."""
    import streamlit as st

    import analysis.compare_view as compare_view
    from app import cached

    st.cache_resource.clear()
    st.cache_data.clear()
    monkeypatch.setattr(compare_view, "HALF_PRECISION_BYTES", 0)
    calls: list = []
    capture, metrics = cached.capture_view, cached.capture_metrics
    monkeypatch.setattr(cached, "capture_view", lambda *a, **k: calls.append("view") or capture(*a, **k))
    monkeypatch.setattr(cached, "capture_metrics",
                        lambda model, image, settings, box: calls.append(("metrics", settings.normalize)) or
                        metrics(model, image, settings, box))
    at = start({"img": "digit:321"})
    no_exceptions(at)
    assert calls == ["view", "view"]  # A and B for the Compare page
    keys = list(cached.map_store()._items)
    views = [cached.map_store().peek(key) for key in keys]
    calls.clear()
    at.switch_page("entries/analysis.py").run()
    no_exceptions(at)
    assert calls == [("metrics", "abs_rownorm")] * 2
    assert cached.map_store().stats().entries == 4  # the two drawn views, still kept, and two metric tables
    assert all(cached.map_store().peek(key) is view for key, view in zip(keys, views))
    calls.clear()
    at.run()
    no_exceptions(start({"img": "digit:321"}, page="entries/analysis.py"))
    assert calls == []
    at.selectbox(key="an-norm").set_value("none").run()
    no_exceptions(at)
    assert calls == [("metrics", "none")] * 2
    calls.clear()
    # A new image straight on the Analysis page: metrics only, no view; the Compare page then captures the views.
    fresh = start({"img": "digit:322"}, page="entries/analysis.py")
    no_exceptions(fresh)
    assert calls == [("metrics", "abs_rownorm")] * 2
    calls.clear()
    fresh.switch_page("entries/compare.py").run()
    no_exceptions(fresh)
    assert calls == ["view", "view"]
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.mark.parametrize("page", ["compare", "analysis"])
def test_a_session_holds_no_view_once_the_store_drops_it(app_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                         page: str) -> None:
    """What a session keeps between runs (widgets' format functions, download buttons' callables: bundle, raw
    maps) must not hold a view: when the map store drops it, its maps are freed (a per-session copy outside the
    budget, one per session browsing, before)."""
    import gc
    import weakref

    import streamlit as st

    import analysis.compare_view as compare_view
    from app import cached

    st.cache_resource.clear()
    st.cache_data.clear()
    monkeypatch.setattr(compare_view, "HALF_PRECISION_BYTES", 0)
    made: list = []
    capture = cached.capture_view

    def remembering(*args, **kwargs):
        view = capture(*args, **kwargs)
        made.append(weakref.ref(view.effective))
        return view

    monkeypatch.setattr(cached, "capture_view", remembering)
    at = start({"img": "digit:321", "tab": "raw"})
    assert any(ref() is not None for ref in made)
    if page == "analysis":  # the Compare page made the views; a session on the Analysis page must not hold them
        at.switch_page("entries/analysis.py").run()
    no_exceptions(at)
    assert len(at.get("download_button")) >= 3
    with cached.map_store().reserving(cached.map_store().budget + 1):  # every view goes
        pass
    # The server collects cycles after every run (Streamlit's runner.postScriptGC): a finished run's frames (kept
    # by Streamlit's declare_component, which holds its own frame) are gone by then.
    gc.collect()
    assert [ref() is None for ref in made] == [True] * len(made)
    st.cache_resource.clear()
    st.cache_data.clear()
