"""`refiner models`: list the model names this project registers, and the shipped checkpoints."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timm", action="store_true", help="also list timm's ViT/DeiT names")


def run(args: argparse.Namespace) -> int:
    import sys

    import timm

    import refiner
    from refiner.shipped import CHECKPOINTS_ENV, checkpoint_root, shipped_checkpoint

    for name in refiner.list_models():
        print(name)
    if args.timm:
        for name in timm.list_models(["vit_*", "deit_*"]):
            print(name)
    # stderr: stdout stays a plain list of names for scripts.
    root = checkpoint_root()
    found = sorted(p.name for p in root.iterdir() if shipped_checkpoint(p.name)) if root.is_dir() else []
    print(f"shipped checkpoints in {root} (${CHECKPOINTS_ENV} overrides): {', '.join(found) or 'none'}; "
          f"use them by name, e.g. refiner analyze --model vanilla --model refined", file=sys.stderr)
    return 0
