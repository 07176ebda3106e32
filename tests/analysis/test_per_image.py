"""One image through two models: maps, every metric, predictions, comparisons."""

import numpy as np
import pytest
import torch

import refiner
from analysis.attention_metrics import METRICS, MetricSettings
from analysis.per_image import analyze_image, run_with_capture, top_k


@pytest.fixture(scope="module")
def pair() -> dict:
    torch.manual_seed(0)
    return {"vanilla": refiner.create_model("vit_micro_patch4_32").eval(),
            "refined": refiner.create_model("refined_vit_micro_patch4_32").eval()}


def test_analyze_image_returns_maps_metrics_and_comparisons(pair) -> None:
    image = torch.rand(3, 32, 32)
    result = analyze_image(pair, image, box=(8, 8, 24, 24), class_names=[f"c{i}" for i in range(10)])
    assert list(result.models) == ["vanilla", "refined"]
    for name, model_result in result.models.items():
        assert model_result.effective.shape == (4, 4, 65, 65)
        assert set(model_result.metrics) == set(METRICS) - {"rollout_patch_mean"}  # both have a CLS token
        assert len(model_result.top5) == 5 and model_result.top5[0][1].startswith("c")
        probs = [p for _, _, p in model_result.top5]
        assert probs == sorted(probs, reverse=True)
        assert model_result.meta.grid_size == (8, 8)
    vanilla = result.models["vanilla"]
    np.testing.assert_allclose(vanilla.softmax, vanilla.effective)  # a vanilla block multiplies V by its softmax
    assert result.cross_similarity["vanilla|refined"].shape == (4, 4)
    np.testing.assert_allclose(np.diagonal(result.cka["refined"]), 1.0)
    assert result.head_embedding.coords.shape == (32, 2)
    assert len(result.image_sha256) == 64
    again = analyze_image({"vanilla": pair["vanilla"]}, image)
    assert again.image_sha256 == result.image_sha256
    np.testing.assert_allclose(again.models["vanilla"].metrics["similarity"], vanilla.metrics["similarity"])


def test_softmax_settings_read_the_softmax_maps(pair) -> None:
    image = torch.rand(3, 32, 32)
    eff = analyze_image({"r": pair["refined"]}, image).models["r"]
    soft = analyze_image({"r": pair["refined"]}, image, MetricSettings(map_kind="softmax")).models["r"]
    np.testing.assert_allclose(soft.metrics["negative_fraction"], 0.0)
    assert eff.metrics["negative_fraction"].shape == (4, 4)


def test_top_k_orders_probabilities() -> None:
    assert [i for i, _, _ in top_k(np.array([0.1, 3.0, 2.0]), k=2)] == [1, 2]
    with pytest.raises(ValueError, match="one"):
        analyze_image({}, torch.rand(1, 3, 8, 8))


def test_run_with_capture_returns_only_the_kinds_asked_for_and_releases_the_capture(pair) -> None:
    images = torch.rand(2, 3, 32, 32)
    both = run_with_capture(pair["refined"], images)
    only = run_with_capture(pair["refined"], images, kinds=("effective",))
    assert only.softmax is None and only.effective.shape == (2, 4, 4, 65, 65)
    np.testing.assert_array_equal(only.effective, both.effective)
    assert both.map_bytes == 2 * only.map_bytes
    assert not np.allclose(both.softmax, both.effective)  # the refined block changes its softmax map
    with pytest.raises(ValueError, match="kinds"):
        run_with_capture(pair["refined"], images, kinds=("rollout",))


def test_a_vanilla_models_softmax_and_effective_maps_are_one_read_only_array(pair) -> None:
    captured = run_with_capture(pair["vanilla"], torch.rand(1, 3, 32, 32))
    assert captured.softmax is captured.effective and not captured.effective.flags.writeable
    assert captured.map_bytes == captured.effective.nbytes


def test_capture_view_is_the_capture_of_the_models_own_input(pair) -> None:
    """The app's view comes from the same capture path as the CLI (`run_with_capture`), on the model's input."""
    from PIL import Image

    from analysis.compare_view import capture_view
    from refiner import LoadedModel
    from refiner.loading import describe

    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    for name, model in pair.items():
        loaded = LoadedModel(model=model, info=describe(model, name=name, source=name, kind="random",
                                                        weights="test", weights_sha256="0"), label=name)
        view = capture_view(loaded, image)
        x = loaded.info.transform(image)[None]
        with torch.no_grad(), refiner.capture_attention(model) as rec:
            logits = model(x)
        np.testing.assert_allclose(view.effective, rec.stacked("effective")[0].numpy(), atol=1e-6)
        np.testing.assert_allclose(view.softmax, rec.stacked("softmax")[0].numpy(), atol=1e-6)
        np.testing.assert_allclose(view.probs, logits.softmax(-1)[0].numpy(), atol=1e-6)
        assert view.has_softmax.all() and view.picture.shape == (32, 32, 3)
        assert np.shares_memory(view.softmax, view.effective) == (name == "vanilla")


@pytest.mark.parametrize("kind", ["effective", "softmax"])
def test_capture_layer_maps_are_the_captured_maps_of_one_kind_with_no_stacked_copy(pair, kind) -> None:
    """The metrics' capture: each layer is the captured tensor's own memory, equal to `run_with_capture`'s stacked
    maps; numpy allocates nothing of the maps' size (the stacked capture allocates all of them)."""
    import tracemalloc

    from analysis.per_image import capture_layer_maps

    model = refiner.create_model("refined_vit_micro_patch4_32", img_size=96).eval()  # N = 577: 5 MB per kind
    image = torch.rand(3, 96, 96)
    stacked = run_with_capture(model, image[None])
    tracemalloc.start()
    try:
        captured = capture_layer_maps(model, image, kind)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    want = stacked.effective if kind == "effective" else stacked.softmax
    assert captured.maps.shape == want.shape[1:] and captured.maps.dtype == np.float32
    for layer in range(len(captured.maps)):
        np.testing.assert_array_equal(captured.maps[layer], want[0, layer])
    assert peak < 0.1 * captured.maps.nbytes, (peak, captured.maps.nbytes)
    np.testing.assert_array_equal(captured.logits, stacked.logits[0])
    assert captured.has_softmax.all() and captured.meta.grid_size == stacked.meta.grid_size
    with pytest.raises(ValueError, match="kind"):
        capture_layer_maps(model, image, "rollout")


def test_capture_layer_maps_of_shared_blocks_take_their_effective_map_for_softmax() -> None:
    from analysis.per_image import capture_layer_maps
    from refiner.official_refiner_vit import refiner_vit_s

    torch.manual_seed(0)
    model = refiner_vit_s(img_size=48, depth=4, embed_dim=32, num_heads=2, num_classes=7).eval()
    image = torch.rand(3, 48, 48)
    softmax, effective = (capture_layer_maps(model, image, kind) for kind in ("softmax", "effective"))
    assert not softmax.has_softmax.all()
    for layer, own in enumerate(softmax.has_softmax):
        if not own:
            np.testing.assert_array_equal(softmax.maps[layer], effective.maps[layer])
