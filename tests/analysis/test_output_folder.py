"""analysis.output_folder: --out is never mixed with what is there; same-stem images get their own names."""

import json
from pathlib import Path

import pytest

from analysis.output_folder import OutputFolderError, prepare_output_folder, unique_image_names


def _earlier_run(folder: Path, files) -> None:
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("old " + name)
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "models": [], "files": sorted(files)}))


def test_new_and_empty_folders_are_used(tmp_path: Path) -> None:
    assert prepare_output_folder(tmp_path / "new" / "out").path.is_dir()
    (tmp_path / "empty").mkdir()
    assert prepare_output_folder(tmp_path / "empty").earlier == []


def test_a_folder_of_other_files_is_refused_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    with pytest.raises(OutputFolderError, match=r"not empty and holds no earlier analysis.*thesis.tex.*--overwrite"):
        prepare_output_folder(out)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]  # nothing changed
    folder = prepare_output_folder(out, overwrite=True)
    assert folder.foreign == ["thesis.tex"]
    assert folder.finish(["tables/x.csv"]) == [] and (out / "thesis.tex").read_text() == "mine"


def test_an_earlier_run_is_replaced_without_leaving_its_stale_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _earlier_run(out, ["tables/images/a.csv", "tables/images/old.csv", "maps/old.npz"])
    folder = prepare_output_folder(out)
    assert "tables/images/old.csv" in folder.earlier
    (out / "tables/images/a.csv").write_text("new")  # what the new run writes
    removed = folder.finish(["tables/images/a.csv"])
    assert sorted(removed) == ["maps/old.npz", "tables/images/old.csv"]
    assert not (out / "maps").exists() and (out / "tables/images/a.csv").read_text() == "new"
    # A file of the user's beside an earlier run: refused, then kept with --overwrite.
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match="not part of the earlier analysis.*notes.txt"):
        prepare_output_folder(out)
    prepare_output_folder(out, overwrite=True).finish([])
    assert (out / "notes.txt").read_text() == "mine"


def test_a_manifest_cannot_make_us_remove_files_outside_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (out / "manifest.json").write_text(json.dumps({"format": 1, "models": [], "files": ["../victim.txt",
                                                                                      str(victim)]}))
    prepare_output_folder(out).finish([])
    assert victim.read_text() == "keep"


def test_files_and_paths_under_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        prepare_output_folder(tmp_path / "file")
    with pytest.raises(OutputFolderError, match="cannot be written: a part of the path is a file"):
        prepare_output_folder(tmp_path / "file" / "out")


def test_same_stems_get_distinct_names() -> None:
    paths = [Path(n) for n in ("a.png", "photo.jpg", "photo.png", "Photo.PNG", "b.tif")]
    names = unique_image_names(paths)
    assert names[Path("a.png")] == "a" and names[Path("b.tif")] == "b"
    assert {names[Path("photo.jpg")], names[Path("photo.png")]} == {"photo-jpg", "photo-png"}
    assert len({n.lower() for n in names.values()}) == len(paths)
