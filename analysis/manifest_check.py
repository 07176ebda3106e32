"""What ``refiner analyze --manifest`` may re-make from: exactly the models and images a manifest lists.

A manifest records each model's weights (``state_sha256``: the hash of the loaded tensors; ``weights_sha256``:
the hash of the weights file or the one its checkpoint recorded) and each image file's path and SHA-256.
A re-run uses those images and no others (files added to the folder since are left out), and refuses, naming
every difference, when a listed image is missing or changed or a model's weights differ: the figures would
not be the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

from refiner.hashing import sha256_of_file

MODEL_HASHES = ("state_sha256", "weights_sha256")


class ManifestMismatch(ValueError):
    """The models or images a manifest lists are not what is there now."""


@dataclass(frozen=True)
class ListedImage:
    """One image file a manifest lists.

    Attributes:
        path: the file.
        name: the name its outputs had (tables/images/<name>.csv, ...).
        sha256: its recorded hash.
    """

    path: Path
    name: str
    sha256: str


def listed_images(manifest: Mapping[str, Any]) -> List[ListedImage]:
    """The image files of a folder run's manifest, each present now with its recorded hash.

    Raises:
        ManifestMismatch: naming every listed file that is missing, unreadable or changed, or a manifest whose
            image records are damaged.
    """
    records = manifest.get("images")
    if not isinstance(records, list) or not records:
        raise ManifestMismatch("the manifest lists no image files to re-make the analysis from")
    listed, problems = [], []
    for index, record in enumerate(records):
        if not (isinstance(record, Mapping) and isinstance(record.get("path"), str)
                and isinstance(record.get("sha256"), str)):
            raise ManifestMismatch(f"image record {index} of the manifest has no path and sha256")
        path = Path(record["path"])
        name = str(record.get("name") or path.stem)
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        try:
            digest = sha256_of_file(path)
        except OSError as error:
            problems.append(f"{path} cannot be read ({error.strerror or error})")
            continue
        if digest != record["sha256"]:
            problems.append(f"{path} changed since the manifest was written (sha256 {digest[:12]} != "
                            f"{record['sha256'][:12]})")
            continue
        listed.append(ListedImage(path=path, name=name, sha256=digest))
    if problems:
        raise ManifestMismatch(f"the manifest lists {len(records)} images, and re-making it needs exactly those: "
                               + "; ".join(problems))
    return listed


def unlisted_files(folder: Path, listed: Sequence[ListedImage], extensions: Sequence[str]) -> List[str]:
    """Image files in ``folder`` that the manifest does not list (left out of a re-run, and said so)."""
    if not folder.is_dir():
        return []
    known = {image.path.resolve() for image in listed}
    return sorted(p.name for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower().lstrip(".") in extensions and p.resolve() not in known)


def check_models(records: Mapping[str, Mapping[str, Any]], manifest: Mapping[str, Any]) -> None:
    """Refuse when a re-loaded model is not the one the manifest recorded.

    Args:
        records: label -> the re-loaded model's manifest record (``state_sha256``, ``weights_sha256``).
        manifest: the manifest.

    Raises:
        ManifestMismatch: naming each model, hash and both values that differ, or a label it lacks.
    """
    recorded: Dict[str, Mapping[str, Any]] = {m.get("label"): m for m in manifest.get("models", [])
                                              if isinstance(m, Mapping)}
    problems = []
    for label, record in records.items():
        want = recorded.get(label)
        if want is None:
            problems.append(f"model {label!r} is not in the manifest")
            continue
        for key in MODEL_HASHES:
            if want.get(key) and record.get(key) and want[key] != record[key]:
                problems.append(f"model {label!r} from {record.get('source')} has other weights ({key} "
                                f"{str(record[key])[:12]} != {str(want[key])[:12]} recorded)")
    if problems:
        raise ManifestMismatch("; ".join(problems) + "; the figures would not be the same")


def check_boxes(items: Sequence[Any], manifest: Mapping[str, Any]) -> None:
    """Refuse a re-run whose --boxes give other boxes than the manifest recorded (the figures would differ).

    Args:
        items: `analysis.inputs.PreparedImage` s of the re-run (``record`` has ``path`` and ``box_input_pixels``).
        manifest: the manifest.

    Raises:
        ManifestMismatch: naming the images whose boxes changed.
    """
    recorded = {r.get("path"): r.get("box_input_pixels") for r in manifest.get("images", []) if isinstance(r, dict)}
    changed = [Path(i.record["path"]).name for i in items
               if i.record["path"] in recorded and recorded[i.record["path"]] != i.record["box_input_pixels"]]
    if changed:
        raise ManifestMismatch(f"the boxes of {', '.join(changed)} differ from those the manifest recorded "
                               "(--boxes changed); the figures would not be the same")
