"""Attributions: captum methods on the input, attention x gradient with the model left untouched."""

import numpy as np
import pytest
import torch

import refiner
from analysis.attribution import (attention_gradients, attention_x_gradient, integrated_gradients, pixel_heatmap,
                                  saliency)


@pytest.fixture(scope="module")
def micro_models() -> dict:
    torch.manual_seed(0)
    return {name: refiner.create_model(name).eval() for name in ("vit_micro_patch4_32", "refined_vit_micro_patch4_32")}


@pytest.mark.parametrize("name", ["vit_micro_patch4_32", "refined_vit_micro_patch4_32"])
def test_attention_gradients_match_capture_and_leave_the_model_alone(micro_models, name) -> None:
    model = micro_models[name]
    fused = [getattr(b.attn, "fused_attn", None) for b in model.blocks]
    image = torch.rand(3, 32, 32)
    result = attention_gradients(model, image, target=3)
    with torch.no_grad(), refiner.capture_attention(model) as rec:
        model(image[None])
    np.testing.assert_allclose(result.maps, rec.stacked()[0].numpy(), atol=1e-5)
    assert result.grads.shape == result.maps.shape and np.abs(result.grads).sum() > 0
    assert result.target == 3
    assert all(p.grad is None for p in model.parameters())
    assert [getattr(b.attn, "fused_attn", None) for b in model.blocks] == fused
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_integrated_gradients_are_complete(micro_models) -> None:
    model = micro_models["vit_micro_patch4_32"]
    image = torch.rand(3, 32, 32)
    attribution = integrated_gradients(model, image, target=1, n_steps=64)
    with torch.no_grad():
        gap = (model(image[None])[0, 1] - model(torch.zeros(1, 3, 32, 32))[0, 1]).item()
    assert attribution.shape == (3, 32, 32)
    assert attribution.sum() == pytest.approx(gap, rel=0.05, abs=1e-3)
    heat = pixel_heatmap(saliency(model, image, target=1), reduce="max")
    assert heat.shape == (32, 32) and heat.max() == pytest.approx(1.0) and heat.min() >= 0


def test_attention_x_gradient_known_answers() -> None:
    maps = np.broadcast_to(np.eye(3), (2, 2, 3, 3)).copy()
    per_layer, relevance = attention_x_gradient(maps, np.zeros_like(maps))
    np.testing.assert_allclose(relevance, np.eye(3))  # no gradient: relevance stays the identity
    per_layer, relevance = attention_x_gradient(maps, np.ones_like(maps))
    np.testing.assert_allclose(per_layer[0], np.eye(3))
    np.testing.assert_allclose(relevance, 4 * np.eye(3))  # (I + I)(I + I)
    _, clipped = attention_x_gradient(maps, -np.ones_like(maps))
    np.testing.assert_allclose(clipped, np.eye(3))  # negative contributions are clipped
