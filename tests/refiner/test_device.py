"""--device auto|cpu|cuda[:N]|mps: what each name resolves to, and a clear refusal of what is not here."""

from __future__ import annotations

import argparse

import pytest
import torch

from refiner.device import resolve_device


def test_auto_takes_a_gpu_only_when_there_is_one() -> None:
    expected = "cuda" if torch.cuda.is_available() else \
        "mps" if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_refused_clearly(spec: str) -> None:
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device(spec)


@pytest.mark.parametrize("spec", ["tpu", "gpu0", ""])
def test_unknown_names_list_the_choices(spec: str) -> None:
    with pytest.raises(ValueError, match="choose from auto, cpu, cuda"):
        resolve_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_commands_refuse_a_missing_gpu_with_exit_code_2(tmp_path, capsys) -> None:
    from analysis import cli_analyze
    from app import launch
    from refiner.training import eval_command

    for module, argv in ((cli_analyze, ["--model", "random:vit_micro_patch4_32", "--images", str(tmp_path),
                                        "--out", str(tmp_path / "o"), "--device", "cuda"]),
                         (eval_command, ["random:vit_micro_patch4_32", "--dataset", "mnist", "--device", "cuda"]),
                         (launch, ["--device", "cuda"])):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        assert module.run(parser.parse_args(argv)) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written
