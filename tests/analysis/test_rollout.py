"""Attention rollout: identity, residual modelling, fusion and discard."""

import numpy as np
import pytest

from analysis.rollout import attention_rollout, discard_lowest, fuse_heads, rollout_cls_map

from analysis_test_maps import identity_maps, softmax_maps, uniform_maps


def test_rollout_of_identity_maps_is_identity() -> None:
    for fusion in ("mean", "max", "min"):
        np.testing.assert_allclose(attention_rollout(identity_maps(3, 2, 5), head_fusion=fusion), np.eye(5))


def test_rollout_of_one_uniform_layer_adds_half_identity() -> None:
    # (U + I) renormalised = 0.5 U + 0.5 I for a row-stochastic U.
    n = 4
    np.testing.assert_allclose(attention_rollout(uniform_maps(1, 2, n)), 0.5 / n + 0.5 * np.eye(n))


def test_rollout_multiplies_later_layers_on_the_left_and_stays_stochastic() -> None:
    maps = softmax_maps(3, 2, 6)
    step = [(m.mean(axis=0) + np.eye(6)) / 2 for m in maps]
    np.testing.assert_allclose(attention_rollout(maps), step[2] @ step[1] @ step[0])
    out = attention_rollout(maps, head_fusion="max", discard_ratio=0.5)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0)
    assert attention_rollout(maps, return_all=True).shape == (3, 6, 6)


def test_fusion_and_discard() -> None:
    maps = np.stack([np.full((2, 2), 0.2), np.full((2, 2), 0.6)])[None]
    np.testing.assert_allclose(fuse_heads(maps, "max")[0], 0.6)
    np.testing.assert_allclose(fuse_heads(maps, "min")[0], 0.2)
    fused = np.array([[[0.5, 0.1, 0.4], [0.3, 0.2, 0.5], [0.05, 0.05, 0.9]]])
    kept = discard_lowest(fused, 0.5)  # 3 of 6 off-diagonal entries go: 0.1, 0.05, 0.05 (diagonal kept)
    np.testing.assert_allclose(kept, [[[0.5, 0.0, 0.4], [0.3, 0.2, 0.5], [0.0, 0.0, 0.9]]])
    with pytest.raises(ValueError):
        discard_lowest(fused, 1.0)


def test_cls_map_shape_and_mass() -> None:
    roll = attention_rollout(softmax_maps(2, 2, 1 + 6))
    cls = rollout_cls_map(roll, 1, (2, 3))
    assert cls.shape == (2, 3)
    np.testing.assert_allclose(cls.sum(), 1.0)
