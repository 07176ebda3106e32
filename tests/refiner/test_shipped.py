"""Finding the shipped pair: the checkout's checkpoints/ by default, $REFINER_APP_CHECKPOINTS when set, and
only plain folder names that hold a checkpoint."""

from pathlib import Path

import pytest

from refiner import shipped

ROOT = Path(__file__).resolve().parents[2]


def test_checkout_default_holds_the_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(shipped.CHECKPOINTS_ENV, raising=False)
    assert shipped.checkpoint_root() == ROOT / "checkpoints"
    assert shipped.shipped_checkpoint("vanilla") == ROOT / "checkpoints" / "vanilla"


def test_setting_overrides_and_names_must_be_plain_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(shipped.CHECKPOINTS_ENV, str(tmp_path))
    assert shipped.checkpoint_root() == tmp_path
    assert shipped.shipped_checkpoint("mine") == tmp_path / "mine"
    assert shipped.shipped_checkpoint("vanilla") is None  # not under the chosen root
    for name in ("empty", "", "../mine", "mine/", "vit_small_patch16_224", "."):
        assert shipped.shipped_checkpoint(name) is None, name
