"""`LayerMaps`: per-layer arrays read like one (L, H, Q, N) array, and the metrics give the same numbers from them."""

import numpy as np
import pytest

from analysis.attention_metrics import MetricSettings, compute_map_metrics
from analysis.layer_maps import LayerMaps
from analysis.normalization import as_float_array


@pytest.fixture()
def maps() -> np.ndarray:
    values = np.random.default_rng(0).standard_normal((4, 3, 17, 17)).astype(np.float32)
    values[:2] = np.abs(values[:2])  # two softmax-like layers, two with negative entries (refined)
    return values


def test_indexing_reads_layers_without_copies_and_stacks_only_what_is_asked(maps) -> None:
    layers = LayerMaps(list(maps))
    assert layers.shape == maps.shape and layers.ndim == 4 and len(layers) == 4 and layers.dtype == np.float32
    assert layers.nbytes == maps.nbytes and layers.size == maps.size
    assert np.shares_memory(layers[2], maps[2]) and np.shares_memory(layers[1, 2], maps[1, 2])
    np.testing.assert_array_equal(layers[..., 0:1, :], maps[..., 0:1, :])  # the CLS rows of every layer
    np.testing.assert_array_equal(layers[:, 1], maps[:, 1])                  # one head of every layer
    np.testing.assert_array_equal(layers[1:3, 0, 5], maps[1:3, 0, 5])
    assert as_float_array(layers) is layers
    with pytest.raises(TypeError, match="stacked"):
        np.asarray(layers)


def test_layers_must_agree_in_shape_and_be_float(maps) -> None:
    with pytest.raises(ValueError, match="layer 1"):
        LayerMaps([maps[0], maps[1, :2]])
    with pytest.raises(TypeError, match="float32"):
        LayerMaps([maps[0].astype(np.float16)])
    with pytest.raises(ValueError, match="at least one"):
        LayerMaps([])


@pytest.mark.parametrize("settings", [MetricSettings(), MetricSettings(normalize="none", block_threshold=0.5),
                                      MetricSettings(head_fusion="max", discard_ratio=0.5, normalize="clip_rownorm")])
def test_every_metric_is_the_same_from_layer_maps_as_from_the_stacked_array(maps, settings) -> None:
    stacked = compute_map_metrics(maps, 1, (4, 4), (16, 16), settings, (0.0, 0.0, 30.0, 30.0))
    layered = compute_map_metrics(LayerMaps(list(maps)), 1, (4, 4), (16, 16), settings, (0.0, 0.0, 30.0, 30.0))
    assert set(stacked) == set(layered)
    for key in stacked:
        np.testing.assert_array_equal(layered[key], stacked[key], err_msg=key)
