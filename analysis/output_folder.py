"""The output folder of ``refiner analyze``: never mixed with what is already there, one file per input.

A run writes into a folder that is new, empty, or holds an earlier run of ours (a ``manifest.json`` of this
project listing the files it wrote). Anything else in the folder is refused unless the user asks for
``--overwrite``, because same-named files (manifest, bundle, tables, maps) would be replaced without a word.
When an earlier run is replaced, its files that the new run did not write again are removed at the end, so
the folder never shows a mixture of two runs; files that are not ours are never removed.

Per-image outputs are named after the image file's stem; two images with the same stem (``photo.jpg``,
``photo.png``) get names that keep their extensions apart (`unique_image_names`).
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .export import MANIFEST_FORMAT, MANIFEST_NAME

BUNDLE_NAME = "bundle.zip"
_SHOWN = 5  # files named in a refusal


class OutputFolderError(ValueError):
    """``--out`` cannot be used as it is; the message says why and what to do."""


@dataclass
class OutputFolder:
    """A checked output folder.

    Attributes:
        path: the folder (created by `prepare_output_folder`).
        earlier: files (relative paths) of an earlier run of ours found there; those the new run does not
            write again are removed by `finish`.
        foreign: files that are not ours, kept as they are (only with ``overwrite``).
    """

    path: Path
    earlier: List[str] = field(default_factory=list)
    foreign: List[str] = field(default_factory=list)

    def finish(self, written: Sequence[str]) -> List[str]:
        """Remove the earlier run's files that this run did not write (call once all outputs are written).

        Args:
            written: relative paths this run wrote (the manifest and bundle are always counted as written).

        Returns:
            The relative paths removed.
        """
        keep = set(written) | {MANIFEST_NAME, BUNDLE_NAME}
        removed = []
        for name in self.earlier:
            if name in keep:
                continue
            path = self.path / name
            try:
                path.unlink()
                removed.append(name)
            except FileNotFoundError:
                continue
            _remove_empty_parents(path.parent, self.path)
        return removed


def _remove_empty_parents(folder: Path, root: Path) -> None:
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty: other outputs live there
            return
        folder = folder.parent


def _files_under(folder: Path) -> List[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def earlier_run_files(folder: Path) -> Optional[List[str]]:
    """The files an earlier ``refiner analyze`` run wrote into ``folder`` (its manifest lists them), or None
    when the folder holds no manifest of ours."""
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or "models" not in manifest:
        return None
    files = manifest.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    # Only paths inside the folder: a manifest is data, and must not name files elsewhere for removal.
    inside = [f for f in files if f and not os.path.isabs(f) and ".." not in Path(f).parts]
    return sorted(set(inside) | {MANIFEST_NAME} | ({BUNDLE_NAME} if (folder / BUNDLE_NAME).is_file() else set()))


def prepare_output_folder(path: Path, overwrite: bool = False) -> OutputFolder:
    """Check (and create) the output folder before any work is done.

    Args:
        path: ``--out``.
        overwrite: write into a folder that holds files that are not an earlier run of ours (same-named files
            are replaced; the others are left alone).

    Returns:
        The `OutputFolder`.

    Raises:
        OutputFolderError: ``path`` is a file, lies under a file, cannot be written, or holds files that are
            not an earlier run of ours (without ``overwrite``). Nothing has been changed then.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"--out {path} is a file, not a folder; give a new or empty folder")
    earlier: List[str] = []
    foreign: List[str] = []
    if path.is_dir():
        present = _files_under(path)
        ours = earlier_run_files(path)
        earlier = [f for f in present if ours is not None and f in set(ours)]
        foreign = [f for f in present if ours is None or f not in set(ours)]
        if foreign and not overwrite:
            what = ("holds files that are not part of the earlier analysis in it" if ours is not None
                    else "is not empty and holds no earlier analysis (no manifest.json of refiner analyze)")
            shown = ", ".join(foreign[:_SHOWN]) + (f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN
                                                   else "")
            raise OutputFolderError(f"--out {path} {what}: {shown}. Same-named files would be replaced; choose a "
                                    f"new or empty folder, or pass --overwrite to write into it anyway")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OutputFolderError(f"--out {path} cannot be written: {_reason(error)}") from None
    return OutputFolder(path=path, earlier=earlier, foreign=foreign)


def _reason(error: OSError) -> str:
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"a part of the path is a file, not a folder ({error.filename})"
    if error.errno == errno.ENOSPC:
        return "the disk is full"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"no permission to write there ({error.strerror})"
    return error.strerror or str(error)


def unique_image_names(paths: Sequence[Path]) -> Dict[Path, str]:
    """Output names of image files: the stem, and where stems collide (``photo.jpg``, ``photo.png``, also in
    another case, for case-insensitive file systems) the stem with the extension (``photo-jpg``, ``photo-png``),
    numbered if that still collides.

    Args:
        paths: image files.

    Returns:
        path -> name, every name distinct (ignoring case).
    """
    stems: Dict[str, int] = {}
    for path in paths:
        stems[path.stem.lower()] = stems.get(path.stem.lower(), 0) + 1
    names: Dict[Path, str] = {}
    taken: set = set()
    for path in paths:
        name = path.stem if stems[path.stem.lower()] == 1 else f"{path.stem}-{path.suffix.lstrip('.')}"
        candidate, number = name, 2
        while candidate.lower() in taken:
            candidate, number = f"{name}-{number}", number + 1
        taken.add(candidate.lower())
        names[path] = candidate
    return names
