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
    with pytest.raises(CheckpointError, match="disk full.*previous checkpoint in .*best is intact"):
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


# ------------------------------------------------------------------------------- hostile config.json fields
def _edit_config(path, edit) -> None:
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("edit, field", [
    (lambda c: c["model"].update(refine="yes"), "model.refine"),
    (lambda c: c["model"]["refine"].update(ratio="3"), "model.refine.ratio"),
    (lambda c: c["model"]["refine"].update(blocks="all"), "model.refine.blocks"),
    (lambda c: c["model"]["refine"].update(layout=["spatial"]), "model.refine.layout"),
    (lambda c: c["model"]["refine"].update(evil=1), "model.refine.evil"),
    (lambda c: c["model"].update(overrides=[1, 2]), "model.overrides"),
    (lambda c: c["model"]["overrides"].update(checkpoint_path="/etc/passwd"), "model.overrides.checkpoint_path"),
    (lambda c: c["model"]["overrides"].update(pretrained_cfg_overlay={"file": "/etc/passwd"}),
     "model.overrides.pretrained_cfg_overlay"),
    (lambda c: c["model"]["overrides"].update(depth={"a": 1}), "model.overrides.depth"),
    (lambda c: c["model"]["overrides"].update(embed_dim=10 ** 12), "model.overrides.embed_dim"),
    (lambda c: c["model"]["overrides"].update(num_heads=5), "model.overrides"),
    (lambda c: c.update(extra={"data": {"img_size": "32"}}), "extra.data.img_size"),
    (lambda c: c.update(extra={"data": {"mean": ["a"]}}), "extra.data.mean"),
    (lambda c: c.update(extra={"data": {"class_names": "abc"}}), "extra.data.class_names"),
    (lambda c: c.update(extra=[]), "extra"),
    (lambda c: c.update(weights_sha256=5), "weights_sha256"),
])
def test_every_damaged_config_field_gives_one_checkpoint_error_naming_file_and_field(tmp_path, model, edit,
                                                                                     field) -> None:
    path = refiner.save_checkpoint(model, tmp_path / "c")
    _edit_config(path, edit)
    with pytest.raises(CheckpointError) as caught:
        refiner.load_checkpoint(path)
    assert str(path / "config.json") in str(caught.value) and field in str(caught.value)


def test_a_huge_model_in_the_config_is_refused_before_anything_is_allocated(tmp_path, model, monkeypatch) -> None:
    path = refiner.save_checkpoint(model, tmp_path / "c")
    _edit_config(path, lambda c: c["model"]["overrides"].update(embed_dim=400_000, num_heads=4))
    # 400k wide: ~2.6e12 parameters; built for real this would be an allocation error or the OOM killer.
    with pytest.raises(CheckpointError, match="do not fit"):
        refiner.load_checkpoint(path)


def test_checkpoint_path_in_a_config_never_makes_the_loader_read_that_file(tmp_path, model, monkeypatch) -> None:
    import timm.models

    other = refiner.save_checkpoint(model, tmp_path / "other") / WEIGHTS_FILE
    path = refiner.save_checkpoint(model, tmp_path / "c")
    _edit_config(path, lambda c: c["model"]["overrides"].update(checkpoint_path=str(other)))
    read = []
    monkeypatch.setattr(timm.models, "load_checkpoint", lambda *a, **k: read.append(a))
    with pytest.raises(CheckpointError, match="checkpoint_path"):
        refiner.load_checkpoint(path)
    assert not read


def test_deeply_nested_config_and_bad_metrics_are_checkpoint_errors(tmp_path, model) -> None:
    path = refiner.save_checkpoint(model, tmp_path / "c")
    good = (path / "config.json").read_text()
    (path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="config.json"):
        refiner.load_checkpoint(path)
    (path / "config.json").write_text(good)
    (path / "metrics.json").write_text("{'acc': 0.5")
    with pytest.raises(CheckpointError, match="metrics.json"):
        refiner.load_checkpoint(path)
    (path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="metrics.json"):
        refiner.load_checkpoint(path)


# --------------------------------------------------------------------------------------------- writing
def test_new_files_are_as_readable_as_the_folder(tmp_path, model) -> None:
    path = refiner.save_checkpoint(model, tmp_path / "c", training_state={"epoch": 1})
    assert (path.stat().st_mode & 0o777) == 0o755
    assert (os.stat(path / WEIGHTS_FILE).st_mode & 0o777) == 0o644


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_staging_and_backups_of_killed_saves_are_removed_by_the_next_save(tmp_path, model) -> None:
    refiner.save_checkpoint(model, tmp_path / "last", metrics={"epoch": 1})
    dead = _dead_pid()
    stale = [tmp_path / f".last.tmp-{dead}-abc", tmp_path / f"last.old-{dead}", tmp_path / ".last.tmp-x1y2z3"]
    live = tmp_path / f".last.tmp-{os.getppid()}-def"  # a save still running in a live process
    other = tmp_path / f".best.tmp-{dead}-abc"         # another checkpoint's copies are its own business
    for folder in (*stale, live, other):
        folder.mkdir()
        (folder / "x").write_text("partial")
    refiner.save_checkpoint(model, tmp_path / "last", metrics={"epoch": 2})
    assert not any(p.exists() for p in stale)
    assert live.exists() and other.exists()
    assert refiner.load_checkpoint(tmp_path / "last").metrics == {"epoch": 2}


def test_tidy_puts_back_a_checkpoint_left_only_as_a_backup(tmp_path, model) -> None:
    from refiner.checkpoint import tidy_checkpoint

    refiner.save_checkpoint(model, tmp_path / "last", metrics={"epoch": 1})
    dead = _dead_pid()
    os.rename(tmp_path / "last", tmp_path / f"last.old-{dead}")  # killed between the two renames
    (tmp_path / f".last.tmp-{dead}-q").mkdir()
    tidy_checkpoint(tmp_path / "last")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert refiner.load_checkpoint(tmp_path / "last").metrics == {"epoch": 1}


def test_a_full_disk_says_so_and_keeps_the_previous_checkpoint(tmp_path, model, monkeypatch) -> None:
    import shutil

    target = refiner.save_checkpoint(model, tmp_path / "last", metrics={"epoch": 1}, training_state={"e": 1})

    def full_disk_save(*_args, **_kwargs):  # what torch.save raises when the disk fills mid-write
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 38144 vs 38096")

    monkeypatch.setattr(torch, "save", full_disk_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(CheckpointError, match=r"the disk is full .*previous checkpoint in .*last is intact"):
        refiner.save_checkpoint(model, target, metrics={"epoch": 2}, training_state={"e": 2})
    monkeypatch.undo()
    assert refiner.load_checkpoint(target).metrics == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_unwritable_places_give_a_clear_error(tmp_path, model, monkeypatch) -> None:
    import errno
    import tempfile

    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a folder.*no checkpoint was written"):
        refiner.save_checkpoint(model, tmp_path / "file" / "last")

    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(CheckpointError, match="Read-only file system.*cannot be written"):
        refiner.save_checkpoint(model, tmp_path / "last")
