"""The metric suite: every key present with the documented axes, and agreement with the single functions."""

import numpy as np
import pytest

from analysis.attention_metrics import METRICS, MetricSettings, compute_map_metrics
from analysis.head_diversity import effective_number_of_heads, head_diversity, head_js_distance
from analysis.similarity import cross_layer_similarity

from analysis_test_maps import identity_maps, softmax_maps


def test_every_metric_has_its_documented_shape() -> None:
    layers, heads, grid = 3, 2, (2, 3)
    maps = softmax_maps(layers, heads, 1 + 6)
    out = compute_map_metrics(maps, 1, grid, (8, 8), box=(0, 0, 8, 16))
    assert set(out) == set(METRICS) - {"rollout_patch_mean"}  # that one is for models without a CLS token
    sizes = {"layer": layers, "layer2": layers, "head": heads, "head2": heads, "query": 7, "key": 7,
             "row": grid[0], "col": grid[1]}
    for key, info in METRICS.items():
        if key not in out:
            continue
        expected = tuple(sizes[a] for a in info.axes)
        expected = expected[:-1] + (layers - 1,) if key == "adjacent_similarity" else expected
        assert out[key].shape == expected, key


def test_without_a_class_token_cls_metrics_are_left_out_and_the_rollout_says_what_it_is() -> None:
    """Four register tokens and no CLS (vit_*_reg4_gap): nothing may be read from register 0 as "CLS"."""
    layers, heads, grid = 2, 2, (2, 2)
    maps = softmax_maps(layers, heads, 4 + 4)
    with_cls = compute_map_metrics(maps, 4, grid, (8, 8), box=(0, 0, 8, 8))
    without = compute_map_metrics(maps, 4, grid, (8, 8), box=(0, 0, 8, 8), class_token_index=None)
    assert {"cls_entropy", "rollout_cls", "cls_in_box", "rollout_in_box"} <= set(with_cls)
    assert not {"cls_entropy", "rollout_cls", "cls_in_box", "rollout_in_box", "box_chance"} & set(without)
    assert "rollout_patch_mean" in without and "rollout_patch_mean" not in with_cls
    np.testing.assert_allclose(without["rollout_patch_mean"],
                               without["rollout"][4:, 4:].mean(axis=0).reshape(grid))
    np.testing.assert_allclose(without["patch_entropy"], with_cls["patch_entropy"])  # the rest is the same


def test_suite_agrees_with_the_single_functions_on_a_refined_like_map() -> None:
    rng = np.random.default_rng(0)
    maps = softmax_maps(3, 4, 1 + 9) + 0.05 * rng.standard_normal((3, 4, 10, 10))  # some negative entries
    settings = MetricSettings(normalize="clip_rownorm", tau=0.3)
    out = compute_map_metrics(maps, 1, (3, 3), (4, 4), settings)
    reference = cross_layer_similarity(maps, "clip_rownorm", 0.3)
    np.testing.assert_allclose(out["similarity"], reference.matrix, rtol=1e-6)
    np.testing.assert_allclose(out["similarity_share"], reference.share_above_tau)
    np.testing.assert_allclose(out["head_diversity"], head_diversity(maps, "clip_rownorm"), rtol=1e-6)
    np.testing.assert_allclose(out["head_js"], head_js_distance(maps, "clip_rownorm"), rtol=1e-6)
    np.testing.assert_allclose(out["effective_heads"], effective_number_of_heads(maps, "clip_rownorm"), rtol=1e-6)
    assert (out["negative_fraction"] > 0).all()


def test_identity_maps_give_the_known_answers() -> None:
    out = compute_map_metrics(identity_maps(2, 2, 5), 1, (2, 2), (16, 16))
    np.testing.assert_allclose(out["similarity"], 1.0)
    np.testing.assert_allclose(out["distance_px"], 0.0)
    np.testing.assert_allclose(out["diagonal_mass"], 1.0)
    np.testing.assert_allclose(out["rollout"], np.eye(5))


def test_bad_settings_and_shapes_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="normalize"):
        MetricSettings(normalize="l2")
    with pytest.raises(ValueError, match=r"\(L, H, N, N\)"):
        compute_map_metrics(np.ones((2, 5, 5)), 1, (2, 2), (4, 4))
