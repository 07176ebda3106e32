"""The Compare view's figures: square panels, their own or one shared colour scale, token ticks, labels."""

import json

import numpy as np
import plotly.graph_objects as go
import pytest

from analysis.compare_view import CompareSettings, ModelView, compare_figures, overlay_ranges
from analysis.view_figures import TRACE_TYPES, attention_overlay, heads_grid, panel_domains, token_matrix, token_ticks, top_k_bars


def _view(refined: bool, seed: int, layers: int = 2, heads: int = 2, grid=(3, 3)) -> ModelView:
    rng = np.random.default_rng(seed)
    tokens = 1 + grid[0] * grid[1]
    soft = rng.random((layers, heads, tokens, tokens)).astype(np.float32)
    soft /= soft.sum(-1, keepdims=True)
    eff = soft + (rng.standard_normal(soft.shape).astype(np.float32) if refined else 0)
    return ModelView(probs=np.array([0.7, 0.2, 0.1]), softmax=soft, effective=eff,
                     has_softmax=np.ones(layers, bool), refined=np.full(layers, refined), num_prefix_tokens=1,
                     grid=grid, patch_size=(4, 4), picture=np.zeros((12, 12, 3), np.uint8),
                     input_tensor=np.zeros((1, 12, 12), np.float32))


def _axes_anchor_their_own_x(fig, panels: int) -> None:
    for index in range(panels):
        suffix = "" if index == 0 else str(index + 1)
        assert fig.layout[f"yaxis{suffix}"].scaleanchor == f"x{suffix}"  # square cells in every panel


def test_softmax_vs_effective_panels_are_square_and_each_has_its_own_scale() -> None:
    soft = np.full((3, 3), 0.1)
    eff = np.linspace(-3, 5, 9).reshape(3, 3)
    fig = heads_grid(np.stack([soft, eff, eff - soft]), ["softmax", "effective", "difference"], "t",
                     diverging=[False, True, True], columns=3, shared_scale=False,
                     colorbar_title=["softmax weight", "effective weight", "difference"])
    _axes_anchor_their_own_x(fig, 3)
    assert [t.coloraxis for t in fig.data] == ["coloraxis", "coloraxis2", "coloraxis3"]
    first, second = fig.layout.coloraxis, fig.layout.coloraxis2
    assert first.cmax - first.cmin < 1e-6 + 1e-8 and first.colorscale[0][1] != second.colorscale[0][1]
    assert (second.cmin, second.cmax) == (-5.0, 5.0)
    assert first.colorbar.title.text == "softmax weight" and fig.layout.coloraxis3.colorbar.title.text == "difference"
    # Each colour bar sits right of its own panel.
    assert first.colorbar.x < second.colorbar.x < fig.layout.coloraxis3.colorbar.x


def test_all_heads_grid_is_one_square_mosaic_on_one_titled_scale() -> None:
    grids = np.random.default_rng(0).random((6, 4, 4))
    fig = heads_grid(grids, [f"head {h}" for h in range(6)], "t")
    (mosaic,) = fig.data  # one plot for all heads
    assert mosaic.coloraxis == "coloraxis" and fig.layout.coloraxis.colorbar.title.text == "attention weight"
    assert fig.layout.yaxis.scaleanchor == "x" and fig.layout.yaxis.autorange == "reversed"  # square cells
    z = np.asarray(mosaic.z, dtype=float)
    assert z.shape == (2 * 5 - 1, 4 * 5 - 1)  # 2 rows x 4 columns of 4 x 4 panels, one empty cell between
    np.testing.assert_allclose(z[5:9, 5:9], grids[5])  # head 5: second row, second column
    assert np.isnan(z[4]).all() and np.isnan(z[:, 4]).all() and np.isnan(z[5:, 10:]).all()  # gaps, empty slots
    assert mosaic.text[6][7] == "head 5, row 1, col 2" and not mosaic.hoverongaps
    titles = {a.text: (a.x, a.y) for a in fig.layout.annotations}
    assert titles["head 5"] == (6.5, 4.5) and titles["head 0"] == (1.5, -0.5)  # above the middle of its panel
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (grids.min(), grids.max())


