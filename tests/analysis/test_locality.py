"""Local-pattern statistics against hand-built maps on tiny grids."""

import numpy as np

from analysis.locality import (chebyshev_mask, cls_and_patch_entropy, diagonal_mass, grid_neighbourhood_mass,
                               locality_metrics, mean_attention_distance, negative_mass_fraction,
                               patch_distance_matrix, prefix_mass, row_entropy, sequence_band_mass)

from analysis_test_maps import identity_maps, uniform_maps


def test_identity_has_distance_zero_and_diagonal_mass_one() -> None:
    maps = identity_maps(2, 3, 1 + 9)
    np.testing.assert_allclose(mean_attention_distance(maps, 1, (3, 3), (16, 16)), 0.0)
    np.testing.assert_allclose(diagonal_mass(maps), 1.0)
    np.testing.assert_allclose(grid_neighbourhood_mass(maps, 1, (3, 3), radius=0), 1.0)
    np.testing.assert_allclose(row_entropy(maps), 0.0)


def test_uniform_rows_have_entropy_one() -> None:
    maps = uniform_maps(1, 2, 1 + 4)
    np.testing.assert_allclose(row_entropy(maps), 1.0)
    cls, patch = cls_and_patch_entropy(maps, 1)
    np.testing.assert_allclose(cls, 1.0)
    np.testing.assert_allclose(patch, 1.0)
    np.testing.assert_allclose(diagonal_mass(maps), 0.2)
    np.testing.assert_allclose(prefix_mass(maps, 1), 0.2)


def test_hand_computed_distances_on_a_2x2_grid() -> None:
    # Patches (0,0) (0,1) (1,0) (1,1); patch size 4 x 8 pixels (rows x cols).
    d = patch_distance_matrix((2, 2), (4, 8))
    np.testing.assert_allclose(d[0], [0, 8, 4, np.sqrt(80)])
    # Uniform patch rows (prefix column ignored and rows renormalised): every query sees the 4 patches.
    maps = uniform_maps(1, 1, 1 + 4)
    expected_px = np.mean([(0 + 8 + 4 + np.sqrt(80)) / 4] * 4)
    np.testing.assert_allclose(mean_attention_distance(maps, 1, (2, 2), (4, 8)), [[expected_px]])
    expected_patches = (0 + 1 + 1 + np.sqrt(2)) / 4
    np.testing.assert_allclose(mean_attention_distance(maps, 1, (2, 2)), [[expected_patches]])


def test_neighbour_attention_on_a_3x3_grid() -> None:
    # No prefix token; every patch attends fully to the patch to its right (wrapping to the row start).
    grid = (3, 3)
    maps = np.zeros((1, 1, 9, 9))
    for i in range(9):
        r, c = divmod(i, 3)
        maps[0, 0, i, r * 3 + (c + 1) % 3] = 1.0
    # Two of three columns move 1 patch, the wrap moves 2.
    np.testing.assert_allclose(mean_attention_distance(maps, 0, grid), [[(1 + 1 + 2) / 3]])
    np.testing.assert_allclose(grid_neighbourhood_mass(maps, 0, grid, radius=1), [[2 / 3]])
    np.testing.assert_allclose(sequence_band_mass(maps, width=1), [[2 / 3]])
    np.testing.assert_allclose(chebyshev_mask(grid, 1)[4], np.ones(9))
    np.testing.assert_allclose(chebyshev_mask(grid, 1)[0], [1, 1, 0, 1, 1, 0, 0, 0, 0])


def test_negative_mass_fraction_on_a_hand_made_map() -> None:
    maps = np.array([[[[0.5, -0.25], [1.0, -0.25]]]])  # |mass| 2.0, negative 0.5
    np.testing.assert_allclose(negative_mass_fraction(maps), [[0.25]])
    np.testing.assert_allclose(negative_mass_fraction(uniform_maps(1, 1, 3)), 0.0)


def test_locality_metrics_agree_with_single_functions() -> None:
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((2, 3, 1 + 12, 1 + 12))  # non-stochastic, like a refined effective map
    both = locality_metrics(maps, 1, (3, 4), (8, 8), "abs_rownorm", grid_radius=1, band_width=2)
    np.testing.assert_allclose(both.distance_px, mean_attention_distance(maps, 1, (3, 4), (8, 8), "abs_rownorm"))
    np.testing.assert_allclose(both.grid_mass, grid_neighbourhood_mass(maps, 1, (3, 4), 1, "abs_rownorm"))
    np.testing.assert_allclose(both.band_mass, sequence_band_mass(maps, 2, "abs_rownorm"))
    np.testing.assert_allclose(both.negative_fraction, negative_mass_fraction(maps))
    assert both.distance_px.shape == (2, 3)


def test_negative_mass_fraction_in_a_reused_buffer_is_the_same_and_allocates_no_map() -> None:
    """With a worker's buffer the two passes write no temporary of the map's size (fresh memory is where the
    metrics of a large model spent seconds), and the numbers are the same bit for bit."""
    import tracemalloc

    maps = np.random.default_rng(0).standard_normal((4, 256, 256)).astype(np.float32)
    scratch = np.empty_like(maps)
    want = negative_mass_fraction(maps)
    tracemalloc.start()
    try:
        got = negative_mass_fraction(maps, scratch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, want)
    assert peak < 0.05 * maps.nbytes
