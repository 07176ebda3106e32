"""`refiner eval SOURCE [--dataset NAME]`: accuracy, per-class accuracy and a confusion-matrix plot.

SOURCE is anything `refiner.load_model` takes (a checkpoint folder, a weights file, a timm name, ...); the
dataset defaults to the one a checkpoint of ours was trained on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

from .config import ConfigError, parse_override


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the ``eval`` subcommand."""
    parser.add_argument("checkpoint", metavar="SOURCE",
                        help="checkpoint folder, weights file (ARCH@FILE), timm name, hub id (refiner.load_model)")
    parser.add_argument("--dataset", default=None,
                        help="dataset name (default: the one the checkpoint was trained on)")
    parser.add_argument("--split", default="test", help="split to evaluate (default test; val for imagefolder)")
    parser.add_argument("--data-root", default=None, help="folder of cifar/imagefolder data")
    parser.add_argument("--download", action="store_true", help="let torchvision download cifar when missing")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="dataset option (repeatable); default: the checkpoint's own dataset options")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N or mps")
    parser.add_argument("--out", default=None,
                        help="folder for eval.json and confusion_matrix.png (default runs/eval/<checkpoint>-<dataset>)")


def _dataset_options(args: argparse.Namespace, data: Dict[str, Any], dataset: str) -> Dict[str, Any]:
    if dataset == "cluttered-mnist":
        from ..data import canvas_options_for

        # The checkpoint's own test canvases; a model trained on something else gets canvases of its input size.
        options: Dict[str, Any] = canvas_options_for(data)
    else:
        recorded = data.get("dataset_options") if dataset == data.get("dataset") else None
        options = {k: v for k, v in (recorded or {}).items() if k != "seed"}
    for text in args.option:
        path, value = parse_override(text)
        options[".".join(path)] = value
    return options


def run(args: argparse.Namespace) -> int:
    """Evaluate; prints a summary and writes ``eval.json`` + ``confusion_matrix.png``. 2 on bad input."""
    from ..data import DatasetNotFoundError, build_dataset, canonical_name, dataset_info
    from ..device import resolve_device
    from ..loading import ModelSourceError, load_model
    from .evaluation import evaluate, plot_confusion

    try:
        device = resolve_device(args.device)
        loaded = load_model(args.checkpoint, device=device)
        if not (args.dataset or loaded.info.dataset):
            raise ValueError(f"{args.checkpoint} does not record the dataset it was trained on; give --dataset NAME")
        name = canonical_name(args.dataset or loaded.info.dataset or "")
        options = _dataset_options(args, loaded.info.data, name)
        info = dataset_info(name, root=args.data_root, **options)
        if args.download:
            options["download"] = True
        dataset = build_dataset(name, args.split, root=args.data_root, **options)
    except (ModelSourceError, ConfigError, DatasetNotFoundError, ValueError) as error:
        print(f"refiner eval: {error}", file=sys.stderr)
        return 2
    model = loaded.model
    num_classes = int(getattr(model, "num_classes", info.num_classes))
    if num_classes != info.num_classes:
        print(f"refiner eval: the model has {num_classes} outputs but {name} has {info.num_classes} classes",
              file=sys.stderr)
        return 2
    mean, std = loaded.info.preprocessing.mean, loaded.info.preprocessing.std
    result = evaluate(model, dataset, info.num_classes, mean, std, batch_size=args.batch_size, device=device,
                      amp=device.type == "cuda")
    out = Path(args.out) if args.out else Path("runs") / "eval" / f"{Path(args.checkpoint).resolve().name}-{name}"
    out.mkdir(parents=True, exist_ok=True)
    class_names: List[str] = list(info.class_names) or list(loaded.info.class_names)
    report = {"checkpoint": str(Path(args.checkpoint).resolve()), "dataset": name, "split": args.split,
              "dataset_options": {k: v for k, v in options.items() if k != "download"},
              **result.to_dict(class_names)}
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot_confusion(result, out / "confusion_matrix.png", class_names,
                   title=f"{Path(args.checkpoint).name} on {name}/{args.split}: {result.accuracy:.2%}")
    print(f"{name}/{args.split}: accuracy {result.accuracy:.4f} on {result.count} images (loss {result.loss:.4f})")
    for cls, acc in report["per_class_accuracy"].items():  # type: ignore[union-attr]
        print(f"  {cls:>12}: {'n/a' if acc is None else f'{acc:.4f}'}")
    print(f"wrote {out / 'eval.json'} and {out / 'confusion_matrix.png'}")
    return 0
