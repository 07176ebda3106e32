"""Exports: valid PNG/SVG/PDF/HTML, tables, NPZ maps and a bundle whose manifest describes it."""

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import refiner
from analysis import export
from analysis.figures import similarity_heatmaps
from analysis.per_image import analyze_image

needs_browser = pytest.mark.skipif(export.browser_path() is None, reason="no Chromium for kaleido")


@pytest.fixture(scope="module")
def result():
    torch.manual_seed(0)
    models = {"vanilla": refiner.create_model("vit_micro_patch4_32").eval(),
              "refined": refiner.create_model("refined_vit_micro_patch4_32").eval()}
    return analyze_image(models, torch.rand(3, 32, 32), box=(0, 0, 16, 16)), models


@needs_browser
def test_static_formats_are_valid_files(tmp_path) -> None:
    fig = similarity_heatmaps({"a": np.eye(3), "b": np.eye(3)})
    paths = export.write_figures({"sim": fig}, tmp_path, formats=("png", "svg", "pdf", "html"), scale=2)
    by_suffix = {p.suffix: p.read_bytes() for p in paths}
    assert by_suffix[".png"].startswith(b"\x89PNG\r\n\x1a\n")
    width = int.from_bytes(by_suffix[".png"][16:20], "big")
    assert width == 2 * fig.layout.width  # scale 2
    assert by_suffix[".pdf"].startswith(b"%PDF-")
    assert b"<svg" in by_suffix[".svg"][:2000] and by_suffix[".svg"].rstrip().endswith(b"</svg>")
    assert b"plotly" in by_suffix[".html"] and b"<html" in by_suffix[".html"][:500]


def test_missing_browser_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(export, "browser_path", lambda: None)
    fig = similarity_heatmaps({"a": np.eye(2)})
    with pytest.raises(export.ExportError, match="apt-get install -y chromium"):
        export.figure_bytes(fig, "png")
    assert b"<html>" in export.figure_bytes(fig, "html")[:100]  # HTML needs no browser
    with pytest.raises(ValueError, match="unknown figure format"):
        export.figure_bytes(fig, "gif")


def test_tables_npz_and_bundle(result, tmp_path) -> None:
    analysis, models = result
    rows = export.image_metrics_rows(analysis)
    parsed = list(csv.DictReader(io.StringIO(export.table_csv(rows))))
    assert {r["metric"] for r in parsed} >= {"similarity", "distance_px", "top5", "cka", "cls_in_box"}
    first = next(r for r in parsed if r["metric"] == "distance_px")
    assert first["layer"] == "1" and first["head"] == "1"
    assert json.loads(export.table_json(rows))[0]["model"] == "vanilla"
    npz = np.load(io.BytesIO(export.maps_npz_bytes(analysis)))
    assert npz["refined/effective"].shape == (4, 4, 65, 65)
    assert npz["vanilla/geometry"].tolist() == [1, 8, 8, 4, 4, 32, 32]
    manifest = export.build_manifest(
        [{"label": n, "source": n, "kind": "name", "state_sha256": export.state_dict_sha256(m)}
         for n, m in models.items()],
        [{"path": "x.png", "sha256": analysis.image_sha256, "box": list(analysis.box)}], {"img_size": 32},
        analysis.settings.to_dict())
    bundle = export.write_bundle(tmp_path / "bundle.zip", {"maps.npz": export.maps_npz_bytes(analysis),
                                                           "tables/metrics.csv": export.table_csv(rows)}, manifest)
    with zipfile.ZipFile(bundle) as archive:
        assert sorted(archive.namelist()) == ["manifest.json", "maps.npz", "tables/metrics.csv"]
        stored = json.loads(archive.read("manifest.json"))
    assert stored["files"] == ["manifest.json", "maps.npz", "tables/metrics.csv"]
    assert stored["versions"]["torch"] == torch.__version__
    assert stored["settings"]["normalize"] == "abs_rownorm"
    assert len(stored["models"][0]["state_sha256"]) == 64
    assert export.read_manifest(bundle)["images"][0]["sha256"] == analysis.image_sha256
    with pytest.raises(ValueError, match="not a JSON manifest"):
        (tmp_path / "bad.json").write_bytes(b"\xff\x00")
        export.read_manifest(tmp_path / "bad.json")


def test_state_hash_changes_with_the_weights(result) -> None:
    _, models = result
    model = models["vanilla"]
    before = export.state_dict_sha256(model)
    with torch.no_grad():
        model.head.bias.add_(1.0)
    try:
        assert export.state_dict_sha256(model) != before
    finally:
        with torch.no_grad():
            model.head.bias.sub_(1.0)


def test_html_can_share_one_plotly_js(tmp_path) -> None:
    figs = {"dataset/a": similarity_heatmaps({"a": np.eye(2)}), "images/x/b": similarity_heatmaps({"b": np.eye(2)})}
    paths = export.write_figures(figs, tmp_path, formats=("html",), shared_plotlyjs=True)
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000
    html = (tmp_path / "images" / "x" / "b.html").read_text()
    assert 'src="../../plotly.min.js"' in html and len(html) < 100_000
    assert len(paths) == 3


@needs_browser
def test_a_file_kaleido_did_not_write_is_rendered_again(tmp_path, monkeypatch) -> None:
    import plotly.io as pio

    real, calls = pio.write_images, []

    def drops_the_first_file(fig, file, **kwargs):  # what a loaded machine once did: no error, no file
        calls.append(list(file))
        real(fig=fig, file=file, **kwargs)
        if len(calls) == 1:
            Path(file[0]).unlink(missing_ok=True)  # under load kaleido may itself have left it out

    monkeypatch.setattr(pio, "write_images", drops_the_first_file)
    paths = export.write_figures({"a": similarity_heatmaps({"a": np.eye(3)})}, tmp_path, formats=("png", "svg"))
    assert all(p.stat().st_size > 0 for p in paths) and 2 <= len(calls) <= export.STATIC_RENDER_ATTEMPTS
    assert calls[1][0] == calls[0][0] and len(calls[1]) < len(calls[0])  # only what was missing, again