def test_token_matrix_has_token_tick_labels() -> None:
    labels = ["CLS"] + [f"patch ({r}, {c})" for r in range(4) for c in range(4)]
    positions, texts = token_ticks(labels, 1, (4, 4))
    assert positions == [0, 1, 5, 9, 13] and texts == ["CLS", "r0", "r1", "r2", "r3"]
    fig = token_matrix(np.eye(17), labels, "t", num_prefix_tokens=1, grid=(4, 4))
    assert list(fig.layout.xaxis.ticktext) == texts and list(fig.layout.yaxis.tickvals) == positions
    assert fig.layout.xaxis.showticklabels is not False
    # 37 x 37 patches (Refiner-ViT-L at 448 px): a readable number of ticks.
    many = token_ticks(["CLS"] + ["p"] * 37 * 37, 1, (37, 37))[0]
    assert len(many) <= 17


def test_a_research_scale_matrix_is_drawn_as_token_block_means() -> None:
    from analysis.view_figures import MAX_MATRIX_CELLS, token_blocks

    rng = np.random.default_rng(0)
    small = rng.random((MAX_MATRIX_CELLS, MAX_MATRIX_CELLS))
    cells, centres, block = token_blocks(small)
    assert block == 1 and cells is small
    matrix = rng.random((785, 785))  # Refiner-ViT-L at 448 px: 4 x 4 blocks, the last one 1 token wide
    cells, centres, block = token_blocks(matrix)
    assert block == 4 and cells.shape == (197, 197)
    assert cells[1, 2] == pytest.approx(matrix[4:8, 8:12].mean())
    assert cells[-1, -1] == pytest.approx(matrix[784, 784]) and centres[-1] == 784 and centres[0] == 1.5
    labels = ["CLS"] + [f"patch ({r}, {c})" for r in range(28) for c in range(28)]
    fig = token_matrix(matrix, labels, "A", num_prefix_tokens=1, grid=(28, 28))
    assert np.asarray(fig.data[0].z).shape == (197, 197) and "4 x 4 token blocks" in fig.layout.title.text
    assert len(fig.to_json()) < 1_500_000  # was 4.1 MB per redraw


def test_view_figures_name_the_map_kind_and_share_a_scale_on_request() -> None:
    views = [_view(False, 0), _view(True, 1)]
    settings = CompareSettings(layer_a=2, layer_b=2, head="mean", query_a=3, query_b=3, map_kind="effective")
    figs = compare_figures(views, ["A-x", "B-y"], settings, [["0", "1", "2"]] * 2, truth=0)
    assert "effective" in figs["difference-a-b"].layout.title.text
    assert figs["difference-a-b"].data[1].colorbar.title.text == "A - B (effective)"
    assert "softmax-vs-effective-b-layer2" in figs and "softmax-vs-effective-a-layer2" not in figs
    own = [figs[f"overlay-{s}-layer2"].data[1] for s in "ab"]
    assert (own[0].zmin, own[0].zmax) != (own[1].zmin, own[1].zmax)
    shared = compare_figures(views, ["A-x", "B-y"], CompareSettings(**{**settings.to_dict(), "shared_scale": True}),
                             [["0", "1", "2"]] * 2, parts=("overlay",))
    first, second = (shared[f"overlay-{s}-layer2"].data[1] for s in "ab")
    assert (first.zmin, first.zmax) == (second.zmin, second.zmax) and first.colorscale == second.colorscale
    assert len(overlay_ranges([np.zeros((2, 2)), -np.ones((2, 2))], shared=True)) == 2


def streamlit_placeholders(fig) -> list:
    """Hex colours #000001..#000040 in a figure: Streamlit's chart element replaces them in the browser."""
    import re

    return re.findall(r"#0000(?:0[1-9]|[1-3][0-9]|40)\b", fig.to_json(), flags=re.IGNORECASE)


