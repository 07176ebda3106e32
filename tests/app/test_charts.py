"""Which plotly.js bundle draws a figure (`app.charts.plotly_bundle`): the shipped cartesian one when it can."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from app import charts
from analysis.view_figures import attention_overlay, top_k_bars


@pytest.fixture
def plotly_js_version(monkeypatch: pytest.MonkeyPatch):
    """Set the plotly.js version the installed plotly.py claims to write figures for."""
    def set_version(version: str) -> None:
        monkeypatch.setattr(charts, "get_plotlyjs_version", lambda: version)
        charts.cartesian_bundle_matches.cache_clear()
    yield set_version
    charts.cartesian_bundle_matches.cache_clear()


def test_shipped_bundle_is_the_cartesian_dist_and_names_its_version() -> None:
    head = charts.CARTESIAN_BUNDLE.read_text(encoding="utf-8")[:400]
    assert "plotly.js (cartesian - minified)" in head
    assert charts.bundle_version(charts.CARTESIAN_BUNDLE) == "4.1.1"
    # Every trace module it registers is one we route to it, and the other way round.
    registered = set(re.findall(r'moduleType:"trace",name:"(\w+)"',
                                charts.CARTESIAN_BUNDLE.read_text(encoding="utf-8")))
    assert registered == charts.CARTESIAN_TRACES


def test_bundle_version_of_a_file_without_a_header(tmp_path: Path) -> None:
    bundle = tmp_path / "plotly.min.js"
    bundle.write_text("window.Plotly={};", encoding="utf-8")
    assert charts.bundle_version(bundle) is None


def test_cartesian_figures_get_the_cartesian_bundle(plotly_js_version, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(charts.BUNDLE_ENV, raising=False)
    plotly_js_version("4.1.1")
    heatmap = go.Figure(go.Heatmap(z=[[0.0, 1.0]]))
    mixed = go.Figure([go.Scatter(y=[1, 2]), go.Bar(y=[3]), go.Image(z=[[[0, 0, 0]]])])
    for fig in (heatmap, mixed, go.Figure(), None):
        assert charts.plotly_bundle(fig) == charts.CARTESIAN_BUNDLE
    # The app's own figures are cartesian.
    overlay = attention_overlay(np.zeros((16, 16, 3), np.uint8), np.full((4, 4), 1 / 16), (4, 4), 0.5, "A",
                                query_patch=(1, 2))
    assert charts.plotly_bundle(overlay) == charts.CARTESIAN_BUNDLE
    bars = top_k_bars([("3", 0.7), ("8", 0.2)], "top-2", truth="3")
    assert charts.plotly_bundle(bars) == charts.CARTESIAN_BUNDLE


def test_other_traces_or_another_version_get_the_full_bundle(plotly_js_version,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(charts.BUNDLE_ENV, raising=False)
    plotly_js_version("4.1.1")
    surface = go.Figure([go.Heatmap(z=[[1]]), go.Surface(z=[[1, 2], [3, 4]])])
    full = charts.plotly_bundle(surface)
    assert full != charts.CARTESIAN_BUNDLE and full.name == "plotly.min.js" and full.is_file()
    # A plotly.py that writes for another plotly.js: the shipped bundle could misdraw its figures.
    plotly_js_version("9.0.0")
    assert charts.plotly_bundle(go.Figure(go.Heatmap(z=[[1]]))) == full


def test_bundle_choice_from_the_environment(plotly_js_version, monkeypatch: pytest.MonkeyPatch) -> None:
    plotly_js_version("4.1.1")
    heatmap = go.Figure(go.Heatmap(z=[[1]]))
    monkeypatch.setenv(charts.BUNDLE_ENV, "full")
    assert charts.plotly_bundle(heatmap).name == "plotly.min.js"
    monkeypatch.setenv(charts.BUNDLE_ENV, " Auto ")
    assert charts.plotly_bundle(heatmap) == charts.CARTESIAN_BUNDLE
    monkeypatch.setenv(charts.BUNDLE_ENV, "webgl")
    with pytest.raises(ValueError, match="REFINER_PLOTLY_BUNDLE must be 'auto' or 'full'"):
        charts.plotly_bundle(heatmap)
