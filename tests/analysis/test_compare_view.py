"""Half-precision display views (issue 10): float16 maps for drawing, every metric from a float32 capture."""

from __future__ import annotations

import copy
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

import analysis.compare_view as compare_view
import refiner
from analysis.attention_metrics import MetricSettings, compute_map_metrics
from analysis.compare_view import (HALF_PRECISION_BYTES, CompareSettings, ModelView, capture_metrics, capture_view,
                                   compare_figures, model_geometry, view_metrics)
from app.map_store import MapStore, nbytes_of
from refiner import LoadedModel
from refiner.loading import describe
from refiner.official_refiner_vit import refiner_vit_s

BOX = (8.0, 4.0, 24.0, 28.0)
# float16 keeps 11 significant bits: a drawn value is within 2^-11 of its float32 value relative to the largest
# magnitude it is drawn with, plus float16's smallest subnormal step.
HALF_RTOL, HALF_ATOL = 2.0 ** -11, 2.0 ** -24


def loaded(model: torch.nn.Module, name: str) -> LoadedModel:
    model.eval()
    return LoadedModel(model=model, info=describe(model, name=name, source=name, kind="random", weights="test",
                                                  weights_sha256="0"), label=name)


@pytest.fixture(scope="module")
def models() -> dict:
    """A vanilla ViT, a paper-mode refined ViT (negative effective maps) and an official Refiner-ViT (shared blocks
    without a softmax map), all tiny."""
    torch.manual_seed(0)
    refined = refiner.create_model("refined_vit_micro_patch4_32")
    official = refiner_vit_s(img_size=48, depth=4, embed_dim=32, num_heads=2, num_classes=7)
    with torch.no_grad():  # BN away from its initial identity, so refinement changes the maps (and makes negatives)
        for model in (refined, official):
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.3, 0.3)
    return {"vanilla": loaded(refiner.create_model("vit_micro_patch4_32"), "vanilla"),
            "refined": loaded(refined, "refined"), "official": loaded(official, "official")}


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 50, 3), dtype=np.uint8))


def direct_metrics(exact: ModelView, settings: MetricSettings, box=BOX) -> dict:
    maps = exact.maps(settings.map_kind)
    return compute_map_metrics(maps, exact.num_prefix_tokens, exact.grid, exact.patch_size, settings, box,
                               class_token_index=exact.class_token_index)


def assert_same_metrics(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=0, err_msg=key)


