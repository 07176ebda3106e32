"""Linear CKA: self-similarity, invariances, unbiased minibatch form."""

import numpy as np
import pytest

from analysis.cka import MinibatchCKA, cka_matrix, linear_cka


@pytest.fixture
def features() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((40, 12))


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_with_itself_is_one(features: np.ndarray, debiased: bool) -> None:
    assert linear_cka(features, features, debiased=debiased) == pytest.approx(1.0)


@pytest.mark.parametrize("debiased", [False, True])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(features: np.ndarray, debiased: bool) -> None:
    rng = np.random.default_rng(1)
    other = features @ rng.standard_normal((12, 7)) + 0.3 * rng.standard_normal((40, 7))
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    base = linear_cka(features, other, debiased=debiased)
    assert linear_cka(3.5 * features @ q, other, debiased=debiased) == pytest.approx(base)
    assert 0.0 < base < 1.0


def test_feature_and_gram_forms_agree(features: np.ndarray) -> None:
    other = np.random.default_rng(2).standard_normal((40, 50))  # p > n takes the Gram path
    tall = np.random.default_rng(3).standard_normal((40, 5))  # n > p takes the feature path
    assert linear_cka(features, tall) == pytest.approx(cka_matrix([features], [tall])[0, 0])
    assert linear_cka(features, other) == pytest.approx(cka_matrix([features], [other])[0, 0])


def test_matrix_within_model_has_unit_diagonal(features: np.ndarray) -> None:
    layers = [features, features * 2, np.random.default_rng(4).standard_normal((40, 3))]
    matrix = cka_matrix(layers)
    np.testing.assert_allclose(np.diagonal(matrix), 1.0)
    np.testing.assert_allclose(matrix[0, 1], 1.0)
    np.testing.assert_allclose(matrix, matrix.T)


def test_minibatch_cka_streams_and_matches_self_similarity() -> None:
    rng = np.random.default_rng(5)
    stream = MinibatchCKA(2, 1)
    for _ in range(4):
        x = rng.standard_normal((16, 6))
        stream.update([x, rng.standard_normal((16, 6))], [x @ np.linalg.qr(rng.standard_normal((6, 6)))[0]])
    result = stream.compute()
    assert result.shape == (2, 1)
    assert result[0, 0] == pytest.approx(1.0)
    assert abs(result[1, 0]) < 0.2
    within = MinibatchCKA(2)
    within.update([rng.standard_normal((8, 3)), rng.standard_normal((8, 3))])
    np.testing.assert_allclose(np.diagonal(within.compute()), 1.0)
    with pytest.raises(ValueError, match="at least 4"):
        within.update([np.ones((3, 2)), np.ones((3, 2))])
