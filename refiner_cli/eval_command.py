"""`refiner eval SOURCE [--dataset NAME]`: the arguments of `refiner.training.eval_run.evaluate_source`."""

from __future__ import annotations

import argparse
import sys


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


def run(args: argparse.Namespace) -> int:
    """Evaluate; prints a summary. 2 on bad input."""
    from refiner.data import DatasetNotFoundError
    from refiner.loading import ModelSourceError
    from refiner.training.config import ConfigError
    from refiner.training.eval_run import evaluate_source

    try:
        done = evaluate_source(args.checkpoint, dataset=args.dataset, split=args.split, data_root=args.data_root,
                               download=args.download, options=args.option, batch_size=args.batch_size,
                               device=args.device, out=args.out)
    except (ModelSourceError, ConfigError, DatasetNotFoundError, ValueError) as error:
        print(f"refiner eval: {error}", file=sys.stderr)
        return 2
    result = done.result
    print(f"{done.dataset}/{done.split}: accuracy {result.accuracy:.4f} on {result.count} images "
          f"(loss {result.loss:.4f})")
    for cls, acc in done.report["per_class_accuracy"].items():
        print(f"  {cls:>12}: {'n/a' if acc is None else f'{acc:.4f}'}")
    print(f"wrote {done.out / 'eval.json'} and {done.out / 'confusion_matrix.png'}")
    return 0