def assert_equal_metrics(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


OTHER_SETTINGS = MetricSettings(normalize="clip_rownorm", tau=0.3, map_kind="softmax")


@pytest.mark.parametrize("name", ["vanilla", "refined", "official"])
def test_float16_view_draws_half_maps_and_its_metrics_come_from_a_float32_capture(models, image, name) -> None:
    exact = capture_view(models[name], image, precision="float32")
    half = capture_view(models[name], image, precision="float16")
    assert exact.exact and exact.effective.dtype == np.float32
    assert not half.exact and half.effective.dtype == half.softmax.dtype == np.float16
    assert np.shares_memory(half.softmax, half.effective) == (name == "vanilla")
    # A float16 view's metrics come from a float32 capture of their own: equal bit for bit to those of the float32
    # view's maps (the softmax kind of shared blocks: their effective map, in both), for any settings and box.
    for settings, box in ((MetricSettings(), BOX), (OTHER_SETTINGS, BOX), (MetricSettings(), None)):
        calls = []
        got = view_metrics(half, settings, box, exact_metrics=lambda: calls.append(1) or capture_metrics(
            models[name], image, settings, box))
        assert calls == [1]
        assert_equal_metrics(got, direct_metrics(exact, settings, box))
        # A float32 view computes them from its own maps.
        assert_equal_metrics(view_metrics(exact, settings, box, exact_metrics=lambda: pytest.fail("captured")),
                             direct_metrics(exact, settings, box))
    # The displayed maps are the float32 ones rounded to float16 (the softmax of shared blocks: their effective map).
    for kind in ("softmax", "effective"):
        np.testing.assert_allclose(half.maps(kind), exact.maps(kind), rtol=HALF_RTOL, atol=HALF_ATOL)
    np.testing.assert_array_equal(half.has_softmax, exact.has_softmax)
    if name == "official":
        assert not half.has_softmax.all()
        shared = ~half.has_softmax
        np.testing.assert_array_equal(half.softmax[shared], half.effective[shared])
    if name != "vanilla":
        assert exact.effective.min() < 0  # refined maps are negative somewhere: the sign must survive


@pytest.mark.parametrize("name", ["refined", "official"])
def test_drawn_figures_of_a_float16_view_are_the_float32_ones_within_half_precision(models, image, name) -> None:
    exact = capture_view(models[name], image, precision="float32")
    half = capture_view(models[name], image, precision="float16")
    layer = int(np.argmax(exact.refined)) + 1
    query = exact.num_prefix_tokens + 3
    for head, kind in (("mean", "effective"), ("max", "softmax"), ("1", "effective")):
        settings = CompareSettings(layer_a=layer, layer_b=layer, head=head, query_a=query, query_b=query,
                                   map_kind=kind)
        figs = [compare_figures([v, v], ["a", "b"], settings, [["x"] * 10] * 2) for v in (exact, half)]
        # Each drawn value is a float16-rounded map entry (error <= 2^-11 of its magnitude), a mean or maximum of
        # such entries over heads, or a difference of two: within 2 * 2^-11 of the layer's largest magnitude.
        scale = max(float(np.abs(exact.maps(k)[layer - 1]).max()) for k in ("softmax", "effective"))
        atol = 2 * HALF_RTOL * scale + HALF_ATOL
        assert list(figs[0]) == list(figs[1])
        for stem in figs[0]:
            for want, got in zip(figs[0][stem].data, figs[1][stem].data):
                if getattr(want, "type", None) != "heatmap":
                    continue
                z_want, z_got = np.asarray(want.z, dtype=float), np.asarray(got.z, dtype=float)
                assert np.asarray(got.z).dtype != np.float16  # widened for plotly
                np.testing.assert_allclose(z_got, z_want, rtol=0, atol=atol, err_msg=f"{stem} {head} {kind}")
                if want.zmin is not None:  # the colour range: from the drawn values, within float16 of the exact
                    np.testing.assert_allclose([got.zmin, got.zmax], [want.zmin, want.zmax], rtol=0, atol=atol)
                    assert (want.zmin < 0) == (got.zmin < 0)  # the same diverging / sequential choice
            layouts = [f[stem].layout.to_plotly_json() for f in figs]
            for axis in (k for k in layouts[0] if k.startswith("coloraxis")):  # shared scales of the head grids
                want, got = layouts[0][axis], layouts[1][axis]
                np.testing.assert_allclose([got["cmin"], got["cmax"]], [want["cmin"], want["cmax"]], rtol=0,
                                           atol=atol, err_msg=f"{stem} {axis}")


def test_a_large_view_is_half_precision_and_its_store_bytes_are_halved(models, image, monkeypatch) -> None:
    """The "auto" rule: float32 up to `HALF_PRECISION_BYTES` of maps, float16 above; the store counts what is held."""
    small = capture_view(models["refined"], image)
    assert small.exact  # small models behave as before
    maps_bytes = small.effective.nbytes + small.softmax.nbytes
    assert maps_bytes <= HALF_PRECISION_BYTES
    monkeypatch.setattr(compare_view, "HALF_PRECISION_BYTES", maps_bytes - 1)
    large = capture_view(models["refined"], image)
    assert not large.exact
    store: MapStore[ModelView] = MapStore(10 * 2**30)
    store.get("small", lambda: small)
    small_bytes = store.stats().bytes
    store.get("large", lambda: large)
    large_bytes = store.stats().bytes - small_bytes
    assert large_bytes == small_bytes - maps_bytes // 2  # the maps at half their bytes
    assert not large.effective.flags.writeable


@pytest.mark.parametrize("name", ["vanilla", "refined", "official"])
def test_a_view_made_to_be_drawn_casts_the_capture_straight_to_float16(models, image, name) -> None:
    """The float16 arrays of a view made only to be drawn come from the captured tensors: equal bit for bit to the
    float32 maps rounded to float16 (the softmax of shared blocks: their effective map)."""
    exact = capture_view(models[name], image, precision="float32")
    direct = capture_view(models[name], image, precision="float16")
    for kind in ("softmax", "effective"):
        assert direct.maps(kind).dtype == np.float16
        np.testing.assert_array_equal(direct.maps(kind), exact.maps(kind).astype(np.float16))
    assert np.shares_memory(direct.softmax, direct.effective) == (name == "vanilla")
    assert not direct.exact


@pytest.mark.parametrize("kind", ["vanilla", "official"])
def test_a_view_made_to_be_drawn_makes_no_float32_copy_of_its_maps(kind) -> None:
    """The numpy memory a float16 capture allocates stays below one float32 copy of the maps (it holds the float16
    maps: half of it); before, the float32 copy and then the float16 one were made (1.5 of it)."""
    torch.manual_seed(0)
    model = (refiner.create_model("vit_micro_patch4_32", img_size=128) if kind == "vanilla" else
             refiner_vit_s(img_size=128, patch_size=4, depth=2, embed_dim=32, num_heads=2, num_classes=7))
    large = loaded(model, kind)  # N = 1025: 8-17 MB of float32 maps, far above the view's other arrays
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8))
    tracemalloc.start()
    try:
        view = capture_view(large, picture, precision="float16")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    float32_bytes = 2 * nbytes_of(view)  # the float16 maps (one array for a vanilla model's both kinds), in float32
    assert view.effective.dtype == np.float16 and float32_bytes > 8 * 2**20
    assert nbytes_of(view) <= peak < 0.75 * float32_bytes, (peak, float32_bytes)


