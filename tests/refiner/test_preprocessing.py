"""Preprocessing equals the model's own evaluation transform (timm's create_transform) and maps boxes with it."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import refiner
from refiner.preprocessing import Preprocessing


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


# Different crop_pct (0.9, 0.95, 1.0), interpolations, means and input sizes (224, 518).
TIMM_MODELS = ["vit_small_patch16_224", "deit_tiny_patch16_224", "vit_base_patch16_clip_224",
               "eva02_tiny_patch14_224", "vit_small_patch14_dinov2", "beit_base_patch16_224",
               "vit_betwixt_patch16_reg4_gap_256"]


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_equals_timm_eval_transform(name: str) -> None:
    model = timm.create_model(name, pretrained=False, depth=1)
    expected = create_transform(**resolve_data_config(model=model))
    prep = Preprocessing.from_model(model)
    for size in ((300, 200), (200, 300), (97, 61)):  # landscape, portrait, smaller than the input (upscaled)
        image = photo(*size)
        ours, theirs = prep.transform(image), expected(image)
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max().item() <= 1e-6


def test_loaded_timm_model_transform_keeps_crop_pct() -> None:
    loaded = refiner.load_model("random:vit_small_patch16_224")
    assert loaded.info.preprocessing.crop_pct == pytest.approx(0.9)
    image = photo(320, 240)
    expected = create_transform(**resolve_data_config(model=loaded.model))(image)
    assert (loaded.info.transform(image) - expected).abs().max().item() <= 1e-6
    assert loaded.info.view(image).size == (224, 224)


def test_crop_pct_above_one_pads_like_timm() -> None:
    """Refiner-ViT-L's released crop_pct is 1.13: resized below the input, then padded by the centre crop (a bug
    refused it, so random:refiner_vit_l and the official Refiner-ViT-L weights did not load)."""
    loaded = refiner.load_model("random:refiner_vit_l?img_size=64")
    prep = loaded.info.preprocessing
    assert prep.crop_pct == pytest.approx(1.13) and prep.img_size == (64, 64)
    config = {"input_size": (3, 64, 64), "interpolation": "bicubic", "mean": prep.mean, "std": prep.std,
              "crop_pct": 1.13, "crop_mode": "center"}
    for size in ((300, 200), (97, 61)):
        image = photo(*size)
        assert (prep.transform(image) - create_transform(**config)(image)).abs().max().item() <= 1e-6


def test_built_size_wins_over_the_pretrained_config() -> None:
    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=1, img_size=(160, 96))
    prep = Preprocessing.from_model(model)
    assert prep.img_size == (160, 96)
    assert prep.transform(photo(300, 200)).shape == (3, 160, 96)


def test_grey_model_and_recorded_mapping() -> None:
    prep = Preprocessing.from_mapping({"img_size": [48, 48], "in_chans": 1, "mean": [0.5], "std": [0.5]})
    assert prep.input_size == (1, 48, 48) and prep.crop_pct == 1.0
    white = Image.new("RGB", (48, 48), (255, 255, 255))
    x = prep.transform(white)
    assert x.shape == (1, 48, 48) and torch.allclose(x, torch.ones_like(x))
    # RGB statistics on a grey model: the mean of the channels.
    assert Preprocessing.from_mapping({"img_size": 8, "in_chans": 1, "mean": [0.2, 0.4, 0.6],
                                       "std": [1, 1, 1]}).mean == (pytest.approx(0.4),)


@pytest.mark.parametrize("bad, word", [({"img_size": [0, 4]}, "positive"), ({"std": [0.0, 1, 1]}, "std"),
                                       ({"crop_pct": -0.5}, "crop_pct"), ({"crop_mode": "zoom"}, "crop_mode"),
                                       ({"interpolation": "magic"}, "interpolation"),
                                       ({"img_size": "big"}, "preprocessing")])
def test_bad_records_are_refused_with_the_field(bad, word) -> None:
    with pytest.raises(ValueError, match=word):
        Preprocessing.from_mapping({"img_size": [8, 8], "in_chans": 3, **bad})


@pytest.mark.parametrize("mode", ["center", "squash", "border"])
@pytest.mark.parametrize("target", [(224, 224), (96, 160)])
@pytest.mark.parametrize("size", [(300, 200), (200, 300), (640, 480)])
def test_map_box_follows_the_pixels(mode: str, target, size) -> None:
    """A white box drawn on the original lands where map_box says, within a pixel."""
    prep = Preprocessing(input_size=(3, *target), crop_pct=0.875, crop_mode=mode, interpolation="bilinear")
    width, height = size
    box = (int(width * 0.4), int(height * 0.45), int(width * 0.55), int(height * 0.6))  # near the centre: kept
    array = np.zeros((height, width, 3), np.uint8)
    array[box[1]:box[3], box[0]:box[2]] = 255
    seen = np.asarray(prep.view(Image.fromarray(array)))[..., 0] > 127
    ys, xs = np.nonzero(seen)
    measured = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert np.allclose(prep.map_box(box, size), measured, atol=1.5)
    assert prep.view(Image.fromarray(array)).size == (target[1], target[0])
