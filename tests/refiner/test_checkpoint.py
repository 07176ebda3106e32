"""Checkpoints: round trip, atomic replacement, and clear errors for bad files."""

import json
import os

import pytest
import torch

import refiner
from refiner import CheckpointError
from refiner.checkpoint import WEIGHTS_FILE


@pytest.fixture
def model() -> torch.nn.Module:
    return refiner.create_model("refined_vit_micro_patch4_32", depth=2, num_classes=3).eval()


def test_round_trip_rebuilds_the_same_model(tmp_path, model) -> None:
    x = torch.randn(2, 3, 32, 32)
    path = refiner.save_checkpoint(model, tmp_path / "ckpt", metrics={"acc": 0.5}, extra={"dataset": "mnist"},
                                   training_state={"epoch": 3, "rng": torch.get_rng_state()})
    loaded = refiner.load_checkpoint(path)
    assert not loaded.model.training and loaded.metrics == {"acc": 0.5}
    assert loaded.config["extra"] == {"dataset": "mnist"}
    torch.testing.assert_close(loaded.model(x), model(x))
    assert refiner.load_training_state(path)["epoch"] == 3


def test_refine_after_create_round_trips(tmp_path) -> None:
    model = refiner.refine(refiner.create_model("vit_micro_patch4_32", depth=2), blocks=[1], layout="spatial").eval()
    loaded = refiner.load_checkpoint(refiner.save_checkpoint(model, tmp_path / "c")).model
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))


def test_overwrite_is_atomic_and_a_kill_between_renames_keeps_the_old_copy(tmp_path, model, monkeypatch) -> None:
    target = tmp_path / "last"
    refiner.save_checkpoint(model, target, metrics={"epoch": 1})
    real_rename = os.rename
    calls = []

    def rename_then_die(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the old copy is moved aside; the process dies before the new one lands
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_then_die)
    with pytest.raises(KeyboardInterrupt):
        refiner.save_checkpoint(model, target, metrics={"epoch": 2})
    monkeypatch.undo()
    assert refiner.load_checkpoint(target).metrics == {"epoch": 1}
    assert not list(tmp_path.glob(".last.tmp-*"))  # no half-written staging left behind


def test_failure_while_writing_leaves_the_previous_checkpoint_untouched(tmp_path, model, monkeypatch) -> None:
    target = tmp_path / "best"
    refiner.save_checkpoint(model, target, metrics={"epoch": 1})
    monkeypatch.setattr("refiner.checkpoint.save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        refiner.save_checkpoint(model, target, metrics={"epoch": 2})
    assert refiner.load_checkpoint(target).metrics == {"epoch": 1}


def test_truncated_weights_are_reported(tmp_path, model) -> None:
    path = refiner.save_checkpoint(model, tmp_path / "c")
    weights = path / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        refiner.load_checkpoint(path)
    config = json.loads((path / "config.json").read_text())
    config.pop("weights_sha256")
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="cannot read"):
        refiner.load_checkpoint(path)


def test_mismatched_weights_list_the_keys(tmp_path, model) -> None:
    path = refiner.save_checkpoint(model, tmp_path / "c")
    config = json.loads((path / "config.json").read_text())
    config["model"]["overrides"]["depth"] = 3
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing: blocks\.2\."):
        refiner.load_checkpoint(path)


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda p: (p / "config.json").unlink(), "no config.json"),
    (lambda p: (p / "config.json").write_text(json.dumps({"format": 1, "model": {"name": "vit_nope"}})),
     "cannot rebuild"),
    (lambda p: (p / WEIGHTS_FILE).unlink(), "no model.safetensors"),
])
def test_damaged_checkpoints_give_clear_errors(tmp_path, model, damage, message) -> None:
    path = refiner.save_checkpoint(model, tmp_path / "c")
    damage(path)
    with pytest.raises(CheckpointError, match=message):
        refiner.load_checkpoint(path)


def test_missing_directory_and_plain_file(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        refiner.load_checkpoint(tmp_path / "nothing")
    (tmp_path / "model.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="is a file"):
        refiner.load_checkpoint(tmp_path / "model.pth")


def test_model_without_spec_cannot_be_saved(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="model_spec"):
        refiner.save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "c")