def test_no_view_figure_has_a_colour_streamlit_rewrites() -> None:
    views = [_view(False, 0), _view(True, 1)]
    settings = CompareSettings(layer_a=1, layer_b=1, map_kind="softmax")
    figs = compare_figures(views, ["a", "b"], settings, [["0", "1", "2"]] * 2)
    assert figs and all(not streamlit_placeholders(f) for f in figs.values())
    black = figs["overlay-a-layer1"].data[1].colorscale[0][1]
    assert black == "rgb(0,0,4)"  # Inferno's black, written so that it survives


def _builders(dtype) -> dict:
    rng = np.random.default_rng(3)
    picture = (rng.random((24, 24, 3)) * 255).astype(np.uint8)
    grid = rng.random((4, 4)).astype(dtype)
    labels = ["CLS"] + [f"patch ({r}, {c})" for r in range(4) for c in range(4)]
    return {
        "overlay": attention_overlay(picture, grid, (6, 6), 0.6, "t", query_patch=(1, 2), box=(2, 3, 20, 21)),
        "difference": attention_overlay(picture, grid - 0.5, (6, 6), 0.6, "t", diverging=True, zrange=(-1, 1)),
        "heads": heads_grid(rng.random((6, 4, 4)).astype(dtype), [f"head {h}" for h in range(6)], "t"),
        "softmax-vs-effective": heads_grid((rng.random((3, 4, 4)) - 0.3).astype(dtype), ["a", "b", "c"], "t",
                                           diverging=[False, True, True], columns=3, shared_scale=False,
                                           colorbar_title=["a", "b", "c"]),
        "matrix": token_matrix(rng.random((17, 17)).astype(dtype), labels, "t", num_prefix_tokens=1, grid=(4, 4)),
        "blocks": token_matrix(rng.random((300, 300)).astype(dtype) - 0.5, ["t"] * 300, "t", diverging=True),
        "top5": top_k_bars([("3", 0.5), ("1", 0.25)], "t", truth="1"),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_figures_are_what_plotly_validation_makes_of_them(dtype) -> None:
    # The builders skip plotly.py's validation (`figure_from_spec`): each figure must already be in the form
    # validation gives, so the screen and every export show the same figure as a validated one would.
    for name, fig in _builders(dtype).items():
        validated = go.Figure(fig.to_plotly_json())
        assert json.loads(fig.to_json()) == json.loads(validated.to_json()), name
        assert fig.layout.template.layout.plot_bgcolor == "white" and fig.layout.font.family.startswith("Arial")
        assert {trace.type for trace in fig.data} <= set(TRACE_TYPES), name  # the slim template covers them


def test_figures_do_not_share_their_template() -> None:
    first, second = _builders(np.float32)["overlay"], _builders(np.float32)["top5"]
    first.layout.template.layout.paper_bgcolor = "#123456"
    first.update_layout(template_layout_plot_bgcolor="#654321")
    assert first.layout.template.layout.paper_bgcolor == "#123456"
    assert "#123456" not in second.to_json() and "#654321" not in second.to_json()
    assert "#123456" not in top_k_bars([("1", 1.0)], "t").to_json()


def test_panel_domains_are_make_subplots_domains() -> None:
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=3, horizontal_spacing=0.12, vertical_spacing=0.1)
    assert np.allclose(panel_domains(3, 0.12), [fig.layout[f"xaxis{i}"].domain for i in (1, 2, 3)])
    assert np.allclose(panel_domains(2, 0.1)[::-1], [fig.layout[f"yaxis{i}"].domain for i in (1, 4)])


def test_the_overlay_picture_is_its_pixels_as_png_also_when_encoded_before() -> None:
    import base64
    import io

    from PIL import Image

    from analysis.view_figures import png_data_uri

    picture = (np.random.default_rng(5).random((20, 30, 3)) * 255).astype(np.uint8)
    for attempt in range(2):  # the second call reads the kept encoding
        uri = png_data_uri(picture.copy())
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
        np.testing.assert_array_equal(decoded, picture)
    other = picture.copy()
    other[3, 4, 1] ^= 1
    assert png_data_uri(other) != png_data_uri(picture)
    assert png_data_uri(picture[:, :20]) != png_data_uri(picture)
