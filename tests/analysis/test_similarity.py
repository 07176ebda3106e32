"""DeepViT cross-layer similarity and relative-depth alignment."""

import numpy as np

from analysis.similarity import (adjacent_layer_similarity, align_layers, column_cosine, cross_layer_similarity,
                                 relative_depth, resample_to_relative_depth, similar_block_counts)

from analysis_test_maps import identity_maps, softmax_maps


def test_identical_layers_have_similarity_one() -> None:
    layer = softmax_maps(1, 3, 10, seed=1)
    result = cross_layer_similarity(np.concatenate([layer] * 4), tau=0.5)
    np.testing.assert_allclose(result.matrix, np.ones((4, 4)), atol=1e-12)
    np.testing.assert_allclose(result.share_above_tau, np.ones((4, 4)))
    assert similar_block_counts(result.matrix, 0.9).tolist() == [3, 3, 3, 3]


def test_hand_computed_column_cosine() -> None:
    # Layer 0 sends key 0 to query 0 only, layer 1 spreads key 0 equally over both queries:
    # cosine of columns (1, 0) and (0.5, 0.5) = 1/sqrt(2). Key 1 columns: (0, 1) vs (0.5, 0.5), also 1/sqrt(2).
    a0 = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    a1 = np.array([[[0.5, 0.5], [0.5, 0.5]]])
    np.testing.assert_allclose(column_cosine(a0, a1), [[1 / np.sqrt(2), 1 / np.sqrt(2)]])
    result = cross_layer_similarity(np.stack([a0, a1]), normalize="none", tau=0.8)
    np.testing.assert_allclose(result.matrix, [[1, 1 / np.sqrt(2)], [1 / np.sqrt(2), 1]])
    np.testing.assert_allclose(result.share_above_tau, [[1, 0], [0, 1]])
    np.testing.assert_allclose(adjacent_layer_similarity(result.matrix), [1 / np.sqrt(2)])


def test_cosine_is_over_queries_not_across_heads() -> None:
    # Two heads that differ: layers are still identical head by head, so similarity stays 1.
    maps = np.concatenate([softmax_maps(1, 2, 6, seed=3)] * 2)
    maps[:, 1] = identity_maps(2, 1, 6)[:, 0]
    np.testing.assert_allclose(cross_layer_similarity(maps).matrix, 1.0, atol=1e-12)


def test_disjoint_columns_have_similarity_zero_and_cross_model_shape() -> None:
    first = identity_maps(1, 2, 4)
    second = np.roll(first, 1, axis=-1)  # every key now goes to a different query
    result = cross_layer_similarity(np.concatenate([first, second]), normalize="none")
    np.testing.assert_allclose(result.matrix, [[1, 0], [0, 1]])
    cross = cross_layer_similarity(softmax_maps(3, 2, 5), other=softmax_maps(5, 2, 5, seed=2))
    assert cross.matrix.shape == (3, 5)


def test_relative_depth_alignment() -> None:
    np.testing.assert_allclose(relative_depth(4), [0.25, 0.5, 0.75, 1.0])
    assert align_layers(4, 8).tolist() == [1, 3, 5, 7]
    # Layers at 0.375, 0.625, 0.875 lie halfway between two layers of the shallower model: ties go shallower.
    assert align_layers(8, 4).tolist() == [0, 0, 0, 1, 1, 2, 2, 3]
    np.testing.assert_allclose(resample_to_relative_depth(np.array([1.0, 2.0]), relative_depth(4)),
                               [1.0, 1.0, 1.5, 2.0])


def test_align_layers_is_exact_with_ties_to_the_shallower_layer() -> None:
    from fractions import Fraction

    assert align_layers(2, 3).tolist() == [0, 2]  # 1/2 lies halfway between 1/3 and 2/3: the shallower
    for depth_a in range(1, 25):
        for depth_b in range(1, 25):
            expected = []
            for i in range(1, depth_a + 1):
                distances = [abs(Fraction(i, depth_a) - Fraction(j, depth_b)) for j in range(1, depth_b + 1)]
                expected.append(distances.index(min(distances)))  # first minimum = shallower layer
            assert align_layers(depth_a, depth_b).tolist() == expected, (depth_a, depth_b)
