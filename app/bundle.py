"""The ZIP bundle of what the Compare page shows: figures, tables, raw maps and a manifest (DESIGN section 6).

The files and the manifest come from `analysis.export` (the same writer as ``refiner analyze``), so a bundle
from the app and one from the CLI read the same way (`analysis.export.read_manifest`). The bundle is built
only when its button is clicked; drawing the page never pays for static image rendering. No Streamlit here.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis import export
from analysis.compare_view import ModelView
from analysis.model_records import model_record, unique_labels
from refiner import LoadedModel
from refiner.hashing import sha256_hex

from .images import ImageItem

BUNDLE_FORMATS = ("png", "svg", "pdf", "html")
DEFAULT_BUNDLE_FORMATS = ("png", "html")  # static SVG/PDF cost seconds per figure; each figure offers them alone


@dataclass
class ViewContents:
    """What one page run drew, collected for the bundle while the page is drawn.

    Attributes:
        figures: file stem -> figure.
        tables: file stem -> long-format rows.
        settings: the view's selection and display options (layer, head, query, map kind, ...).
    """

    figures: Dict[str, go.Figure] = field(default_factory=dict)
    tables: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)
    settings: Dict[str, Any] = field(default_factory=dict)


def table_rows(table: pd.DataFrame) -> List[Dict[str, Any]]:
    """A table as rows of plain values, as `analysis.export.table_csv` / ``table_json`` take them.

    Through JSON so numpy scalars become numbers and NaN becomes None (``table_json`` refuses NaN).
    """
    return json.loads(table.to_json(orient="records"))


def bundle_labels(models: Sequence[LoadedModel]) -> List[str]:
    """Model labels for the manifest, the tables and the NPZ arrays: `analysis.model_records.unique_labels` of
    the models' own labels ("A-x", "B-x" when both slots hold models of the same label), as ``refiner analyze``
    names its models (``--manifest`` finds each model's ``<label>/input`` in the NPZ by these labels)."""
    return unique_labels([m.label for m in models])


def slot_record(slot: str, model: LoadedModel, label: str) -> Dict[str, Any]:
    """What the manifest says about one model slot: `analysis.model_records.model_record` (what ``refiner
    analyze`` records, with ``source`` an absolute path wherever the app's checkpoint root was), plus the slot
    and ``app_source``, the app's own short name for it (as in the page URL)."""
    return {**model_record(model, label), "slot": slot,
            "app_source": model.info.source}


def image_record(item: ImageItem, views: Sequence[ModelView], labels: Sequence[str]) -> Dict[str, Any]:
    """The image: its key, the hash of its file (uploads) or pixels (samples), and of each model's input."""
    return {"key": item.key, "sha256": item.sha256, "label": item.label,
            "box": None if item.box is None else list(item.box), "notes": list(item.notes),
            "input_sha256": {label: _array_sha256(view.input_tensor) for label, view in zip(labels, views)}}


def _array_sha256(array: np.ndarray) -> str:
    return sha256_hex(np.asarray(array, dtype=np.float32))


def maps_arrays(labels: Sequence[str], views: Sequence[ModelView]) -> Dict[str, np.ndarray]:
    """Raw arrays of every model, named ``<label>/<array>`` like `analysis.export.maps_npz_bytes`.

    Per model: ``effective`` and ``softmax`` (L, H, N, N), ``has_softmax`` and ``refined`` (L,), ``probs``
    (C,), ``input`` (C, H, W), ``picture`` (H, W, 3), ``geometry`` = [K, Gh, Gw, ph, pw, H_img, W_img] and
    ``class_token_index`` = [index] (-1 for none).
    """
    arrays: Dict[str, np.ndarray] = {}
    for label, view in zip(labels, views):
        arrays.update({f"{label}/effective": view.effective, f"{label}/softmax": view.softmax,
                       f"{label}/has_softmax": view.has_softmax, f"{label}/refined": view.refined,
                       f"{label}/probs": view.probs, f"{label}/input": view.input_tensor,
                       f"{label}/picture": view.picture,
                       f"{label}/geometry": np.array([view.num_prefix_tokens, *view.grid, *view.patch_size,
                                                      *view.picture.shape[:2]], dtype=np.int64),
                       # -1: the model has no class token (its rollout uses the mean patch query)
                       f"{label}/class_token_index": np.array(
                           [-1 if view.class_token_index is None else view.class_token_index], dtype=np.int64)})
    return arrays


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Arrays as a compressed .npz file."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    return buffer.getvalue()


def build_bundle(contents: ViewContents, models: Sequence[LoadedModel], views: Sequence[ModelView],
                 item: ImageItem, formats: Sequence[str] = DEFAULT_BUNDLE_FORMATS,
                 extra: Optional[Mapping[str, Any]] = None) -> bytes:
    """The ZIP bundle of one view, as bytes.

    ``refiner analyze --manifest bundle.zip`` re-makes the analysis figures from it (each model's exact input
    tensor is in the NPZ). Layout: ``figures/<stem>.<fmt>`` (HTML files share ``figures/plotly.min.js``, offline), ``tables/<stem>.csv``
    and ``.json``, ``maps/maps.npz`` (`maps_arrays`) and ``manifest.json`` (model names, weight and state
    hashes, image and input hashes, preprocessing, settings, library versions, file list).

    Args:
        contents: figures, tables and settings collected while the page was drawn.
        models: the loaded models, slot A first.
        views: their captures on the image, in the same order.
        item: the image.
        formats: figure formats, a subset of `BUNDLE_FORMATS`.
        extra: anything else for the manifest's "extra" (e.g. the page URL's query).

    Returns:
        The bytes of the ZIP.

    Raises:
        ValueError: an unknown format.
        analysis.export.ExportError: static formats were asked for and no browser can render them.
    """
    unknown = [f for f in formats if f not in BUNDLE_FORMATS]
    if unknown or not formats:
        raise ValueError(f"bundle figure formats must be some of {', '.join(BUNDLE_FORMATS)}, got {list(formats)}")
    slots = ("A", "B")
    labels = bundle_labels(models)
    with tempfile.TemporaryDirectory(prefix="refiner-bundle-") as tmp:
        root = Path(tmp)
        files: Dict[str, Any] = {}
        for path in export.write_figures(contents.figures, root / "figures", formats, shared_plotlyjs=True):
            files[path.relative_to(root).as_posix()] = path.read_bytes()
        for stem, rows in contents.tables.items():
            files[f"tables/{stem}.csv"] = export.table_csv(rows)
            files[f"tables/{stem}.json"] = export.table_json(rows)
        files["maps/maps.npz"] = npz_bytes(maps_arrays(labels, views))
        manifest = export.build_manifest(
            [slot_record(slot, m, label) for slot, m, label in zip(slots, models, labels)],
            [image_record(item, views, labels)],
            {label: {k: v for k, v in m.data.items() if k != "class_names"} for label, m in zip(labels, models)},
            contents.settings, files=list(files), extra={"made_by": "refiner app", **dict(extra or {})})
        bundle = export.write_bundle(root / "bundle.zip", files, manifest)
        return bundle.read_bytes()
