"""``refiner convert-official PATH``: the arguments of `refiner.convert_official.convert_to_checkpoint`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``refiner convert-official``."""
    from refiner.convert_official import VARIANT_CHOICES

    parser.add_argument("path", type=Path, help="released Refiner-ViT checkpoint (.pth), downloaded by you")
    parser.add_argument("--out", type=Path, default=None,
                        help="checkpoint directory to write (default: next to PATH, named after it)")
    parser.add_argument("--variant", choices=VARIANT_CHOICES, default=None,
                        help="model size (default: inferred from the weights' shapes)")
    parser.add_argument("--img-size", type=int, default=None,
                        help="input size to build for (default: the size the weights were trained at; another "
                             "size resamples the position embedding)")
    parser.add_argument("--force", action="store_true", help="replace an existing checkpoint at --out")


def run(args: argparse.Namespace) -> int:
    """Convert ``args.path``; returns the exit status (2 for bad input)."""
    from refiner.convert_official import convert_to_checkpoint

    try:
        model, out = convert_to_checkpoint(args.path, args.out, variant=args.variant, img_size=args.img_size,
                                           force=args.force)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    print(f"{model.model_spec['name']} at {config.img_size[0]}x{config.img_size[1]} px, {config.num_classes} classes"
          f"{', auxiliary head' if config.aux_head else ''}, {params:,} parameters -> {out}")
    print(f"load it with refiner.load_checkpoint({str(out)!r})")
    return 0
