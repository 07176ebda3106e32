"""``refiner analyze``: attention analysis of one or more models, written as figures, tables and a bundle.

    refiner analyze --model checkpoints/vanilla --model checkpoints/refined --dataset cluttered-mnist --out out/
    refiner analyze --model vit_small_patch16_224 --model refined_vit_small_patch16_224 --images photos/ --out out/
    refiner analyze --manifest out/bundle.zip [--out out2/]        # the same figures again
    torchrun --nproc_per_node 4 -m refiner_cli analyze ... --dataset NAME ...   # images sharded, stats reduced

``--model`` takes a checkpoint directory (`refiner.load_checkpoint`) or a model name (`refiner.create_model`),
optionally as ``LABEL=SPEC``. Outputs under ``--out``:

    figures/dataset/<name>.{png,svg,pdf,html}     dataset curves with 95% intervals, paired differences, CKA
    figures/images/<image>/<name>.{...}           the per-image figures of the first --per-image images
    tables/dataset_metrics.{csv,json}             mean, interval (and paired difference, p-value) per metric/layer
    tables/images/<image>.{csv,json}              every per-image metric
    maps/<image>.npz                              raw maps of those images
    manifest.json, bundle.zip                     everything above, plus the manifest (hashes, settings, versions)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from refiner import LoadedModel
from refiner.hashing import sha256_of_file

from .attention_metrics import MetricSettings
from .dataset import DEFAULT_MAP_BUDGET_BYTES
from .normalization import NORMALIZE_MODES

DEFAULT_FORMATS = "png,svg,pdf,html"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``refiner analyze`` options."""
    source = parser.add_argument_group("what to analyse")
    source.add_argument("--model", action="append", default=[], metavar="[LABEL=]SOURCE",
                        help="a shipped checkpoint (vanilla, refined), a checkpoint or hub folder, a weights file "
                             "(ARCH@FILE), a timm name or hf-hub: id, random:NAME; repeat for several models")
    inputs = source.add_mutually_exclusive_group()
    inputs.add_argument("--images", type=Path, metavar="DIR", help="folder of images (jpg, png, webp, bmp, gif, tiff)")
    inputs.add_argument("--dataset", metavar="NAME", help="a refiner dataset, e.g. cluttered-mnist (test split)")
    inputs.add_argument("--manifest", type=Path, metavar="FILE",
                        help="manifest.json or bundle.zip of an earlier run: re-make the same outputs")
    source.add_argument("--out", type=Path, metavar="DIR", help="output folder (default for --manifest: "
                        "<manifest folder>/remade)")
    source.add_argument("--split", default="test", help="dataset split (default test)")
    source.add_argument("--data-root", type=Path, default=None, help="folder of folder-based datasets")
    source.add_argument("--max-images", type=int, default=1000, help="dataset images to analyse (default 1000)")
    source.add_argument("--boxes", type=Path, default=None,
                        help="JSON {file name: [x0, y0, x1, y1]} object boxes in original image pixels (--images)")

    metric = parser.add_argument_group("metric settings (DESIGN section 5)")
    defaults = MetricSettings()
    metric.add_argument("--normalize", choices=NORMALIZE_MODES, default=defaults.normalize,
                        help="row normalisation of non-stochastic (refined effective) maps")
    metric.add_argument("--map-kind", choices=("effective", "softmax"), default=defaults.map_kind)
    metric.add_argument("--tau", type=float, default=defaults.tau, help="cross-layer cosine threshold")
    metric.add_argument("--block-threshold", type=float, default=defaults.block_threshold,
                        help="layer similarity from which blocks count as similar")
    metric.add_argument("--grid-radius", type=int, default=defaults.grid_radius)
    metric.add_argument("--band-width", type=int, default=defaults.band_width)
    metric.add_argument("--head-fusion", choices=("mean", "max", "min"), default=defaults.head_fusion)
    metric.add_argument("--discard-ratio", type=float, default=defaults.discard_ratio)

    output = parser.add_argument_group("outputs")
    output.add_argument("--formats", default=DEFAULT_FORMATS, help=f"figure formats (default {DEFAULT_FORMATS})")
    output.add_argument("--scale", type=float, default=2.0, help="PNG scale (2 = twice the layout size)")
    output.add_argument("--per-image", type=int, default=4, help="images that get per-image figures and maps")
    output.add_argument("--attributions", action="store_true",
                        help="per-image IntegratedGradients, Saliency and attention x gradient (slower)")
    output.add_argument("--batch-size", type=int, default=32, help="images per forward pass (dataset analysis)")
    output.add_argument("--map-budget-mb", type=float, default=DEFAULT_MAP_BUDGET_BYTES / 2**20,
                        help="most captured maps held at once in dataset analysis; larger batches run in chunks "
                             f"(default {DEFAULT_MAP_BUDGET_BYTES // 2**20} MB)")
    output.add_argument("--device", default="auto",
                        help="auto (a GPU when there is one), cpu, cuda, cuda:N or mps; GPUs run under bf16 autocast "
                             "with float32 maps")
    output.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates")
    output.add_argument("--seed", type=int, default=0)
    output.add_argument("--no-bundle", action="store_true", help="skip bundle.zip")
    output.add_argument("--overwrite", action="store_true",
                        help="write into an --out folder that holds other files (same-named ones are replaced)")
    output.add_argument("--no-progress", action="store_true")


