"""Share of attention and rollout mass inside a box."""

import numpy as np
import pytest

from analysis.localisation import box_patch_coverage, chance_level, localisation, mass_in_box


def test_coverage_is_fractional_for_unaligned_boxes() -> None:
    # 2 x 2 grid of 8-pixel patches; the box covers the whole top-left patch and half of the top-right one.
    coverage = box_patch_coverage((0, 0, 12, 8), (2, 2), (8, 8))
    np.testing.assert_allclose(coverage, [[1.0, 0.5], [0.0, 0.0]])
    assert chance_level((0, 0, 12, 8), (2, 2), (8, 8)) == pytest.approx(1.5 / 4)
    with pytest.raises(ValueError):
        box_patch_coverage((5, 5, 5, 9), (2, 2), (8, 8))


def test_mass_in_box_accepts_flat_and_grid_weights() -> None:
    weights = np.array([[0.5, 0.2], [0.2, 0.1]])
    assert mass_in_box(weights, (0, 0, 8, 8), (2, 2), (8, 8)) == pytest.approx(0.5)
    assert mass_in_box(weights.reshape(-1), (0, 0, 16, 8), (2, 2), (8, 8)) == pytest.approx(0.7)


def test_localisation_of_a_cls_query_that_looks_at_one_patch() -> None:
    n = 1 + 4
    maps = np.zeros((2, 1, n, n))
    maps[:, :, :, 0] = 1.0
    maps[:, :, 0, :] = 0.0
    maps[:, :, 0, 4] = 1.0  # CLS looks at the bottom-right patch
    rollout = maps[0, 0]
    inside = localisation(maps, rollout, (8, 8, 16, 16), 1, (2, 2), (8, 8))
    np.testing.assert_allclose(inside.cls_in_box, 1.0)
    assert inside.rollout_in_box == pytest.approx(1.0) and inside.pointing_hit and inside.chance == 0.25
    outside = localisation(maps, rollout, (0, 0, 8, 8), 1, (2, 2), (8, 8))
    np.testing.assert_allclose(outside.cls_in_box, 0.0)
    assert not outside.pointing_hit
