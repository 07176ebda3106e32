"""The `refiner` command line (DESIGN section 7).

It sits above the three packages (refiner -> analysis -> app), so that `refiner analyze` and `refiner app`
exist without `refiner` importing `analysis` or `app`. It only parses arguments: each subcommand is one module
here (``<name>_command.py``) exposing ``add_arguments(parser)`` and ``run(args) -> int``, which turns the
``argparse.Namespace`` into plain typed calls of the library function that does the work and prints its
messages. No argparse or Namespace is seen below this package. A subcommand's module is imported only when
used, so ``refiner --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Dict, List, Optional, Tuple

# name -> (module implementing add_arguments/run, one-line help)
COMMANDS: Dict[str, Tuple[str, str]] = {
    "train": ("refiner_cli.train_command", "train a model from a YAML config (works under torchrun)"),
    "eval": ("refiner_cli.eval_command", "evaluate a checkpoint on a dataset"),
    "analyze": ("refiner_cli.analyze_command", "attention analysis of one or two models; figures, tables, bundle"),
    "convert-official": ("refiner_cli.convert_command", "convert a released Refiner-ViT .pth into our checkpoint"),
    "app": ("refiner_cli.app_command", "start the Streamlit app"),
    "models": ("refiner_cli.models_command", "list the registered model names"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refiner", description="Vanilla vs refined ViT attention analysis.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``refiner`` console command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        if argv and not argv[0].startswith("-"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.parse_args(argv)
        parser.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"refiner {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
