"""The shipped pair in `checkpoints/`: what the model card promises, and golden tensors.

The card (checkpoints/README.md) states each model's test accuracy on the fixed 1,000-canvas test set; here
the shipped weights are evaluated again and must give that number. The golden tensors (logits and CLS attention
rows, written by `golden/regenerate.py`) pin what users see, so any change to the model code, loader, canvas
generator or capture that alters them fails here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import refiner
from refiner.data import canvas_options_for
from refiner.data.cluttered_mnist import fixed_test_set
from refiner.training.evaluation import evaluate

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "checkpoints"
GOLDEN = Path(__file__).resolve().parent / "golden"


def _regenerate_module():
    spec = importlib.util.spec_from_file_location("golden_regenerate", GOLDEN / "regenerate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def pair() -> dict:
    return {name: refiner.load_checkpoint(SHIPPED / name) for name in ("vanilla", "refined")}


def test_the_pair_meets_the_shipping_rules(pair: dict) -> None:
    vanilla, refined = pair["vanilla"].model, pair["refined"].model
    spec_v, spec_r = vanilla.model_spec, refined.model_spec
    assert spec_r["name"] == "refined_" + spec_v["name"]
    # Identical width and depth; depth >= 8, >= 4 heads, <= 5M parameters each; <= 20 MB together.
    assert vanilla.embed_dim == refined.embed_dim and len(vanilla.blocks) == len(refined.blocks) >= 8
    assert all(b.attn.num_heads >= 4 for b in list(vanilla.blocks) + list(refined.blocks))
    assert all(sum(p.numel() for p in m.parameters()) <= 5_000_000 for m in (vanilla, refined))
    assert all(type(b.attn).__name__ == "RefinedAttention" for b in refined.blocks)
    assert sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file()) <= 20 * 2**20
    # One identical recipe: the training configs differ only in the model and where they were written.
    configs = [pair[n].config["extra"]["train_config"] for n in ("vanilla", "refined")]
    differing = {k for k in configs[0] if configs[0][k] != configs[1].get(k)}
    assert differing <= {"model", "output_dir"}, differing


@pytest.mark.parametrize("name", ["vanilla", "refined"])
def test_test_accuracy_is_what_the_model_card_states(pair: dict, name: str) -> None:
    checkpoint = pair[name]
    data = refiner.load_model(str(SHIPPED / name)).info.data
    assert data["dataset"] == "cluttered-mnist" and data["dataset_options"]["test_size"] == 1000
    options = canvas_options_for(data)
    images, labels, _ = fixed_test_set(**options)
    dataset = torch.utils.data.TensorDataset(images, labels)
    result = evaluate(checkpoint.model, dataset, 10, data["mean"], data["std"], batch_size=250)
    stated = json.loads((SHIPPED / name / "metrics.json").read_text())["test_accuracy"]
    # The same 1,000 canvases: at most one prediction may flip on a machine with other float rounding.
    assert result.count == 1000 and abs(result.accuracy - stated) <= 0.001
    assert f"{100 * stated:.1f}%" in (SHIPPED / "README.md").read_text()
    if name == "vanilla":
        assert result.accuracy >= 0.90  # DESIGN section 4: the shipped pair has learned its task


def test_golden_tensors_are_reproduced() -> None:
    golden = np.load(GOLDEN / "shipped_checkpoints.npz")
    regenerate = _regenerate_module()
    for name in ("vanilla", "refined"):
        now = regenerate.golden_tensors(SHIPPED / name)
        assert set(now) == {key.split("/", 1)[1] for key in golden.files if key.startswith(name + "/")}
        for key, value in now.items():
            np.testing.assert_allclose(value, golden[f"{name}/{key}"], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name} {key} differs from the golden tensors")
        # The maps are attention: softmax rows are distributions over the N keys.
        np.testing.assert_allclose(now["softmax_last"].sum(-1), 1.0, atol=1e-5)
