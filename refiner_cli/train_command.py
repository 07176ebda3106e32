"""`refiner train --config configs/X.yaml [key=value ...] [--resume]` (works under torchrun): the arguments of
`refiner.training.load_config` and `refiner.training.Trainer`, and the exit status of their errors."""

from __future__ import annotations

import argparse
import sys

from refiner.training.config import ConfigError, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the ``train`` subcommand."""
    parser.add_argument("--config", required=True, help="YAML recipe (fields of refiner.training.config.TrainConfig)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override config keys, e.g. lr=2e-3 epochs=5 dataset_options.fragments=2")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue from <output_dir>/last with its optimizer, schedule and RNG state")
    mode.add_argument("--overwrite", action="store_true",
                      help="delete the run already in <output_dir> (checkpoints, metrics.jsonl) and start over")


def run(args: argparse.Namespace) -> int:
    """Train; returns 0 when done, 2 for a config error, 1 when outputs cannot be written, 3 after a non-finite
    loss, 130/143 after a signal."""
    from refiner.checkpoint import CheckpointError
    from refiner.data import DatasetNotFoundError
    from refiner.training.distributed import init_distributed, shutdown
    from refiner.training.trainer import Trainer

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"refiner train: {error}", file=sys.stderr)
        return 2
    context = init_distributed()
    try:
        trainer = Trainer(config, resume=args.resume, context=context, overwrite=args.overwrite)
        return trainer.fit()
    except (ConfigError, DatasetNotFoundError) as error:
        print(f"refiner train: {error}", file=sys.stderr)
        return 2
    except CheckpointError as error:  # a save failed; its message says whether the previous copy is intact
        print(f"refiner train: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the log, the curve or config.yaml could not be written
        print(f"refiner train: cannot write {error.filename or config.output_dir}: {error.strerror or error}; "
              f"{_kept(config.output_dir)}", file=sys.stderr)
        return 1
    finally:
        shutdown(context)


def _kept(output_dir: str) -> str:
    from pathlib import Path

    last = Path(output_dir) / "last"
    return f"the checkpoint in {last} is intact" if last.is_dir() else "no checkpoint had been saved yet"
