"""The layer-by-layer metric suite against a straightforward float64 reference written from the definitions.

`analysis.attention_metrics.compute_map_metrics` normalises each layer once (float64, reused buffers), shares
the row entropies between the entropy metrics and the Jensen-Shannon pass, divides the patch-block contractions
by block row sums instead of renormalising, and computes the cross-layer cosines head by head from transposed
layers. The reference below does none of that: explicit loops over layers, heads and rows, in float64.
"""

from __future__ import annotations

import numpy as np
import pytest

import analysis.blas_threads as blas_threads
from analysis.attention_metrics import MetricSettings, compute_map_metrics
from analysis.blas_threads import Workspace, map_in_threads
from analysis.head_diversity import layer_js
from analysis.normalization import normalize_rows, row_entropy_nats

from analysis_test_maps import softmax_maps


def _normalise(maps: np.ndarray, mode: str) -> np.ndarray:
    w = maps.astype(np.float64)
    if mode == "none":
        return w
    w = np.abs(w) if mode == "abs_rownorm" else np.maximum(w, 0)
    out = np.zeros_like(w)
    for index in np.ndindex(w.shape[:-1]):
        total = w[index].sum()
        if total != 0:
            out[index] = w[index] / total
    return out


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """sqrt(JS / ln 2) of two rows from KL(p || m) and KL(q || m), term by term (0 log 0 = 0; a zero row has none)."""
    m = 0.5 * (p + q)
    divergence = 0.5 * sum(a * np.log(a / c) for a, c in zip(p, m) if a > 0) + \
        0.5 * sum(b * np.log(b / c) for b, c in zip(q, m) if b > 0)
    return float(np.sqrt(np.clip(divergence / np.log(2.0), 0.0, 1.0)))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def _reference(maps: np.ndarray, k: int, grid: tuple, patch: tuple, settings: MetricSettings) -> dict:
    rows = _normalise(maps, settings.normalize)
    layers, heads, n, _ = rows.shape
    gh, gw = grid
    coords = [(i // gw, i % gw) for i in range(gh * gw)]
    out = {key: np.zeros((layers, heads)) for key in ("distance_px", "distance_patches", "grid_mass", "band_mass",
                                                        "diagonal_mass", "prefix_mass", "cls_entropy",
                                                        "patch_entropy", "negative_fraction")}
    head_js = np.zeros(layers)
    head_cos = np.zeros((layers, heads, heads))
    effective = np.zeros(layers)
    for l in range(layers):
        for h in range(heads):
            r = rows[l, h]
            dist_px = dist_pt = grid_mass = 0.0
            for i in range(n - k):
                block = r[k + i, k:]
                total = block.sum()
                if total == 0:
                    continue
                block = block / total
                for j in range(n - k):
                    (yi, xi), (yj, xj) = coords[i], coords[j]
                    dist_px += block[j] * np.hypot((yi - yj) * patch[0], (xi - xj) * patch[1])
                    dist_pt += block[j] * np.hypot(yi - yj, xi - xj)
                    grid_mass += block[j] * (max(abs(yi - yj), abs(xi - xj)) <= settings.grid_radius)
            out["distance_px"][l, h] = dist_px / (n - k)
            out["distance_patches"][l, h] = dist_pt / (n - k)
            out["grid_mass"][l, h] = grid_mass / (n - k)
            out["band_mass"][l, h] = np.mean([sum(r[i, j] for j in range(n) if abs(i - j) <= settings.band_width)
                                              for i in range(n)])
            out["diagonal_mass"][l, h] = np.mean(np.diag(r))
            out["prefix_mass"][l, h] = np.mean([r[i, :k].sum() for i in range(k, n)])
            entropies = [_entropy(r[i]) / np.log(n) for i in range(n)]
            out["cls_entropy"][l, h] = entropies[0]
            out["patch_entropy"][l, h] = np.mean(entropies[k:])
            raw = maps[l, h].astype(np.float64)
            out["negative_fraction"][l, h] = np.maximum(-raw, 0).sum() / np.abs(raw).sum()
            for g in range(heads):
                head_cos[l, h, g] = np.mean([_cosine(r[:, t], rows[l, g][:, t]) for t in range(n)])
        pairs = [(a, b) for a in range(heads) for b in range(heads) if a != b]
        head_js[l] = np.mean([np.mean([_js_distance(rows[l, a, i], rows[l, b, i]) for i in range(n)])
                              for a, b in pairs]) if pairs else 0.0
        flat = rows[l].reshape(heads, -1)
        flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
        s = np.linalg.svd(flat, compute_uv=False)
        p = s / s.sum()
        effective[l] = np.exp(_entropy(p))
    cos = np.array([[[[_cosine(rows[p, h][:, t], rows[q, h][:, t]) for q in range(layers)] for p in range(layers)]
                     for t in range(n)] for h in range(heads)])  # (H, N, L, L)
    fused = rows.mean(axis=1) + np.eye(n)
    rollout = np.eye(n)
    for l in range(layers):
        rollout = (fused[l] / fused[l].sum(axis=1, keepdims=True)) @ rollout
    diversity = np.zeros(layers) if heads < 2 else 1.0 - (head_cos.sum((1, 2)) - np.trace(head_cos, axis1=1, axis2=2)
                                                            ) / (heads * (heads - 1))
    out.update(similarity=cos.mean(axis=(0, 1)), similarity_share=(cos > settings.tau).mean(axis=(0, 1)),
               head_cosine=head_cos, head_diversity=diversity, head_js=head_js, effective_heads=effective,
               rollout=rollout)
    return out


def _near_identical(layers: int, heads: int, tokens: int, spread: float) -> np.ndarray:
    rng = np.random.default_rng(5)
    base = softmax_maps(layers, 1, tokens, seed=6)
    maps = base * (1.0 + spread * rng.standard_normal((layers, heads, tokens, tokens)))
    return maps / maps.sum(axis=-1, keepdims=True)


CASES = {
    # name: (maps, K, grid, patch, settings)
    "one layer, one head": (softmax_maps(1, 1, 1 + 6), 1, (2, 3), (4, 4), MetricSettings()),
    "one layer, three heads": (softmax_maps(1, 3, 1 + 4, seed=2), 1, (2, 2), (8, 4), MetricSettings()),
    "refined-like, negative entries": (
        softmax_maps(3, 4, 1 + 9, seed=3) + 0.05 * np.random.default_rng(3).standard_normal((3, 4, 10, 10)),
        1, (3, 3), (4, 4), MetricSettings(band_width=2, grid_radius=0)),
    "near-identical heads (collapse)": (_near_identical(2, 4, 1 + 9, 1e-5), 1, (3, 3), (16, 16), MetricSettings()),
}


def _with_zero_rows() -> np.ndarray:
    """Effective-like maps where clip_rownorm leaves whole rows (and a column) at zero."""
    maps = softmax_maps(2, 3, 1 + 4, seed=7) - 0.05
    maps[0, 1, 2] = -np.abs(maps[0, 1, 2])  # an all-negative row: zero after clipping
    maps[1, 0, :, 3] = -1.0  # an all-negative column: zero column for the cosines
    return maps


CASES["zero rows and columns after clipping"] = (_with_zero_rows(), 1, (2, 2), (4, 4),
                                                 MetricSettings(normalize="clip_rownorm"))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(CASES))
def test_suite_equals_the_straightforward_reference(case: str, dtype: type) -> None:
    maps, k, grid, patch, settings = CASES[case]
    maps = maps.astype(dtype)
    got = compute_map_metrics(maps, k, grid, patch, settings)
    expected = _reference(maps, k, grid, patch, settings)
    # float32 maps are read as they are (each layer normalised in float64), so only the float32 steps (rollout,
    # cross-layer cosines) leave float32 rounding; float64 maps agree to rounding.
    tolerance = {np.float64: 1e-9, np.float32: 2e-6}[dtype]
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=tolerance, atol=tolerance, err_msg=key)