def settings_from_args(args: argparse.Namespace) -> MetricSettings:
    """The `MetricSettings` the command line asks for."""
    return MetricSettings(normalize=args.normalize, tau=args.tau, block_threshold=args.block_threshold,
                          grid_radius=args.grid_radius, band_width=args.band_width, head_fusion=args.head_fusion,
                          discard_ratio=args.discard_ratio, map_kind=args.map_kind)


# ------------------------------------------------------------------------------------------------- models
def load_model(spec: str, seed: int = 0, device: str = "cpu") -> LoadedModel:
    """``[LABEL=]SOURCE`` through `refiner.load_model` (every source kind the app's Models page takes).

    Random weights (``random:NAME`` and our registered names) are drawn under ``torch.manual_seed(seed)``, so
    the same command (or ``--manifest``) gives the same weights and the same figures.

    Raises:
        ValueError: the source cannot be loaded (the message says what was expected).
    """
    import refiner

    try:
        return refiner.load_model(spec, seed=seed, device=device)
    except refiner.ModelSourceError as error:
        raise ValueError(f"--model {spec!r}: {error}") from None


def model_record(loaded: LoadedModel) -> Dict[str, Any]:
    """What the manifest records about one model: its `refiner.ModelInfo` record, the label, a source that
    reloads it from anywhere (absolute paths), and ``state_sha256`` (the weights' own hash, for ``--manifest``)."""
    from .export import state_dict_sha256

    info = loaded.info
    record = {"label": loaded.label, **info.record(), "source": _absolute_source(info.source),
              "architecture": info.name, "model_spec": info.config.get("model"),
              "state_sha256": state_dict_sha256(loaded.model)}
    record["preprocessing"] = {k: v for k, v in info.data.items() if k != "class_names"}
    return record


def _absolute_source(source: str) -> str:
    """The source with a local path made absolute (``ARCH@FILE`` keeps its architecture)."""
    arch, at, rest = source.partition("@")
    if at and arch and "/" not in arch and Path(rest).exists():
        return f"{arch}@{Path(rest).resolve()}"
    return str(Path(source).resolve()) if Path(source).exists() else source


def _unique_labels(models: List[LoadedModel]) -> List[LoadedModel]:
    """The models with repeated labels made unique ("x", "x-2", ...)."""
    seen: Dict[str, int] = {}
    out = []
    for m in models:
        seen[m.label] = seen.get(m.label, 0) + 1
        out.append(m if seen[m.label] == 1 else m.relabel(f"{m.label}-{seen[m.label]}"))
    return out


