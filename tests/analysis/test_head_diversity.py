"""Head diversity: column cosine, Jensen-Shannon, embedding, effective number of heads."""

import numpy as np
import pytest

from analysis.head_diversity import (effective_number_of_heads, head_cosine_matrix, head_diversity, head_embedding,
                                     head_js_distance, head_js_matrix)

from analysis_test_maps import identity_maps, softmax_maps


def test_identical_heads_have_no_diversity() -> None:
    maps = np.repeat(softmax_maps(2, 1, 8), 4, axis=1)
    np.testing.assert_allclose(head_diversity(maps), 0.0, atol=1e-12)
    np.testing.assert_allclose(head_js_distance(maps), 0.0, atol=1e-6)
    np.testing.assert_allclose(effective_number_of_heads(maps), 1.0, atol=1e-6)


def test_disjoint_heads_are_maximally_diverse() -> None:
    # Head h attends from every query to key h only: columns and rows of different heads never overlap.
    tokens, heads = 5, 3
    maps = np.zeros((1, heads, tokens, tokens))
    for h in range(heads):
        maps[0, h, :, h] = 1.0
    np.testing.assert_allclose(head_cosine_matrix(maps)[0], np.eye(heads) / tokens)  # one non-zero column of 5
    np.testing.assert_allclose(head_diversity(maps), [1.0])
    np.testing.assert_allclose(head_js_matrix(maps)[0], 1.0 - np.eye(heads))
    np.testing.assert_allclose(effective_number_of_heads(maps), [heads])


def test_hand_computed_js_distance() -> None:
    # Rows (1, 0) and (0.5, 0.5): JS = H(0.75, 0.25) - (0 + 1) / 2 bits.
    maps = np.array([[[[1.0, 0.0], [1.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]]])
    h_mix = -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25))
    np.testing.assert_allclose(head_js_distance(maps), [np.sqrt(h_mix - 0.5)])


@pytest.mark.parametrize("method", ["pca", "mds"])
def test_head_embedding_covers_every_head_of_both_models(method: str) -> None:
    maps = {"vanilla": softmax_maps(3, 2, 6), "refined": softmax_maps(4, 2, 6, seed=5)}
    emb = head_embedding(maps, method=method)
    assert emb.coords.shape == (14, 2)
    assert emb.model.tolist().count("refined") == 8
    assert emb.layer.max() == 3 and emb.head.max() == 1
    np.testing.assert_allclose(emb.relative_depth[-1], 1.0)


def test_identity_heads_embed_to_one_point() -> None:
    emb = head_embedding({"m": identity_maps(2, 3, 5)})
    np.testing.assert_allclose(emb.coords, 0.0, atol=1e-9)


def test_kernel_pca_embedding_equals_pca_on_the_features() -> None:
    from sklearn.decomposition import PCA

    from analysis.normalization import normalize_rows

    rng = np.random.default_rng(0)
    patterns = rng.random((3, 1, 1, 20, 20))
    weights = rng.random((3, 4, 3, 1, 1)) * np.array([5.0, 2.0, 1.0])[:, None, None, None, None]
    maps = (patterns * weights).sum(axis=0) + 0.01 * rng.random((4, 3, 20, 20))  # well-separated components
    emb = head_embedding({"m": maps})
    flat = normalize_rows(maps).reshape(12, -1)
    flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    reference = PCA(2).fit(flat)
    np.testing.assert_allclose(np.abs(emb.coords), np.abs(reference.transform(flat)), atol=1e-8)
    np.testing.assert_allclose(emb.explained_variance_ratio, reference.explained_variance_ratio_, atol=1e-10)


def _scipy_js_matrix(maps: np.ndarray) -> np.ndarray:
    """Independent reference: scipy's Jensen-Shannon distance (base 2) of every row pair, in float64."""
    from scipy.spatial.distance import jensenshannon

    maps = maps.astype(np.float64)
    layers, heads = maps.shape[:2]
    out = np.zeros((layers, heads, heads))
    for layer in range(layers):
        for a in range(heads):
            for b in range(heads):
                if a != b:
                    out[layer, a, b] = np.mean(jensenshannon(maps[layer, a], maps[layer, b], base=2, axis=-1))
    return out


@pytest.mark.parametrize("spread", [1.0, 1e-2, 1e-3, 1e-5])
def test_js_of_float32_maps_equals_a_float64_reference(spread: float) -> None:
    # spread 1: unrelated heads (the float32 fast path); small spreads: nearly identical heads, where the entropy
    # difference cancels and rows are computed again in float64. Sparse rows (exact zeros) included.
    rng = np.random.default_rng(3)
    base = rng.random((1, 1, 12, 12))
    maps = base + spread * rng.random((2, 5, 12, 12))
    maps[..., :3] *= rng.random((2, 5, 12, 3)) > 0.5
    maps = (maps / maps.sum(-1, keepdims=True)).astype(np.float32)
    got = head_js_matrix(maps, "none")
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, _scipy_js_matrix(maps), atol=1e-6)


def test_head_embedding_of_float32_maps_in_column_blocks_equals_float64(monkeypatch) -> None:
    import analysis.head_diversity as module

    maps = {"a": softmax_maps(3, 4, 9, seed=1), "b": softmax_maps(2, 4, 9, seed=2)}
    expected = head_embedding(maps)  # float64 maps: one product
    monkeypatch.setattr(module, "_GRAM_COLUMNS", 10)  # 81 features in 9 blocks
    got = head_embedding({k: v.astype(np.float32) for k, v in maps.items()})
    np.testing.assert_allclose(np.abs(got.coords), np.abs(expected.coords), atol=1e-5)
    np.testing.assert_allclose(got.explained_variance_ratio, expected.explained_variance_ratio, atol=1e-6)


def test_one_head_layer_has_zero_diversity_in_every_pipeline() -> None:
    from analysis.attention_metrics import compute_map_metrics

    maps = softmax_maps(3, 1, 5)  # one head, K = 1, 2 x 2 grid
    np.testing.assert_array_equal(head_diversity(maps), [0.0, 0.0, 0.0])
    metrics = compute_map_metrics(maps, 1, (2, 2), (4, 4))
    np.testing.assert_array_equal(metrics["head_diversity"], head_diversity(maps))
    np.testing.assert_array_equal(metrics["head_js"], head_js_distance(maps))


def _near_identical_heads(heads: int = 6, tokens: int = 60, spread: float = 1e-4) -> np.ndarray:
    """(1, H, N, N) row-stochastic heads that differ from one map by a relative ``spread``: collapse."""
    rng = np.random.default_rng(3)
    base = softmax_maps(1, 1, tokens, seed=4)
    maps = base * (1.0 + spread * rng.standard_normal((1, heads, tokens, tokens)))
    return maps / maps.sum(axis=-1, keepdims=True)


def _reference_effective_heads(maps: np.ndarray) -> float:
    """exp(entropy) of the normalised singular values, by a float64 SVD of the unit-norm stack."""
    flat = maps[0].reshape(maps.shape[1], -1).astype(np.float64)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    s = np.linalg.svd(flat, compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def test_effective_heads_of_near_identical_float32_heads_matches_a_float64_svd() -> None:
    maps = _near_identical_heads()
    reference = _reference_effective_heads(maps)
    assert 1.0 < reference < 1.1
    # Capture gives float32 maps; the answer must not depend on that.
    got = effective_number_of_heads(maps.astype(np.float32), "none")[0]
    assert abs(got - _reference_effective_heads(maps.astype(np.float32))) < 1e-5

