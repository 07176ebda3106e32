"""A tiny untrained vanilla/refined pair saved to a temp dir, and the app pointed at it."""

from __future__ import annotations

from pathlib import Path

import pytest

import refiner

APP = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
# What the trainer records (extra["data"]), with the shipped configs' canvas geometry.
CANVAS = {"canvas_size": 48, "scale_range": [1.3, 1.5], "fragments": 2, "fragment_size": 6, "position_step": 1,
          "max_shift": 4, "epoch_size": 8000, "test_size": 1000, "seed": 0}
DATA = {"dataset": "cluttered-mnist", "dataset_options": CANVAS, "img_size": 48, "in_chans": 1, "mean": [0.1],
        "std": [0.3], "class_names": [str(i) for i in range(10)]}


def make_pair(root: Path) -> Path:
    """Save an untrained vit_mini pair (vanilla, refined) under ``root``."""
    for name, arch in (("vanilla", "vit_mini_patch6_48"), ("refined", "refined_vit_mini_patch6_48")):
        refiner.save_checkpoint(refiner.create_model(arch, in_chans=1), root / name,
                                metrics={"test_accuracy": 0.1}, extra={"data": DATA})
    return root


@pytest.fixture(scope="session")
def pair_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pair(tmp_path_factory.mktemp("app-checkpoints"))


@pytest.fixture
def app_env(pair_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REFINER_APP_CHECKPOINTS", str(pair_dir))
    return pair_dir