# ------------------------------------------------------------------------------------------------- inputs
@dataclass
class ImageItem:
    """One input: per-model tensors, the picture for overlays, its box and identity."""

    name: str
    inputs: Dict[str, torch.Tensor]
    picture: np.ndarray
    box: Optional[Tuple[float, float, float, float]]
    label: Optional[int]
    record: Dict[str, Any] = field(default_factory=dict)


def check_images_folder(folder: Path) -> None:
    """Raise `ValueError` when ``--images`` is missing or a file (checked before any model loads)."""
    if not folder.exists():
        raise ValueError(f"--images {folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"--images {folder} is a file; give the folder that holds the images")


def folder_image_files(folder: Path) -> List[Path]:
    """The image files of ``--images`` (sorted by name).

    Raises:
        ValueError: ``folder`` is missing, is a file, or holds no image files.
    """
    from refiner.image_input import ACCEPTED_EXTENSIONS

    check_images_folder(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower().lstrip(".") in ACCEPTED_EXTENSIONS)
    if not files:
        raise ValueError(f"no images ({', '.join(ACCEPTED_EXTENSIONS)}) in {folder}")
    return files


def read_boxes(path: Optional[Path]) -> Dict[str, List[float]]:
    """``--boxes``: {file name: [x0, y0, x1, y1]}.

    Raises:
        ValueError: the file is missing, not JSON, or not such a mapping (naming the first bad entry).
    """
    if path is None:
        return {}
    try:
        boxes = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ValueError(f"--boxes {path} cannot be read as JSON ({error})") from None
    if not isinstance(boxes, dict):
        raise ValueError(f"--boxes {path} must map file names to [x0, y0, x1, y1]")
    for name, box in boxes.items():
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and not
                                                                 isinstance(v, bool) for v in box)):
            raise ValueError(f"--boxes {path}: the box of {name!r} must be [x0, y0, x1, y1], not {str(box)[:80]}")
    return boxes


def iter_folder_images(folder: Path, models: List[LoadedModel], boxes: Dict[str, Sequence[float]],
                       listed: Optional[Sequence[Any]] = None) -> Iterator[ImageItem]:
    """Images of a folder (sorted by name) read safely; unreadable files are skipped with a message.

    Args:
        folder: ``--images``.
        models: the loaded models (each gets its own input tensor).
        boxes: file name -> box in original image pixels.
        listed: `analysis.manifest_check.ListedImage` s of a manifest: exactly these files under their recorded
            names, and one that cannot be read is an error instead of being skipped.
    """
    from refiner.image_input import ImageInputError, load_image

    from .output_folder import unique_image_names

    if listed is None:
        names = unique_image_names(folder_image_files(folder))
    else:
        names = {image.path: image.name for image in listed}
    reference = models[0].info
    for path, name in names.items():
        try:
            image = load_image(path)
            inputs = {m.label: m.info.transform(image) for m in models}
            picture = np.asarray(reference.view(image))
        except (ImageInputError, ValueError) as error:
            if listed is not None:
                raise ValueError(f"{path}, listed in the manifest, cannot be analysed now: {error}") from None
            print(f"skipping {path.name}: {error}", file=sys.stderr)
            continue
        box = reference.preprocessing.map_box(boxes[path.name], image.size) if path.name in boxes else None
        yield ImageItem(name=name, inputs=inputs, picture=picture, box=box, label=None,
                        record={"path": str(path.resolve()), "sha256": sha256_of_file(path),
                                "box_input_pixels": list(box) if box else None})


def build_eval_dataset(name: str, split: str, root: Optional[Path], models: List[LoadedModel]):
    """The dataset and its options (taken from the first checkpoint trained on it, so canvases match)."""
    from refiner.data import build_dataset, canonical_name, canvas_options_for, dataset_info

    key = canonical_name(name)
    options: Dict[str, Any] = {}
    if key == "cluttered-mnist":
        # Only the canvas options: those of the first model trained on it, else model A's input size.
        trained = [m.data for m in models if m.data.get("dataset") and canonical_name(m.data["dataset"]) == key]
        options = canvas_options_for({**(trained[0] if trained else {}), "img_size": models[0].data["img_size"]})
    return build_dataset(key, split, root, **options), dataset_info(key, root, **options), options


