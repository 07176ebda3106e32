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


def test_load_model_takes_the_shipped_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import refiner

    monkeypatch.delenv(shipped.CHECKPOINTS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # not the checkout: the name, not a relative path, finds the pair
    by_name = refiner.load_model("vanilla")
    by_path = refiner.load_model(str(ROOT / "checkpoints" / "vanilla"))
    assert by_name.info.kind == "checkpoint" and by_name.info.source == "vanilla" and by_name.label == "vanilla"
    assert by_name.info.weights_sha256 == by_path.info.weights_sha256
    assert refiner.load_model("B=refined").info.name == "refined_vit_mini_patch6_48"

    # A folder of that name in the current directory wins over the shipped pair.
    other = refiner.create_model("vit_micro_patch4_32", in_chans=1).eval()
    refiner.save_checkpoint(other, tmp_path / "vanilla")
    assert refiner.load_model("vanilla").info.name == "vit_micro_patch4_32"

    # Under another checkpoint root, its folders are the names and the pair is gone.
    monkeypatch.setenv(shipped.CHECKPOINTS_ENV, str(tmp_path))
    monkeypatch.chdir(ROOT / "tests")
    assert refiner.load_model("vanilla").info.name == "vit_micro_patch4_32"
    with pytest.raises(refiner.ModelSourceError):
        refiner.load_model("refined")
