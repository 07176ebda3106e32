"""Inputs prepared for each model: dataset canvases at a model's size are only normalised, others go through
the model's own transform; pictures get each model's transform; tiny pictures get the one note."""

import numpy as np
import pytest
import torch
from PIL import Image

import refiner
from analysis.inputs import dataset_preprocess, enlarged_notes, prepare_image
from refiner.image_input import small_image_note


@pytest.fixture(scope="module")
def grey48():
    return refiner.load_model("vanilla")  # the shipped grey 48 px digit model


def test_canvases_at_the_input_size_are_normalised_exactly(grey48) -> None:
    canvas = torch.rand(2, 1, 48, 48)
    mean, std = grey48.info.preprocessing.mean, grey48.info.preprocessing.std
    expected = (canvas - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    torch.testing.assert_close(dataset_preprocess(grey48, (1, 48, 48))(canvas), expected, rtol=0, atol=0)


def test_canvases_of_another_size_go_through_the_models_transform(grey48) -> None:
    """An RGB 32 px model beside the 48 px canvases: each canvas as the 8-bit picture the app would show it."""
    rgb32 = refiner.load_model("random:vit_micro_patch4_32")
    canvas = torch.rand(2, 1, 48, 48)
    prepared = dataset_preprocess(rgb32, (1, 48, 48))(canvas)
    assert prepared.shape == (2, 3, 32, 32)
    picture = Image.fromarray((canvas[1, 0].numpy() * 255).round().astype(np.uint8), "L").convert("RGB")
    torch.testing.assert_close(prepared[1], rgb32.info.transform(picture))


def test_prepare_image_and_the_tiny_image_note(grey48) -> None:
    rgb32 = refiner.load_model("B=random:vit_micro_patch4_32")
    tiny = Image.new("RGB", (3, 2), (255, 0, 0))
    item = prepare_image(tiny, [grey48, rgb32], "tiny", box_pixels=(0, 0, 3, 2))
    assert item.inputs["vanilla"].shape == (1, 48, 48) and item.inputs["B"].shape == (3, 32, 32)
    assert item.box == (0.0, 0.0, 48.0, 48.0)  # the whole picture, in model A's input pixels
    notes = enlarged_notes({"A": grey48.info, "B": rgb32.info}, tiny.size)
    first = small_image_note((3, 2), (6, 6), (48, 48))
    assert notes[0] == f"A: {first[0].upper()}{first[1:]}." and notes[1].startswith("B: The image is 3 x 2 px")
    assert enlarged_notes({"A": grey48.info}, (48, 48)) == []
