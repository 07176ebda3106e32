"""The `refiner` command: every subcommand is parsed here and refuses bad options with exit status 2."""

from __future__ import annotations

import pytest
import torch

from refiner_cli import COMMANDS, main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_commands_refuse_a_missing_gpu_with_exit_code_2(tmp_path, capsys) -> None:
    for argv in (["analyze", "--model", "random:vit_micro_patch4_32", "--images", str(tmp_path),
                  "--out", str(tmp_path / "o"), "--device", "cuda"],
                 ["eval", "random:vit_micro_patch4_32", "--dataset", "mnist", "--device", "cuda"],
                 ["app", "--device", "cuda"]):
        assert main(argv) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_app_refuses_a_bad_port_or_budget(capsys) -> None:
    assert main(["app", "--port", "70000"]) == 2
    assert "invalid port 70000" in capsys.readouterr().err
    assert main(["app", "--map-budget-mb", "-1", "--device", "cpu"]) == 2
    assert "--map-budget-mb must be >= 0" in capsys.readouterr().err


def test_every_command_is_a_thin_module_of_this_package() -> None:
    """Arguments are parsed in refiner_cli only: no library package defines an argparse layer any more."""
    import ast
    import importlib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    assert all(module.startswith("refiner_cli.") for module, _help in COMMANDS.values())
    for package in ("refiner", "analysis", "app"):
        for path in (root / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
            imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
            assert "argparse" not in imported, path
    for module, _help in COMMANDS.values():
        loaded = importlib.import_module(module)
        assert callable(loaded.add_arguments) and callable(loaded.run)
