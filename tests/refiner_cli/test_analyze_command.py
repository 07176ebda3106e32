"""``refiner analyze``: folder and dataset runs write figures, tables, maps and a bundle; --manifest re-makes."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import refiner
from analysis.model_records import load_model, model_record
from refiner_cli import main


def run_cli(argv) -> int:
    return main(["analyze", *[str(a) for a in argv]])


@pytest.fixture
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "boxes.json").write_text(json.dumps({"a.png": [0, 0, 24, 20]}))
    return folder


def test_images_folder_run_and_manifest_remake(image_folder, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = run_cli(["--model", "vanilla=vit_micro_patch4_32", "--model", "refined=refined_vit_micro_patch4_32",
                    "--images", image_folder, "--boxes", tmp_path / "boxes.json", "--out", out, "--formats", "html",
                    "--per-image", 1, "--n-boot", 50, "--no-progress"])
    assert code == 0
    assert "skipping broken.png" in capsys.readouterr().err
    assert (out / "figures" / "images" / "a" / "similarity_heatmaps.html").exists()
    assert (out / "figures" / "images" / "a" / "localisation.html").exists()  # the box was used
    assert (out / "figures" / "dataset" / "dataset_head_diversity.html").exists()
    assert np.load(out / "maps" / "a.npz")["refined/effective"].shape == (4, 4, 65, 65)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [m["label"] for m in manifest["models"]] == ["vanilla", "refined"]
    assert len(manifest["images"]) == 2 and all(len(i["sha256"]) == 64 for i in manifest["images"])
    assert manifest["settings"]["normalize"] == "abs_rownorm"
    with zipfile.ZipFile(out / "bundle.zip") as bundle:
        names = set(bundle.namelist())
    assert {"manifest.json", "tables/dataset_metrics.csv", "maps/a.npz"} <= names

    assert run_cli(["--manifest", out / "bundle.zip", "--out", tmp_path / "again", "--no-progress"]) == 0
    for table in ("tables/dataset_metrics.csv", "tables/images/a.csv"):
        assert (tmp_path / "again" / table).read_text() == (out / table).read_text()

    (image_folder / "a.png").write_bytes((image_folder / "b.jpg").read_bytes())  # the image changed
    assert run_cli(["--manifest", out / "manifest.json", "--out", tmp_path / "third", "--no-progress"]) == 2
    assert "changed since the manifest" in capsys.readouterr().err


def test_dataset_run_from_checkpoints(tmp_path) -> None:
    options = {"canvas_size": 32, "scale_range": [0.8, 1.1], "test_size": 8}
    for name in ("vit_micro_patch4_32", "refined_vit_micro_patch4_32"):
        model = refiner.create_model(name, in_chans=1)
        refiner.save_checkpoint(model, tmp_path / name, extra={
            "dataset": "cluttered-mnist", "dataset_options": options, "class_names": [str(i) for i in range(10)],
            "preprocessing": {"mean": [0.1], "std": [0.3], "img_size": 32, "in_chans": 1}})
    out = tmp_path / "out"
    code = run_cli(["--model", tmp_path / "vit_micro_patch4_32", "--model", tmp_path / "refined_vit_micro_patch4_32",
                    "--dataset", "cluttered-mnist", "--max-images", 8, "--batch-size", 4, "--out", out,
                    "--formats", "html", "--per-image", 1, "--n-boot", 50, "--no-bundle", "--no-progress"])
    assert code == 0
    rows = json.loads((out / "tables" / "dataset_metrics.json").read_text())
    accuracy = [r for r in rows if r["metric"] == "accuracy"]
    assert len(accuracy) == 2 and all(r["n"] == 8 for r in accuracy)
    assert any(r["metric"] == "cls_in_box" for r in rows)  # cluttered-mnist boxes reach localisation
    assert any(r.get("p_value") is not None for r in rows)  # paired comparison of the two models
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["source"]["options"]["canvas_size"] == 32
    assert manifest["models"][0]["weights_sha256"]
    assert not (out / "bundle.zip").exists()


def test_clear_errors(tmp_path, capsys) -> None:
    assert run_cli(["--model", "no_such_model_xyz", "--images", tmp_path, "--out", tmp_path / "o"]) == 2
    assert "neither a file or folder nor a model name" in capsys.readouterr().err
    assert run_cli(["--images", tmp_path, "--out", tmp_path / "o"]) == 2
    (tmp_path / "m.json").write_text("{}")
    assert run_cli(["--manifest", tmp_path / "m.json"]) == 2
    assert "not a format-1 analysis manifest" in capsys.readouterr().err


def test_manifest_of_an_app_bundle_is_remade_from_its_inputs(tmp_path) -> None:
    from analysis import export

    # What the app writes: a manifest without a command line and maps.npz with each model's input tensor.
    model = load_model("vanilla=vit_micro_patch4_32", seed=0)
    image = torch.rand(3, 32, 32)
    arrays = io.BytesIO()
    np.savez(arrays, **{"vanilla/input": image.numpy(), "vanilla/picture": np.zeros((32, 32, 3), np.uint8)})
    manifest = export.build_manifest(
        [{"label": "vanilla", "source": "timm:vit_micro_patch4_32", "kind": "name",
          "state_sha256": model_record(model, "vanilla")["state_sha256"]}],
        [{"key": "sample", "sha256": "0" * 64, "box": [0, 0, 16, 16]}], {},
        {"normalize": "clip_rownorm", "map_kind": "difference", "layer": 2}, extra={"made_by": "refiner app"})
    export.write_bundle(tmp_path / "app.zip", {"maps/maps.npz": arrays.getvalue()}, manifest)
    out = tmp_path / "remade"
    assert run_cli(["--manifest", tmp_path / "app.zip", "--out", out, "--formats", "html", "--no-progress"]) == 0
    remade = json.loads((out / "manifest.json").read_text())
    assert remade["settings"]["normalize"] == "clip_rownorm"  # a metric setting the app recorded
    assert remade["settings"]["map_kind"] == "effective"  # the app's "difference" view is not a metric setting
    assert (out / "figures" / "images" / "sample" / "localisation.html").exists()
    assert not list(out.glob("figures/**/*.png"))  # --formats given with --manifest wins


# ------------------------------------------------------------------ output folders and manifests (issue 13)
def _hostile_folder(tmp_path) -> Path:
    """Two images with one stem, a TIFF whose second page is damaged and a TIFF that is all damage."""
    from tests.refiner.test_image_input import _tiff_with_a_damaged_second_page

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ("photo.jpg", "photo.png"):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / name)
    (folder / "pages.tif").write_bytes(_tiff_with_a_damaged_second_page())
    (folder / "wreck.tif").write_bytes(b"II*\x00" + bytes(range(200)))
    return folder


FAST = ["--model", "vanilla=vit_micro_patch4_32", "--formats", "html", "--per-image", 3, "--n-boot", 20,
        "--no-progress"]


def test_same_stem_images_get_their_own_outputs_and_a_bad_tiff_ends_nothing(tmp_path, capsys) -> None:
    folder = _hostile_folder(tmp_path)
    out = tmp_path / "out"
    assert run_cli([*FAST, "--images", folder, "--out", out]) == 0
    assert "skipping wreck.tif" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(i["name"] for i in manifest["images"]) == ["pages", "photo-jpg", "photo-png"]
    a, b = (np.load(out / "maps" / f"photo-{ext}.npz")["vanilla/effective"] for ext in ("jpg", "png"))
    assert not np.array_equal(a, b)  # each image kept its own outputs


def test_out_that_holds_other_files_is_refused_and_an_earlier_run_is_replaced(image_folder, tmp_path,
                                                                             capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("my own notes")
    assert run_cli([*FAST, "--images", image_folder, "--out", out]) == 2
    message = capsys.readouterr().err
    assert "is not empty" in message and "manifest.json" in message and "--overwrite" in message
    assert (out / "manifest.json").read_text() == "my own notes" and len(list(out.iterdir())) == 1
    assert run_cli([*FAST, "--images", image_folder, "--out", out, "--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())["format"] == 1
    # The folder now holds a run of ours: running again replaces it, without stale per-image files.
    (image_folder / "b.jpg").unlink()
    assert run_cli([*FAST, "--images", image_folder, "--out", out]) == 0
    assert not (out / "tables" / "images" / "b.csv").exists() and (out / "tables" / "images" / "a.csv").exists()


def test_images_or_out_given_a_file_are_named(tmp_path, capsys) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    assert run_cli([*FAST, "--images", tmp_path / "a.png", "--out", tmp_path / "o"]) == 2
    assert "--images" in (err := capsys.readouterr().err) and "is a file" in err and "Traceback" not in err
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "x.png")
    assert run_cli([*FAST, "--images", folder, "--out", tmp_path / "a.png"]) == 2
    assert "--out" in (err := capsys.readouterr().err) and "is a file, not a folder" in err
    assert (tmp_path / "a.png").read_bytes() == b"x"


def test_manifest_remakes_exactly_what_it_lists_or_refuses_naming_the_difference(image_folder, tmp_path,
                                                                                 capsys) -> None:
    out = tmp_path / "out"
    assert run_cli([*FAST, "--images", image_folder, "--out", out, "--no-bundle"]) == 0
    listed = sorted(i["name"] for i in json.loads((out / "manifest.json").read_text())["images"])
    # An image added since: left out (and said so), the figures are re-made from the listed ones only.
    Image.new("RGB", (40, 48), (9, 9, 9)).save(image_folder / "added.png")
    capsys.readouterr()
    assert run_cli(["--manifest", out / "manifest.json", "--out", tmp_path / "again", "--no-progress"]) == 0
    assert "not in the manifest: added.png" in capsys.readouterr().err  # (and broken.png, skipped before)
    remade = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert sorted(i["name"] for i in remade["images"]) == listed
    assert (tmp_path / "again" / "tables" / "dataset_metrics.csv").read_text() == \
        (out / "tables" / "dataset_metrics.csv").read_text()
    # Weights that differ from the recorded file hash: refused, naming the model and the hash.
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["models"][0]["weights_sha256"] = "f" * 64
    (tmp_path / "edited.json").write_text(json.dumps(manifest))
    assert run_cli(["--manifest", tmp_path / "edited.json", "--out", tmp_path / "third", "--no-progress"]) == 2
    assert "model 'vanilla'" in (err := capsys.readouterr().err) and "weights_sha256" in err
    # A listed image deleted since: refused, naming it; nothing is written.
    (image_folder / "a.png").unlink()
    assert run_cli(["--manifest", out / "manifest.json", "--out", tmp_path / "fourth", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "a.png is missing" in err and "lists 2 images" in err
    assert not (tmp_path / "fourth").exists() or not any((tmp_path / "fourth").iterdir())


def test_images_smaller_than_a_patch_are_analysed_enlarged_with_the_note(tmp_path, capsys) -> None:
    """Issue 11 leftover: ``--images`` enlarged tiny images silently; now each gets the one rule's note
    (`refiner.image_input.small_image_note`), naming the models it applies to, and is still analysed."""
    from refiner.image_input import small_image_note

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (2, 3), (200, 10, 10)).save(folder / "tiny.png")
    Image.new("RGB", (40, 40), (9, 90, 9)).save(folder / "normal.png")
    out = tmp_path / "out"
    assert run_cli([*FAST, "--model", "b=random:vit_micro_patch4_32", "--images", folder, "--out", out]) == 0
    err = capsys.readouterr().err
    note = small_image_note((2, 3), (4, 4), (32, 32))
    assert f"tiny.png: vanilla and b: {note[0].upper()}{note[1:]}." in err
    assert "normal.png:" not in err  # a normal image has no note
    assert sorted(i["name"] for i in json.loads((out / "manifest.json").read_text())["images"]) == ["normal", "tiny"]


def test_dataset_run_of_models_with_different_input_sizes(tmp_path) -> None:
    """The grey 48 px digit model beside an RGB 32 px model on cluttered-mnist: the canvases fit the first model,
    the other gets each canvas through its own transform (the dataset images were normalised for every model
    alike before, which fails on the other model's shape)."""
    out = tmp_path / "out"
    assert run_cli(["--model", "vanilla", "--model", "b=random:vit_micro_patch4_32", "--dataset", "cluttered-mnist",
                    "--max-images", 4, "--per-image", 1, "--formats", "json", "--n-boot", 20, "--no-bundle",
                    "--no-progress", "--out", out]) == 0
    rows = json.loads((out / "tables" / "dataset_metrics.json").read_text())
    assert {r["model"] for r in rows} == {"vanilla", "b", "b - vanilla"}
    assert np.load(out / "maps" / "cluttered-mnist-test-00000.npz")["b/effective"].shape == (4, 4, 65, 65)
