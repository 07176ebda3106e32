"""`refiner train --config configs/X.yaml [key=value ...] [--resume]` (works under torchrun)."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the ``train`` subcommand."""
    parser.add_argument("--config", required=True, help="YAML recipe (fields of refiner.training.config.TrainConfig)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override config keys, e.g. lr=2e-3 epochs=5 dataset_options.fragments=2")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <output_dir>/last with its optimizer, schedule and RNG state")


def run(args: argparse.Namespace) -> int:
    """Train; returns 0 when done, 2 for a config error, 3 after a non-finite loss, 130/143 after a signal."""
    from ..data import DatasetNotFoundError
    from .distributed import init_distributed, shutdown
    from .trainer import Trainer

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"refiner train: {error}", file=sys.stderr)
        return 2
    context = init_distributed()
    try:
        trainer = Trainer(config, resume=args.resume, context=context)
        return trainer.fit()
    except (ConfigError, DatasetNotFoundError) as error:
        print(f"refiner train: {error}", file=sys.stderr)
        return 2
    finally:
        shutdown(context)