def test_maps_beyond_float16_range_come_out_of_the_capture_in_float32(models, image) -> None:
    """`run_with_capture` keeps float32 when a value would overflow float16, whatever the size asked for."""
    from analysis.per_image import fits_float16, run_with_capture

    assert fits_float16([torch.tensor([0.5, -65504.0])]) and not fits_float16([torch.ones(2), torch.tensor([7e4])])
    refined = copy.deepcopy(models["refined"].model)
    x = models["refined"].info.transform(image)[None]
    assert run_with_capture(refined, x, float16_above_bytes=0).effective.dtype == np.float16
    with torch.no_grad():
        for module in refined.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.mul_(1e6)  # refined maps far beyond +-65504
    captured = run_with_capture(refined, x, float16_above_bytes=0)
    assert np.abs(captured.effective).max() > 65504 and captured.effective.dtype == np.float32
    assert captured.softmax.dtype == np.float32
    assert run_with_capture(refined, x).effective.dtype == np.float32  # not asked: float32


def test_unknown_precision_is_refused(models, image) -> None:
    with pytest.raises(ValueError, match="precision"):
        capture_view(models["vanilla"], image, precision="bfloat16")


def family_cases() -> list:
    """`FAMILY_CASES` of the capture tests (one model per attention family, with its geometry)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "refiner" / "test_capture_families.py"
    spec = importlib.util.spec_from_file_location("capture_family_cases", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [(case, module.build) for case in module.FAMILY_CASES]


def test_model_geometry_is_the_geometry_of_its_views(models, image) -> None:
    """The sidebar's pickers take `model_geometry` (no capture): it must be what a captured view has, for every
    attention family (prefix tokens with and without CLS, registers, hybrids, CaiT's class-attention layers left out
    of the view) and for our vanilla, refined and official models."""
    cases = [(name, model) for name, model in models.items()]
    for case, build in family_cases():
        built = build(case)
        cases.append((case.id, LoadedModel(model=built, info=describe(
            built, name=case.name, source=case.id, kind="random", weights="test", weights_sha256="0"), label=case.id)))
    for name, model in cases:
        geometry = model_geometry(model)
        assert geometry == capture_view(model, image).geometry, name