def _normaliser(data: Dict[str, Any]):
    """``(x - mean) / std`` of a model's preprocessing, for dataset images already at its input size."""
    from refiner.preprocessing import Preprocessing

    prep = Preprocessing.from_mapping(data)
    mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
    std = torch.tensor(prep.std).view(1, -1, 1, 1)
    return lambda x: (x - mean) / std


# ---------------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    """Entry point of ``refiner analyze``; returns the exit code."""
    try:
        if args.manifest is not None:
            return _remake(args)
        if not args.model:
            print("refiner analyze: give at least one --model (or --manifest)", file=sys.stderr)
            return 2
        if args.images is None and args.dataset is None:
            print("refiner analyze: give --images DIR or --dataset NAME (or --manifest FILE)", file=sys.stderr)
            return 2
        if args.out is None:
            print("refiner analyze: --out DIR is required", file=sys.stderr)
            return 2
        if args.images is not None:
            check_images_folder(args.images)  # named before any model loads
        return _analyze(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"refiner analyze: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # an output that cannot be written mid-run (disk full, permissions changed)
        where = f"{error.filename}: " if error.filename else ""
        print(f"refiner analyze: cannot write {where}{error.strerror or error}", file=sys.stderr)
        return 1


def _analyze(args: argparse.Namespace, expected: Optional[Dict[str, Any]] = None) -> int:
    from tqdm.auto import tqdm

    from . import export
    from .dataset import analyze_dataset
    from .figures import dataset_figures, image_figures
    from .per_image import analyze_image

    from refiner.image_input import ACCEPTED_EXTENSIONS

    from .manifest_check import check_models, listed_images, unlisted_files
    from .output_folder import prepare_output_folder

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    settings = settings_from_args(args)
    from refiner.device import resolve_device

    device = resolve_device(getattr(args, "device", "cpu"))
    # Checked before any work: a folder that is not ours (or not writable), missing or changed images.
    folder = prepare_output_folder(args.out, overwrite=getattr(args, "overwrite", False))
    listed = listed_images(expected) if expected is not None and args.images is not None else None
    models = _unique_labels([load_model(spec, args.seed, device) for spec in args.model])
    records = {m.label: model_record(m) for m in models}
    if expected is not None:
        check_models(records, expected)
    modules = {m.label: m.model for m in models}
    out: Path = args.out
    files: Dict[str, Path] = {}
    image_records: List[Dict[str, Any]] = []
    progress = not args.no_progress
    class_names = models[0].data.get("class_names")
    # Figures are written together at the end: one kaleido browser session instead of one per image.
    pending: Dict[str, Any] = {}
    analysed: List[str] = []  # images that got the per-image analysis

    def per_image(items: List[ImageItem]) -> None:
        for item in tqdm(items, desc="per-image analysis", unit="img", disable=not progress):
            analysed.append(item.name)
            first = next(iter(item.inputs.values()))
            # Models with different preprocessing each get their own input: analyse one model at a time.
            parts = [analyze_image({label: modules[label]}, item.inputs[label], settings, item.box,
                                   class_names=class_names, attributions=args.attributions)
                     for label in modules] if _inputs_differ(item.inputs) else \
                [analyze_image(modules, first, settings, item.box, class_names=class_names,
                               attributions=args.attributions)]
            result = parts[0] if len(parts) == 1 else _merge(parts, settings)
            for stem, fig in image_figures(result, item.picture).items():
                pending[f"images/{item.name}/{stem}"] = fig
            rows = export.image_metrics_rows(result)
            _write(out / "tables" / "images" / f"{item.name}.csv", export.table_csv(rows), files, out)
            _write(out / "tables" / "images" / f"{item.name}.json", export.table_json(rows), files, out)
            _write(out / "maps" / f"{item.name}.npz", export.maps_npz_bytes(result), files, out)

    analysis = None
    if getattr(args, "preloaded_items", None):
        # Inputs carried by an app bundle (its maps.npz holds each model's exact input tensor).
        items = args.preloaded_items
        per_image(items)
        image_records = [dict(i.record, name=i.name) for i in items]
        source = {"bundle_inputs": [i.name for i in items]}
        view = getattr(args, "view_bundle", None)
        if view is not None:
            # An app bundle of the Compare view: the view's own figures and tables again, under the same names.
            view_figures, view_tables = _view_outputs(view, models)
            pending.update(view_figures)
            for stem, rows in view_tables.items():
                _write(out / "tables" / f"{stem}.csv", export.table_csv(rows), files, out)
                _write(out / "tables" / f"{stem}.json", export.table_json(rows), files, out)
    elif args.images is not None:
        items = list(iter_folder_images(args.images, models, read_boxes(args.boxes), listed))
        if listed is not None:
            _check_boxes(items, expected)
            left_out = unlisted_files(args.images, listed, ACCEPTED_EXTENSIONS)
            if left_out:
                print(f"left out {len(left_out)} image(s) not in the manifest: {', '.join(left_out[:5])}"
                      f"{' ...' if len(left_out) > 5 else ''}", file=sys.stderr)
        image_records = [dict(i.record, name=i.name) for i in items]
        per_image(items[: max(args.per_image, 0)])
        # Dataset statistics over the folder (one batch per image keeps differing preprocessing simple).
        batches = (({label: i.inputs[label][None] for label in modules},
                    None if i.box is None else torch.tensor([i.box])) for i in items)
        analysis = _dataset_over_items(modules, batches, settings, len(items), progress, _map_budget(args))
        source = {"images": str(args.images.resolve()), "count": len(items)}
    else:
        from refiner.training.distributed import init_distributed, shutdown

        # Under torchrun every process analyses every world_size-th image; the statistics are all-reduced
        # in analyze_dataset and rank 0 alone writes the outputs.
        context = init_distributed()
        dataset, info, options = build_eval_dataset(args.dataset, args.split, args.data_root, models)
        count = min(len(dataset), args.max_images)
        shard = list(range(context.rank, count, context.world_size))
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, shard),
                                             batch_size=args.batch_size, shuffle=False)
        preprocess = {m.label: _normaliser(m.data) for m in models}
        firsts: List[ImageItem] = []
        for index in range(min(args.per_image, count) if context.is_main else 0):
            sample = dataset[index]
            image = sample[0]
            box = tuple(float(v) for v in sample[2]) if info.has_boxes and len(sample) > 2 else None
            firsts.append(ImageItem(name=f"{info.name}-{args.split}-{index:05d}",
                                    inputs={lbl: fn(image[None])[0] for lbl, fn in preprocess.items()},
                                    picture=image.numpy(), box=box, label=int(sample[1]),
                                    record={"dataset": info.name, "split": args.split, "index": index}))
        per_image(firsts)
        analysis = analyze_dataset(modules, loader, settings, preprocess=preprocess, progress=progress and
                                   context.is_main, total=len(shard), map_budget_bytes=_map_budget(args))
        if not context.is_main:
            shutdown(context)
            return 0
        class_names = class_names or list(info.class_names)
        source = {"dataset": info.name, "split": args.split, "count": count, "options": options}
        image_records = [i.record for i in firsts]
    if analysis is not None and analysis.images >= 2:
        for stem, fig in dataset_figures(analysis, n_boot=args.n_boot, seed=args.seed).items():
            pending[f"dataset/{stem}"] = fig
        rows = export.dataset_rows(analysis, n_boot=args.n_boot, seed=args.seed)
        _write(out / "tables" / "dataset_metrics.csv", export.table_csv(rows), files, out)
        _write(out / "tables" / "dataset_metrics.json", export.table_json(rows), files, out)
    print(f"writing {len(pending)} figures as {', '.join(formats)} ...", file=sys.stderr)
    for path in export.write_figures(pending, out / "figures", formats, args.scale, shared_plotlyjs=True):
        files[str(path.relative_to(out))] = path
    manifest = export.build_manifest(
        list(records.values()), image_records, {label: r["preprocessing"] for label, r in records.items()},
        settings.to_dict(), files=list(files),
        # Images analysed: the dataset statistics' count, else those that got the per-image analysis (one
        # image, such as an app bundle's, makes no dataset statistics but is still analysed).
        extra={"source": source, "cli": _cli_record(args),
               "images_analysed": analysis.images if analysis is not None else len(analysed)})
    (out / export.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    if not args.no_bundle:
        export.write_bundle(out / "bundle.zip", files, manifest)
    stale = folder.finish(list(files))
    if stale:
        print(f"removed {len(stale)} file(s) of the earlier analysis in {out} that this run did not make",
              file=sys.stderr)
    print(f"wrote {len(files)} files to {out}" + ("" if args.no_bundle else f" and {out / 'bundle.zip'}"))
    return 0


def _inputs_differ(inputs: Dict[str, torch.Tensor]) -> bool:
    tensors = list(inputs.values())
    return any(t.shape != tensors[0].shape or not torch.equal(t, tensors[0]) for t in tensors[1:])


def _merge(parts: list, settings: MetricSettings):
    """Join single-model analyses of the same image into one (comparisons recomputed across them)."""
    from .per_image import ImageAnalysis, _comparisons

    models = {name: r for part in parts for name, r in part.models.items()}
    return ImageAnalysis(models=models, settings=settings, box=parts[0].box, image_sha256=parts[0].image_sha256,
                         **_comparisons(models, settings, "pca"))


def _map_budget(args: argparse.Namespace) -> int:
    if not args.map_budget_mb > 0:
        raise SystemExit(f"refiner analyze: --map-budget-mb must be positive, got {args.map_budget_mb}")
    return int(args.map_budget_mb * 2**20)


def _dataset_over_items(modules: Dict[str, nn.Module], batches, settings: MetricSettings, total: int,
                        progress: bool, map_budget_bytes: int = DEFAULT_MAP_BUDGET_BYTES):
    """`analyze_dataset` when each model has its own input tensor (per-model preprocessing of files)."""
    from .dataset import analyze_dataset

    if total < 2:
        return None
    selected: Dict[str, torch.Tensor] = {}

    def stream():
        for inputs, boxes in batches:
            selected.clear()
            selected.update(inputs)
            first = next(iter(inputs.values()))
            yield (first, None, boxes) if boxes is not None else (first,)

    # Each model picks its own tensor of the current item; the shared stream only carries boxes.
    preprocess = {label: (lambda _x, label=label: selected[label]) for label in modules}
    return analyze_dataset(modules, stream(), settings, preprocess=preprocess, progress=progress, total=total,
                           map_budget_bytes=map_budget_bytes)


def _write(path: Path, content, files: Dict[str, Path], root: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    files[str(path.relative_to(root))] = path


def _cli_record(args: argparse.Namespace) -> Dict[str, Any]:
    """The arguments that shape the outputs (paths as strings), for ``--manifest`` re-runs."""
    skip = {"manifest", "out", "command", "no_progress", "preloaded_items", "view_bundle"}
    record = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in skip}
    items = getattr(args, "preloaded_items", None)
    if items:
        record["bundle_source"] = items[0].record.get("from_bundle")  # re-made from an app bundle's inputs
    return record


# ----------------------------------------------------------------------------------------- manifest re-run
def _remake(args: argparse.Namespace) -> int:
    from .export import read_manifest

    manifest = read_manifest(args.manifest)
    recorded = dict((manifest.get("extra") or {}).get("cli") or {})
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    remade = parser.parse_args([])
    if recorded.get("model"):
        for key, value in recorded.items():
            if hasattr(remade, key):
                setattr(remade, key, Path(value) if key in ("images", "data_root", "boxes") and value else value)
        if recorded.get("bundle_source"):
            source = Path(recorded["bundle_source"])
            remade.preloaded_items = _bundle_items(source, read_manifest(source))
    else:
        # A bundle written by the app: no command line, but its maps.npz carries every model's input (and,
        # for a Compare view, every map the view's figures are made of).
        remade.preloaded_items = _bundle_items(Path(args.manifest), manifest)
        if (manifest.get("settings") or {}).get("page") == "compare":
            remade.view_bundle = (Path(args.manifest), manifest)
        # Metric settings the app recorded (its other view settings, such as the selected head, are not
        # metric settings); a value the metrics do not accept keeps the default.
        for key, value in (manifest.get("settings") or {}).items():
            if key in MetricSettings().to_dict():
                previous = getattr(remade, key)
                setattr(remade, key, value)
                try:
                    settings_from_args(remade)
                except (ValueError, TypeError):
                    setattr(remade, key, previous)
    # Output-only options given on this command line win (they change file types, not numbers or figures).
    defaults = parser.parse_args([])
    for key in ("formats", "scale", "no_bundle"):
        if getattr(args, key, None) is not None and getattr(args, key) != getattr(defaults, key):
            setattr(remade, key, getattr(args, key))
    # Models are re-loaded from the recorded source with the label they had.
    remade.model = [f"{m['label']}={_model_spec(m)}" for m in manifest["models"]]
    remade.manifest = None
    remade.no_progress = args.no_progress
    remade.device = args.device  # where to run is this machine's choice, not the recorded one
    remade.overwrite = args.overwrite  # permission to write into a folder is asked of this command line
    remade.out = args.out or Path(args.manifest).resolve().parent / "remade"
    return _analyze(remade, expected=manifest)


def _model_spec(record: Dict[str, Any]) -> str:
    """The source that reloads a manifest's model (`refiner.load_model` takes the app's and the CLI's strings).

    Manifests written before the loading seam recorded names built without weights as ``kind: "name"`` with
    ``pretrained: false``; those are random weights (``random:NAME``) and stay so.
    """
    source = str(record["source"])
    if record.get("kind") in ("name", "random") and not record.get("pretrained") and ":" not in source:
        return f"random:{source}"
    if record.get("kind") == "checkpoint" and not Path(source).exists():
        # The app names shipped checkpoints by folder name under checkpoints/.
        if (Path.cwd() / "checkpoints" / source).exists():
            return str(Path.cwd() / "checkpoints" / source)
    return source  # a bare shipped name ("vanilla") is found by load_model


def _bundle_items(path: Path, manifest: Dict[str, Any]) -> List[ImageItem]:
    """The analysed input of an app bundle: per model ``<label>/input`` (C, H, W) from ``maps/maps.npz``."""
    import io
    import zipfile

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
    return [ImageItem(name=str(image.get("key") or "image"), inputs=inputs, picture=picture, box=box, label=None,
                      record={"sha256": image.get("sha256"), "from_bundle": str(path)})]


def _view_outputs(view: Tuple[Path, Dict[str, Any]], models: List[LoadedModel]
                  ) -> Tuple[Dict[str, Any], Dict[str, List[Dict[str, Any]]]]:
    """The figures and tables of an app Compare-view bundle, re-made from its raw maps and settings with
    `analysis.compare_view` (the builders the app drew them with), keyed as in the bundle."""
    import io
    import zipfile

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


def _check_boxes(items: List[ImageItem], manifest: Dict[str, Any]) -> None:
    """Refuse a re-run whose --boxes give other boxes than the manifest recorded (the figures would differ)."""
    recorded = {r.get("path"): r.get("box_input_pixels") for r in manifest.get("images", []) if isinstance(r, dict)}
    changed = [Path(i.record["path"]).name for i in items
               if i.record["path"] in recorded and recorded[i.record["path"]] != i.record["box_input_pixels"]]
    if changed:
        raise ValueError(f"the boxes of {', '.join(changed)} differ from those the manifest recorded "
                         "(--boxes changed); the figures would not be the same")
