"""Figures: every builder produces traces, side-by-side heatmaps share one colour scale, paper styling."""

import numpy as np
import pytest
import torch

import refiner
from analysis.dataset import analyze_dataset, dataset_statistics
from analysis.figures import (OKABE_ITO, dataset_figures, figure_colorscales, image_figures, overlay_figure,
                              similarity_heatmaps)
from analysis.per_image import analyze_image


@pytest.fixture(scope="module")
def pair() -> dict:
    torch.manual_seed(0)
    return {"vanilla": refiner.create_model("vit_micro_patch4_32").eval(),
            "refined": refiner.create_model("refined_vit_micro_patch4_32").eval()}


def test_similarity_heatmaps_share_one_colour_scale() -> None:
    fig = similarity_heatmaps({"a": np.eye(3), "b": np.full((5, 5), 0.5)})
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(heatmaps) == 2
    assert figure_colorscales(fig) == ["coloraxis"]
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.0, 1.0)
    assert fig.layout.xaxis.title.text == "layer" and fig.layout.coloraxis.colorbar.title.text


def test_every_image_figure_is_built_with_traces_and_titles(pair) -> None:
    image = torch.rand(3, 32, 32)
    result = analyze_image(pair, image, box=(8, 8, 24, 24), attributions=True, ig_steps=4)
    figs = image_figures(result, image.numpy())
    assert set(figs) == {"similarity_heatmaps", "similarity_vs_depth", "head_diversity", "head_js",
                         "effective_heads", "head_embedding", "mean_distance", "locality_strips", "overlays", "cka",
                         "localisation"}
    for name, fig in figs.items():
        assert len(fig.data) > 0, name
        assert fig.layout.title.text, name
        assert fig.layout.font.size >= 12, name
    assert figure_colorscales(figs["cka"]) == ["coloraxis"]
    assert "pixels" in figs["mean_distance"].layout.yaxis.title.text
    line_colours = {t.line.color for t in figs["head_diversity"].data}
    assert line_colours <= set(OKABE_ITO)
    # Five panels per model (CLS attention, rollout, three attributions), one row per model.
    assert sum(t.type == "image" for t in figs["overlays"].data) == 10


def test_overlay_accepts_grid_and_pixel_maps() -> None:
    fig = overlay_figure(np.random.rand(1, 16, 16), {"grid": np.random.rand(4, 4), "pixels": np.random.rand(16, 16)},
                         box=(0, 0, 8, 8))
    assert [t.type for t in fig.data] == ["image", "heatmap", "image", "heatmap"]
    assert len(fig.layout.shapes) == 2


def test_dataset_figures_have_interval_bands(pair) -> None:
    batches = [(torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,)), torch.tensor([[0, 0, 16, 16]] * 4))
               for _ in range(2)]
    analysis = analyze_dataset(pair, batches)
    figs = dataset_figures(analysis, dataset_statistics(analysis, n_boot=100))
    curve = figs["dataset_head_diversity"]
    assert sum(t.fill == "toself" for t in curve.data) == 2  # one band per model
    assert {"similarity_heatmaps", "cka", "localisation", "paired_head_diversity"} <= set(figs)


def test_reference_lines_are_drawn_with_a_visible_width() -> None:
    from analysis.dataset import Interval, PairedComparison
    from analysis.figures import localisation_figure, paired_difference_figure

    fig = localisation_figure({"a": np.full((4, 2), 0.5)}, chance=0.25)
    line = fig.layout.shapes[0]
    assert line.y0 == 0.25 and line.line.width > 0  # simple_white's default shape width is 0: invisible
    assert fig.layout.annotations[0].text == "uniform attention"
    mean = np.zeros(3)
    comparison = PairedComparison(difference=Interval(mean, mean - 1, mean + 1, 0.95, 5), p_value=np.ones(3),
                                  n_permutations=10)
    assert paired_difference_figure(comparison, "t", "y").layout.shapes[0].line.width > 0


def test_a_flat_curve_is_not_drawn_on_a_symmetric_axis() -> None:
    from analysis.figures import layer_curves

    assert tuple(layer_curves({"a": np.zeros(8), "b": np.zeros(8)}, "t", "count").layout.yaxis.range) == (0.0, 1.0)
    assert tuple(layer_curves({"a": np.full(4, 3.0)}, "t", "count").layout.yaxis.range) == (0.0, 6.0)
    assert layer_curves({"a": np.arange(4.0)}, "t", "y").layout.yaxis.range is None  # plotly's own range


def test_no_analysis_figure_has_a_colour_streamlit_rewrites(pair: dict) -> None:
    from test_view_figures import streamlit_placeholders

    torch.manual_seed(0)
    result = analyze_image(pair, torch.randn(3, 32, 32), box=(4, 4, 20, 20))
    figs = image_figures(result, np.zeros((32, 32, 3), np.uint8))
    assert "overlays" in figs and all(not streamlit_placeholders(f) for f in figs.values())
