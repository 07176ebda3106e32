"""One analysis run: models over a folder of images, a dataset split or an app bundle's inputs, written as
figures, tables, raw maps, a manifest and a bundle (what ``refiner analyze`` does; `refiner_cli.analyze_command`
only turns its arguments into an `AnalyzeRequest`).

Outputs under ``out``:

    figures/dataset/<name>.{png,svg,pdf,html,json}   dataset curves with 95% intervals, paired differences, CKA
    figures/images/<image>/<name>.{...}               the per-image figures of the first ``per_image`` images
    tables/dataset_metrics.{csv,json}                 mean, interval (and paired difference, p-value) per metric/layer
    tables/images/<image>.{csv,json}                  every per-image metric
    maps/<image>.npz                                  raw maps of those images
    manifest.json, bundle.zip                         everything above, plus the manifest (hashes, settings, versions)

Under ``torchrun`` a dataset run shards the images over the processes, all-reduces the statistics and writes
from rank 0 only.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .attention_metrics import MetricSettings
from .dataset import DEFAULT_MAP_BUDGET_BYTES
from .inputs import Note, PreparedImage

DEFAULT_FORMATS: Tuple[str, ...] = ("png", "svg", "pdf", "html")


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


@dataclass(frozen=True)
class AnalyzeRequest:
    """What the user asked ``refiner analyze`` for (the CLI's defaults are these).

    Attributes:
        models: ``[LABEL=]SOURCE`` strings for `refiner.load_model`.
        out: output folder.
        images: a folder of images, or None.
        dataset: a `refiner.data` dataset name, or None (one of ``images``/``dataset``, or an app bundle's inputs).
        split, data_root, max_images: which dataset images.
        boxes: JSON {file name: [x0, y0, x1, y1]} for ``images``.
        settings: metric settings.
        formats: figure formats (some of png, svg, pdf, html, json).
        scale: PNG scale.
        per_image: images that get per-image figures, tables and maps.
        attributions: per-image IntegratedGradients, Saliency and attention x gradient.
        batch_size: images per forward pass of a dataset.
        map_budget_mb: most captured maps held at once in dataset analysis (MB).
        device: where models run (`refiner.device.resolve_device`).
        n_boot, seed: bootstrap resamples and seed (also the seed of random weights).
        bundle: write bundle.zip.
        overwrite: write into an ``out`` that holds other files.
        progress: progress bars on stderr.
    """

    models: Tuple[str, ...] = ()
    out: Optional[Path] = None
    images: Optional[Path] = None
    dataset: Optional[str] = None
    split: str = "test"
    data_root: Optional[Path] = None
    max_images: int = 1000
    boxes: Optional[Path] = None
    settings: MetricSettings = MetricSettings()
    formats: Tuple[str, ...] = DEFAULT_FORMATS
    scale: float = 2.0
    per_image: int = 4
    attributions: bool = False
    batch_size: int = 32
    map_budget_mb: float = DEFAULT_MAP_BUDGET_BYTES / 2**20
    device: str = "auto"
    n_boot: int = 2000
    seed: int = 0
    bundle: bool = True
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.map_budget_mb > 0:
            raise ValueError(f"--map-budget-mb must be positive, got {self.map_budget_mb}")

    @property
    def map_budget_bytes(self) -> int:
        return int(self.map_budget_mb * 2**20)

    def record(self) -> Dict[str, Any]:
        """The options that shape the outputs, for the manifest's ``extra.cli`` (the command line's option
        names, paths as strings), which ``--manifest`` re-runs read back with `from_record`."""
        record: Dict[str, Any] = {"model": list(self.models), "images": self.images, "dataset": self.dataset,
                                  "split": self.split, "data_root": self.data_root, "max_images": self.max_images,
                                  "boxes": self.boxes, **self.settings.to_dict(), "formats": ",".join(self.formats),
                                  "scale": self.scale, "per_image": self.per_image,
                                  "attributions": self.attributions, "batch_size": self.batch_size,
                                  "map_budget_mb": self.map_budget_mb, "device": self.device, "n_boot": self.n_boot,
                                  "seed": self.seed, "no_bundle": not self.bundle, "overwrite": self.overwrite}
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in record.items()}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "AnalyzeRequest":
        """The request a manifest's ``extra.cli`` recorded (unknown keys ignored, missing ones default)."""
        settings_keys = set(MetricSettings().to_dict())
        settings = MetricSettings(**{k: v for k, v in record.items() if k in settings_keys})
        path = lambda key: Path(record[key]) if record.get(key) else None  # noqa: E731
        fields_ = {f.name for f in dataclasses.fields(cls)}
        plain = {k: v for k, v in record.items() if k in fields_ and k not in ("images", "data_root", "boxes",
                                                                             "formats", "out", "settings")}
        if "formats" in record:
            plain["formats"] = split_formats(str(record["formats"]))
        return cls(**plain, models=tuple(record.get("model") or ()), images=path("images"),
                   data_root=path("data_root"), boxes=path("boxes"), settings=settings,
                   bundle=not record.get("no_bundle", False))


def split_formats(text: str) -> Tuple[str, ...]:
    """``"png,html"`` -> ("png", "html")."""
    return tuple(f.strip() for f in text.split(",") if f.strip())


@dataclass
class ManifestInputs:
    """What a ``--manifest`` re-run brings besides the request (`analysis.remake.remake_request`).

    Attributes:
        expected: the manifest whose models and images must be found again unchanged.
        preloaded: an app bundle's inputs (each model's exact input tensor), analysed instead of files.
        view_bundle: (bundle path, manifest) of an app Compare view whose own figures and tables are re-made.
        bundle_source: the app bundle the inputs came from (recorded in the new manifest).
    """

    expected: Optional[Dict[str, Any]] = None
    preloaded: List[PreparedImage] = field(default_factory=list)
    view_bundle: Optional[Tuple[Path, Dict[str, Any]]] = None
    bundle_source: Optional[str] = None


@dataclass(frozen=True)
class AnalyzeResult:
    """What a run wrote.

    Attributes:
        out: the folder.
        files: paths inside it (the manifest's file list).
        bundle: bundle.zip, or None.
        images_analysed: images of the dataset statistics, else those of the per-image analysis.
    """

    out: Path
    files: Tuple[str, ...]
    bundle: Optional[Path]
    images_analysed: int


def run_analysis(request: AnalyzeRequest, manifest: Optional[ManifestInputs] = None, note: Note = _stderr
                 ) -> Optional[AnalyzeResult]:
    """Run the analysis ``request`` asks for and write its outputs.

    Args:
        request: what to analyse and write.
        manifest: what a re-run of a manifest brings (None for a plain run).
        note: where messages go (skipped and enlarged images, files written; stderr by default).

    Returns:
        `AnalyzeResult`, or None on a distributed rank that does not write.

    Raises:
        ValueError: bad input (models, images, boxes, output folder, a manifest that no longer matches),
            before anything is written.
        OSError: an output cannot be written mid-run.
    """
    from tqdm.auto import tqdm

    from refiner.device import resolve_device
    from refiner.image_input import ACCEPTED_EXTENSIONS

    from . import export
    from .dataset import dataset_statistics
    from .dataset_sources import analyze_prepared, analyze_split
    from .figures import dataset_figures, image_figures
    from .inputs import iter_folder_images, read_boxes
    from .manifest_check import check_boxes, check_models, listed_images, unlisted_files
    from .model_records import load_model, model_record, with_unique_labels
    from .output_folder import prepare_output_folder
    from .per_image import analyze_image

    manifest = manifest or ManifestInputs()
    expected = manifest.expected
    if request.out is None:
        raise ValueError("--out DIR is required")
    settings = request.settings
    device = resolve_device(request.device)
    # Checked before any work: a folder that is not ours (or not writable), missing or changed images.
    folder = prepare_output_folder(request.out, overwrite=request.overwrite)
    listed = listed_images(expected) if expected is not None and request.images is not None else None
    models = with_unique_labels([load_model(spec, request.seed, device) for spec in request.models])
    records = {m.label: model_record(m, m.label) for m in models}
    if expected is not None:
        check_models(records, expected)
    modules = {m.label: m.model for m in models}
    out = Path(request.out)
    files: Dict[str, Path] = {}
    image_records: List[Dict[str, Any]] = []
    class_names = models[0].data.get("class_names")
    # Figures are written together at the end: one kaleido browser session instead of one per image.
    pending: Dict[str, Any] = {}
    analysed: List[str] = []  # images that got the per-image analysis

    def per_image(items: Sequence[PreparedImage]) -> None:
        for item in tqdm(items, desc="per-image analysis", unit="img", disable=not request.progress):
            analysed.append(item.name)
            first = next(iter(item.inputs.values()))
            # Models with different preprocessing each get their own input: analyse one model at a time.
            if _inputs_differ(item.inputs):
                result = _merge([analyze_image({label: modules[label]}, item.inputs[label], settings, item.box,
                                               class_names=class_names, attributions=request.attributions)
                                 for label in modules], settings)
            else:
                result = analyze_image(modules, first, settings, item.box, class_names=class_names,
                                       attributions=request.attributions)
            for stem, fig in image_figures(result, item.picture).items():
                pending[f"images/{item.name}/{stem}"] = fig
            rows = export.image_metrics_rows(result)
            _write(out / "tables" / "images" / f"{item.name}.csv", export.table_csv(rows), files, out)
            _write(out / "tables" / "images" / f"{item.name}.json", export.table_json(rows), files, out)
            _write(out / "maps" / f"{item.name}.npz", export.maps_npz_bytes(result), files, out)

    analysis = None
    if manifest.preloaded:
        # Inputs carried by an app bundle (its maps.npz holds each model's exact input tensor).
        items = manifest.preloaded
        per_image(items)
        image_records = [dict(i.record, name=i.name) for i in items]
        source: Dict[str, Any] = {"bundle_inputs": [i.name for i in items]}
        if manifest.view_bundle is not None:
            from .remake import view_outputs

            # An app bundle of the Compare view: the view's own figures and tables again, under the same names.
            view_figures, view_tables = view_outputs(manifest.view_bundle, models)
            pending.update(view_figures)
            for stem, rows in view_tables.items():
                _write(out / "tables" / f"{stem}.csv", export.table_csv(rows), files, out)
                _write(out / "tables" / f"{stem}.json", export.table_json(rows), files, out)
    elif request.images is not None:
        items = list(iter_folder_images(request.images, models, read_boxes(request.boxes), note, listed))
        if listed is not None and expected is not None:
            check_boxes(items, expected)
            left_out = unlisted_files(request.images, listed, ACCEPTED_EXTENSIONS)
            if left_out:
                note(f"left out {len(left_out)} image(s) not in the manifest: {', '.join(left_out[:5])}"
                     f"{' ...' if len(left_out) > 5 else ''}")
        image_records = [dict(i.record, name=i.name) for i in items]
        per_image(items[: max(request.per_image, 0)])
        if len(items) >= 2:  # one image has no dataset statistics
            analysis = analyze_prepared(models, items, settings, request.map_budget_bytes, request.progress)
        source = {"images": str(request.images.resolve()), "count": len(items)}
    elif request.dataset is not None:
        from refiner.training.distributed import init_distributed, shutdown

        # Under torchrun every process analyses every world_size-th image; the statistics are all-reduced
        # in analyze_dataset and rank 0 alone writes the outputs.
        context = init_distributed()
        split = analyze_split(models, request.dataset, request.split, request.data_root, request.max_images,
                              request.batch_size, settings, request.map_budget_bytes,
                              progress=request.progress and context.is_main, rank=context.rank,
                              world_size=context.world_size,
                              first_images=request.per_image if context.is_main else 0)
        per_image(split.firsts)
        analysis = split.analysis
        if not context.is_main:
            shutdown(context)
            return None
        class_names = class_names or list(split.info.class_names)
        source = {"dataset": split.info.name, "split": request.split, "count": split.count,
                  "options": split.options}
        image_records = [i.record for i in split.firsts]
    else:
        raise ValueError("give --images DIR or --dataset NAME (or --manifest FILE)")
    if analysis is not None and analysis.images >= 2:
        statistics = dataset_statistics(analysis, n_boot=request.n_boot, seed=request.seed)
        for stem, fig in dataset_figures(analysis, statistics).items():
            pending[f"dataset/{stem}"] = fig
        rows = export.dataset_rows(analysis, statistics)
        _write(out / "tables" / "dataset_metrics.csv", export.table_csv(rows), files, out)
        _write(out / "tables" / "dataset_metrics.json", export.table_json(rows), files, out)
    note(f"writing {len(pending)} figures as {', '.join(request.formats)} ...")
    for path in export.write_figures(pending, out / "figures", request.formats, request.scale, shared_plotlyjs=True):
        files[str(path.relative_to(out))] = path
    cli = request.record()
    if manifest.bundle_source:
        cli["bundle_source"] = manifest.bundle_source  # re-made from an app bundle's inputs
    images_analysed = analysis.images if analysis is not None else len(analysed)
    written = export.build_manifest(
        list(records.values()), image_records, {label: r["preprocessing"] for label, r in records.items()},
        settings.to_dict(), files=list(files),
        # Images analysed: the dataset statistics' count, else those that got the per-image analysis (one
        # image, such as an app bundle's, makes no dataset statistics but is still analysed).
        extra={"source": source, "cli": cli, "images_analysed": images_analysed})
    (out / export.MANIFEST_NAME).write_text(json.dumps(written, indent=2, default=str) + "\n", encoding="utf-8")
    bundle = export.write_bundle(out / "bundle.zip", files, written) if request.bundle else None
    stale = folder.finish(list(files))
    if stale:
        note(f"removed {len(stale)} file(s) of the earlier analysis in {out} that this run did not make")
    return AnalyzeResult(out=out, files=tuple(files), bundle=bundle, images_analysed=images_analysed)


def _inputs_differ(inputs: Mapping[str, torch.Tensor]) -> bool:
    tensors = list(inputs.values())
    return any(t.shape != tensors[0].shape or not torch.equal(t, tensors[0]) for t in tensors[1:])


def _merge(parts: Sequence[Any], settings: MetricSettings) -> Any:
    """Join single-model analyses of the same image into one (comparisons recomputed across them)."""
    from .per_image import ImageAnalysis, _comparisons

    models = {name: r for part in parts for name, r in part.models.items()}
    return ImageAnalysis(models=models, settings=settings, box=parts[0].box, image_sha256=parts[0].image_sha256,
                         **_comparisons(models, settings, "pca"))


def _write(path: Path, content: Any, files: Dict[str, Path], root: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    files[str(path.relative_to(root))] = path
