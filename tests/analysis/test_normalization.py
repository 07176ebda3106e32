"""Row normalisation modes for non-stochastic (refined effective) maps."""

import numpy as np
import pytest

from analysis.normalization import normalize_rows, renormalize_rows


def test_modes_on_a_hand_made_row() -> None:
    row = np.array([[0.5, -0.25, 0.25, 0.0]])
    np.testing.assert_allclose(normalize_rows(row, "none"), row)
    np.testing.assert_allclose(normalize_rows(row, "abs_rownorm"), [[0.5, 0.25, 0.25, 0.0]])
    np.testing.assert_allclose(normalize_rows(row, "clip_rownorm"), [[2 / 3, 0.0, 1 / 3, 0.0]])


def test_zero_rows_stay_zero_and_dtype_is_kept() -> None:
    maps = np.array([[-1.0, -2.0], [1.0, 3.0]], dtype=np.float32)
    out = normalize_rows(maps, "clip_rownorm")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.0], [0.25, 0.75]])
    assert np.isfinite(renormalize_rows(np.zeros((3, 3)))).all()


def test_unknown_mode_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="normalize must be one of"):
        normalize_rows(np.eye(2), "softmax")


def test_row_entropy_nats_equals_scipy_with_zeros_and_ignores_negative_entries() -> None:
    from scipy.stats import entropy

    from analysis.normalization import row_entropy_nats

    rng = np.random.default_rng(0)
    rows = rng.random((3, 4, 6, 9)) * (rng.random((3, 4, 6, 9)) > 0.3)
    rows[0, 0, 0] = 0.0
    rows[0, 0, 0, 2] = 1.0  # one-hot: entropy 0
    rows /= rows.sum(-1, keepdims=True)
    for dtype, tolerance in ((np.float64, 1e-12), (np.float32, 1e-6)):
        got = row_entropy_nats(rows.astype(dtype))
        assert got.dtype == np.float64 and got.shape == (3, 4, 6)
        np.testing.assert_allclose(got, entropy(rows, axis=-1), atol=tolerance)
    signed = np.array([[0.5, 0.5, -0.25]])
    np.testing.assert_allclose(row_entropy_nats(signed), [np.log(2.0)])  # as if the -0.25 were not there


def test_normalize_rows_into_a_buffer_equals_a_new_array_and_refuses_a_strided_one() -> None:
    rng = np.random.default_rng(1)
    maps = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    for mode in ("none", "abs_rownorm", "clip_rownorm"):
        out = np.full(maps.shape, np.nan)
        got = normalize_rows(maps[::-1], mode, out=out)  # a non-contiguous input is fine
        assert got is out and got.dtype == np.float64
        np.testing.assert_allclose(got, normalize_rows(maps[::-1].astype(np.float64), mode), rtol=1e-7)
    with pytest.raises(ValueError, match="C-contiguous"):
        normalize_rows(maps, "abs_rownorm", out=np.empty((2, 3, 5, 4)).swapaxes(-1, -2))
