"""``refiner analyze --manifest``: the `AnalyzeRequest` that re-makes the outputs a manifest describes.

A manifest written by ``refiner analyze`` records its options (``extra.cli``, `AnalyzeRequest.record`); one
written by the app records no command line, but its ``maps/maps.npz`` carries every model's exact input (and,
for a Compare view, every map the view's figures are made of), so the same analysis is made from those.
Models are re-loaded from the recorded `refiner.load_model` source under the label they had.
"""

from __future__ import annotations

import dataclasses
import io
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from refiner import LoadedModel

from .analyze_run import AnalyzeRequest, ManifestInputs
from .attention_metrics import MetricSettings
from .inputs import PreparedImage


def remake_request(path: Path, out: Optional[Path] = None, device: str = "auto", overwrite: bool = False,
                   progress: bool = True, formats: Optional[Sequence[str]] = None, scale: Optional[float] = None,
                   bundle: Optional[bool] = None) -> Tuple[AnalyzeRequest, ManifestInputs]:
    """The request and inputs that re-make the analysis of a manifest (or of a bundle holding one).

    Args:
        path: manifest.json or bundle.zip.
        out: the output folder (default ``<manifest folder>/remade``).
        device, overwrite, progress: this machine's and this command line's choices (never the recorded ones).
        formats, scale, bundle: output-only options given on this command line (None: as recorded); they
            change file types, not numbers or figures.

    Raises:
        ValueError: not a manifest, or an app bundle without the inputs to re-make it from.
    """
    from .export import read_manifest

    manifest = read_manifest(path)
    recorded = dict((manifest.get("extra") or {}).get("cli") or {})
    inputs = ManifestInputs(expected=manifest)
    if recorded.get("model"):
        request = AnalyzeRequest.from_record(recorded)
        if recorded.get("bundle_source"):
            source = Path(recorded["bundle_source"])
            inputs.preloaded = bundle_items(source, read_manifest(source))
            inputs.bundle_source = str(source)
    else:
        inputs.preloaded = bundle_items(Path(path), manifest)
        inputs.bundle_source = str(path)
        if (manifest.get("settings") or {}).get("page") == "compare":
            inputs.view_bundle = (Path(path), manifest)
        request = AnalyzeRequest(settings=_app_metric_settings(manifest.get("settings") or {}))
    changes: Dict[str, Any] = {"models": tuple(f"{m['label']}={model_source(m)}" for m in manifest["models"]),
                               "device": device, "overwrite": overwrite, "progress": progress,
                               "out": Path(out) if out is not None else Path(path).resolve().parent / "remade"}
    if formats is not None:
        changes["formats"] = tuple(formats)
    if scale is not None:
        changes["scale"] = scale
    if bundle is not None:
        changes["bundle"] = bundle
    return dataclasses.replace(request, **changes), inputs


def _app_metric_settings(settings: Mapping[str, Any]) -> MetricSettings:
    """The metric settings an app bundle recorded (its other view settings, such as the selected head, are not
    metric settings); a value the metrics do not accept keeps the default."""
    chosen = MetricSettings()
    for key, value in settings.items():
        if key in MetricSettings().to_dict():
            try:
                chosen = dataclasses.replace(chosen, **{key: value})
            except (ValueError, TypeError):
                continue
    return chosen


def model_source(record: Mapping[str, Any]) -> str:
    """The `refiner.load_model` source that reloads a manifest's model.

    Manifests written before the loading seam recorded names built without weights as ``kind: "name"`` with
    ``pretrained: false``; those are random weights (``random:NAME``) and stay so.
    """
    source = str(record["source"])
    if record.get("kind") in ("name", "random") and not record.get("pretrained") and ":" not in source:
        return f"random:{source}"
    return source


def bundle_items(path: Path, manifest: Mapping[str, Any]) -> List[PreparedImage]:
    """The analysed input of an app bundle: per model ``<label>/input`` (C, H, W) from ``maps/maps.npz``.

    Raises:
        ValueError: not a ZIP, no NPZ in it, or a model's input missing.
    """
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} records no command line; re-making an app analysis needs its bundle.zip")
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith(".npz")]
        if not names:
            raise ValueError(f"{path} has neither a command line nor raw maps to re-make the analysis from")
        arrays = np.load(io.BytesIO(archive.read(names[0])))
        labels = [m["label"] for m in manifest["models"]]
        missing = [label for label in labels if f"{label}/input" not in arrays.files]
        if missing:
            raise ValueError(f"{path}: {names[0]} has no input tensor for {missing}")
        inputs = {label: torch.from_numpy(np.asarray(arrays[f"{label}/input"], dtype=np.float32)) for label in labels}
        picture_key = f"{labels[0]}/picture"
        picture = np.asarray(arrays[picture_key]) if picture_key in arrays.files else inputs[labels[0]].numpy()
    image = (manifest.get("images") or [{}])[0]
    box = tuple(float(v) for v in image["box"]) if image.get("box") else None
    return [PreparedImage(name=str(image.get("key") or "image"), inputs=inputs, picture=picture, box=box, label=None,
                          record={"sha256": image.get("sha256"), "from_bundle": str(path)})]


def view_outputs(view: Tuple[Path, Mapping[str, Any]], models: Sequence[LoadedModel]
                 ) -> Tuple[Dict[str, Any], Dict[str, List[Dict[str, Any]]]]:
    """The figures and tables of an app Compare-view bundle, re-made from its raw maps and settings with
    `analysis.compare_view` (the builders the app drew them with), keyed as in the bundle."""
    from .compare_view import CompareSettings, ModelView, compare_figures, compare_tables

    path, manifest = view
    with zipfile.ZipFile(path) as archive:
        arrays = dict(np.load(io.BytesIO(archive.read("maps/maps.npz"))))
    labels = [m["label"] for m in manifest["models"]]
    views = [ModelView.from_arrays(arrays, label) for label in labels]
    by_label = {m.label: m for m in models}
    names = [list(by_label[label].info.class_names) or [str(i) for i in range(len(v.probs))]
             for label, v in zip(labels, views)]
    settings = CompareSettings.from_dict(manifest["settings"])
    image = (manifest.get("images") or [{}])[0]
    box = tuple(image["box"]) if image.get("box") else None
    figs = compare_figures(views, labels, settings, names, box, image.get("label"))
    return figs, compare_tables(views, labels, settings, names)