def test_js_of_near_identical_float32_rows_keeps_float64_accuracy() -> None:
    # Every head of an untrained model is nearly the same map: the whole layer is in the cancelling regime.
    maps = _near_identical(1, 5, 40, 1e-5).astype(np.float32)
    rows = normalize_rows(maps[0], "abs_rownorm", np.float64)
    got = layer_js(rows, row_entropy_nats(rows))
    exact = _normalise(maps, "abs_rownorm")[0]
    for a in range(5):
        for b in range(5):
            if a != b:
                expected = np.mean([_js_distance(exact[a, i], exact[b, i]) for i in range(40)])
                assert abs(got[a, b] - expected) < 1e-9, (a, b)
                assert expected > 1e-6  # not trivially zero


def test_js_blocks_of_query_rows_do_not_change_the_result(monkeypatch) -> None:
    import analysis.head_diversity as head_diversity

    rows = normalize_rows(softmax_maps(1, 4, 37, seed=9)[0], "none", np.float64)
    entropy = row_entropy_nats(rows)
    whole = layer_js(rows, entropy)
    monkeypatch.setattr(head_diversity, "_JS_BLOCK_ROWS", 5)  # 37 rows in 8 blocks, the last one short
    np.testing.assert_allclose(layer_js(rows, entropy, Workspace()), whole, rtol=1e-13)


def test_threads_do_not_change_any_metric(monkeypatch) -> None:
    maps = softmax_maps(5, 3, 1 + 16, seed=11).astype(np.float32)
    many = compute_map_metrics(maps, 1, (4, 4), (8, 8), box=(0, 0, 16, 24))
    monkeypatch.setattr(blas_threads, "MAX_METRIC_THREADS", 1)
    one = compute_map_metrics(maps, 1, (4, 4), (8, 8), box=(0, 0, 16, 24))
    assert set(one) == set(many)
    for key in one:
        np.testing.assert_array_equal(one[key], many[key], err_msg=key)


def test_workspace_reuses_its_memory_and_map_in_threads_keeps_order() -> None:
    work = Workspace()
    first = work.array("rows", (4, 5))
    again = work.array("rows", (2, 3))
    assert np.shares_memory(first, again) and again.shape == (2, 3)
    assert work.array("rows", (4, 5), np.float32).dtype == np.float32
    assert map_in_threads(lambda index, w: index * index, 7) == [0, 1, 4, 9, 16, 25, 36]
    with pytest.raises(ZeroDivisionError):
        map_in_threads(lambda index, w: 1 // (index - 3), 5)


def test_head_diversity_of_near_identical_float32_heads_matches_float64() -> None:
    # Collapse: 1 - mean cosine is ~1e-9 here. Cosines summed in float32 over N^2 products were off by ~1e-6
    # (9e-6 at N = 785), which made such a layer's diversity read thousands of times too large.
    maps = _near_identical(1, 4, 1 + 63, 1e-4)
    got = compute_map_metrics(maps.astype(np.float32), 1, (7, 9), (8, 8))["head_diversity"]
    rows = _normalise(maps.astype(np.float32), "abs_rownorm")[0]
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    flat = unit.reshape(4, -1)
    cosine = flat @ flat.T / rows.shape[-1]
    expected = 1.0 - (cosine.sum() - np.trace(cosine)) / 12
    assert 0 < expected < 1e-6
    assert abs(got[0] - expected) < 1e-12
