"""`refiner models`: list the model names this project registers."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timm", action="store_true", help="also list timm's ViT/DeiT names")


def run(args: argparse.Namespace) -> int:
    import timm

    import refiner

    for name in refiner.list_models():
        print(name)
    if args.timm:
        for name in timm.list_models(["vit_*", "deit_*"]):
            print(name)
    return 0
