"""The view bundle: files, tables, raw maps and a manifest that `analysis.export.read_manifest` accepts."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from analysis.compare_view import ModelView
from analysis.export import read_manifest
from app.bundle import ViewContents, build_bundle, bundle_labels, maps_arrays
from app.images import upload_item
from analysis.compare_view import capture_view
from app.sources import load_source
from analysis.view_figures import attention_overlay, top_k_bars


def test_bundle_of_a_view(app_env: Path, tmp_path: Path) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.indices((60, 50)).sum(0) % 256).astype(np.uint8)).convert("RGB").save(buffer, "PNG")
    upload = buffer.getvalue()
    item = upload_item(upload)
    models = [load_source("vanilla"), load_source("refined")]
    views = [capture_view(m, item.image) for m in models]
    contents = ViewContents(settings={"layer_a": 2, "head": "mean", "query_a": 5})
    contents.figures["overlay-a"] = attention_overlay(views[0].picture, np.ones(views[0].grid), views[0].patch_size,
                                                      0.5, "overlay")
    contents.figures["top5"] = top_k_bars([("3", 0.5), ("1", 0.2)], "top-5")
    contents.tables["top5"] = [{"model": "vanilla", "rank": 1, "class_name": "3", "probability": 0.5}]

    data = build_bundle(contents, models, views, item, formats=("html",), extra={"url_query": {"q": "5"}})
    path = tmp_path / "bundle.zip"
    path.write_bytes(data)
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        assert {"manifest.json", "figures/overlay-a.html", "figures/top5.html", "figures/plotly.min.js",
                "tables/top5.csv", "tables/top5.json", "maps/maps.npz"} <= names
        assert json.loads(archive.read("tables/top5.json"))[0]["class_name"] == "3"
        maps = np.load(io.BytesIO(archive.read("maps/maps.npz")))
        assert maps["vanilla/effective"].shape == views[0].effective.shape
        assert maps["refined/refined"].any() and not maps["vanilla/refined"].any()
    manifest = read_manifest(path)
    assert [m["label"] for m in manifest["models"]] == ["vanilla", "refined"]
    assert all(len(m["weights_sha256"]) == 64 and len(m["state_sha256"]) == 64 for m in manifest["models"])
    assert manifest["images"][0]["sha256"] == hashlib.sha256(upload).hexdigest()
    assert manifest["preprocessing"]["vanilla"]["in_chans"] == 1
    assert manifest["settings"]["query_a"] == 5 and "torch" in manifest["versions"]
    assert set(manifest["files"]) == names
    assert manifest["models"][0]["source"] == str((app_env / "vanilla").resolve())


def test_refiner_analyze_remakes_an_app_bundle(app_env: Path, tmp_path: Path) -> None:
    """The bundle is enough for ``refiner analyze --manifest`` (DESIGN section 6): same models, same input."""
    from refiner_cli import main

    item = upload_item(_png())
    models = [load_source("vanilla"), load_source("refined")]
    views = [capture_view(m, item.image) for m in models]
    path = tmp_path / "bundle.zip"
    path.write_bytes(build_bundle(ViewContents(settings={"map_kind": "effective", "head": "mean"}), models, views,
                                  item, formats=("html",)))
    out = tmp_path / "remade"
    assert main(["analyze", "--manifest", str(path), "--out", str(out), "--formats", "html", "--no-progress"]) == 0
    remade = json.loads((out / "manifest.json").read_text())
    assert [m["label"] for m in remade["models"]] == ["vanilla", "refined"]
    assert any(p.suffix == ".html" for p in (out / "figures").rglob("*"))


def test_labels_stay_unique_when_both_slots_hold_one_model(app_env: Path) -> None:
    model = load_source("vanilla")
    assert bundle_labels([model, load_source("refined")]) == ["vanilla", "refined"]
    assert bundle_labels([model, model]) == ["A-vanilla", "B-vanilla"]


def test_bundle_rejects_unknown_formats(app_env: Path) -> None:
    models = [load_source("vanilla")]
    item = upload_item(_png())
    with pytest.raises(ValueError, match="formats"):
        build_bundle(ViewContents(), models, [capture_view(models[0], item.image)], item, formats=("gif",))


def test_maps_arrays_keys_are_per_model() -> None:
    class View:  # the fields maps_arrays reads
        effective = softmax = np.zeros((1, 1, 2, 2), np.float32)
        has_softmax = refined = np.zeros(1, bool)
        probs = np.ones(3) / 3
        input_tensor = np.zeros((1, 4, 4), np.float32)
        picture = np.zeros((4, 4, 3), np.uint8)
        num_prefix_tokens, grid, patch_size = 1, (1, 1), (4, 4)
        class_token_index = None  # a register-only model
    arrays = maps_arrays(["A-x", "B-x"], [View(), View()])
    assert list(arrays["A-x/geometry"]) == [1, 1, 1, 4, 4, 4, 4] and "B-x/effective" in arrays
    assert list(arrays["A-x/class_token_index"]) == [-1]
    assert ModelView.from_arrays(arrays, "A-x").class_token_index is None  # the bundle keeps "no CLS"
    del arrays["B-x/class_token_index"]
    assert ModelView.from_arrays(arrays, "B-x").class_token_index == 0  # bundles written before it had CLS at 0


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), (40, 80, 120)).save(buffer, "PNG")
    return buffer.getvalue()


def test_refiner_analyze_remakes_the_compare_view_figures_of_a_bundle(app_env: Path, tmp_path: Path) -> None:
    """Issue 11 bug 7: ``--manifest`` of a Compare bundle writes the view's own figures, byte for byte the same
    files as the bundle's (apart from plotly's random element ids), and counts the image it analysed."""
    import re

    from analysis.compare_view import CompareSettings, compare_figures, compare_tables
    from app.images import canvas_key, sample_item
    from refiner_cli import main

    models = [load_source("vanilla"), load_source("refined")]
    item = sample_item("digit:3", canvas_key(models[0].data))
    views = [capture_view(m, item.image) for m in models]
    settings = CompareSettings(layer_a=3, layer_b=3, head="1", query_a=20, query_b=20, map_kind="softmax",
                               opacity=0.4, shared_scale=True)
    labels, names = bundle_labels(models), [m.info.class_names for m in models]
    contents = ViewContents(figures=compare_figures(views, labels, settings, names, item.box, item.label),
                            tables=compare_tables(views, labels, settings, names),
                            settings={"page": "compare", **settings.to_dict()})
    assert {"overlay-a-layer3", "top5-b", "heads-a-layer3", "matrix-b-layer3", "softmax-vs-effective-b-layer3",
            "difference-a-b"} <= set(contents.figures)
    path = tmp_path / "bundle.zip"
    path.write_bytes(build_bundle(contents, models, views, item, formats=("html",)))
    out = tmp_path / "remade"
    assert main(["analyze", "--manifest", str(path), "--out", str(out), "--formats", "html", "--no-progress"]) == 0
    remade = json.loads((out / "manifest.json").read_text())
    assert remade["extra"]["images_analysed"] == 1

    def without_ids(html: bytes) -> str:
        return re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "ID", html.decode())

    with zipfile.ZipFile(path) as archive:
        for stem in contents.figures:
            assert without_ids((out / "figures" / f"{stem}.html").read_bytes()) == \
                without_ids(archive.read(f"figures/{stem}.html")), stem
        assert json.loads((out / "tables" / "top5.json").read_text()) == json.loads(archive.read("tables/top5.json"))


def test_dataset_page_exports_are_the_files_of_refiner_analyze_dataset(tmp_path: Path, monkeypatch) -> None:
    """Issue 10 (one pipeline): on the shipped checkpoints and the same 10 test canvases, the Dataset page's
    exported table (CSV and JSON) and every figure (plotly JSON spec, and PNG bytes) are the files
    ``refiner analyze --dataset cluttered-mnist`` writes. They differed before (own per-image summaries, 1,000
    resamples instead of 2,000, canvases through an 8-bit picture)."""
    from streamlit.testing.v1 import AppTest

    from analysis import export
    from app.screens import dataset as page
    from refiner_cli import main
    from tests.app.conftest import APP

    import streamlit as st

    monkeypatch.delenv("REFINER_APP_CHECKPOINTS", raising=False)  # the shipped pair under checkpoints/
    figures, tables = {}, {}
    monkeypatch.setattr(page, "figure_exports", lambda fig, name, key: figures.__setitem__(name, fig))
    monkeypatch.setattr(page, "table_exports", lambda rows, name, key: tables.__setitem__(name, list(rows)))
    # The process's model and run caches are keyed by source name: other tests put the tiny pair there under
    # the same names, and this test must not leave the shipped pair there for them either.
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(APP, default_timeout=300).run()
        at.switch_page("entries/dataset.py").run()
        at.slider(key="ds-count").set_value(10).run()
        at.button(key="ds-run").click().run()
    finally:
        st.cache_resource.clear()
        st.cache_data.clear()
    assert not at.exception and tables and figures

    out = tmp_path / "cli"
    assert main(["analyze", "--model", "vanilla", "--model", "refined", "--dataset", "cluttered-mnist",
                 "--max-images", "10", "--per-image", "0", "--formats", "json", "--no-bundle", "--no-progress",
                 "--out", str(out)]) == 0
    rows = tables["dataset_metrics"]
    assert export.table_csv(rows) == (out / "tables" / "dataset_metrics.csv").read_text(encoding="utf-8")
    assert export.table_json(rows) == (out / "tables" / "dataset_metrics.json").read_text(encoding="utf-8")
    written = out / "figures" / "dataset"
    assert set(figures) == {p.stem for p in written.glob("*.json")} and len(figures) >= 15
    for stem, fig in figures.items():
        assert export.figure_bytes(fig, "json") == (written / f"{stem}.json").read_bytes(), stem
    if export.browser_path() is not None:
        # PNG (26 s for all 21 figures here, so one): the CLI's figure, read back from its spec and written the
        # CLI's way (`write_figures`, one kaleido session), equals the page's PNG download byte for byte.
        import plotly.io as pio

        stem = "dataset_head_diversity"
        cli_figure = pio.read_json(written / f"{stem}.json")
        cli_png = export.write_figures({stem: cli_figure}, tmp_path / "png", ["png"])[0].read_bytes()
        assert export.figure_bytes(figures[stem], "png", 2.0) == cli_png
