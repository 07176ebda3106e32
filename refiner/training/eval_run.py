"""What ``refiner eval SOURCE [--dataset NAME]`` does: accuracy, per-class accuracy and a confusion-matrix plot
of any `refiner.load_model` source on a dataset split (by default the one a checkpoint of ours was trained
on), written as ``eval.json`` and ``confusion_matrix.png``. `refiner_cli.eval_command` parses its arguments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from .config import parse_override
from .evaluation import EvalResult


@dataclass(frozen=True)
class EvalReport:
    """What `evaluate_source` measured and wrote.

    Attributes:
        result: the measurement.
        report: the JSON written to ``eval.json``.
        dataset, split: what it ran on.
        out: the folder of ``eval.json`` and ``confusion_matrix.png``.
    """

    result: EvalResult
    report: Dict[str, Any]
    dataset: str
    split: str
    out: Path


def dataset_options(data: Dict[str, Any], dataset: str, overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """The dataset options of an evaluation: the checkpoint's own test canvases (cluttered-mnist; a model trained
    on something else gets canvases of its input size) or its recorded options, then ``KEY=VALUE`` overrides.

    Raises:
        refiner.training.ConfigError: an override is not ``KEY=VALUE``.
    """
    if dataset == "cluttered-mnist":
        from ..data import canvas_options_for

        options: Dict[str, Any] = canvas_options_for(data)
    else:
        recorded = data.get("dataset_options") if dataset == data.get("dataset") else None
        options = {k: v for k, v in (recorded or {}).items() if k != "seed"}
    for text in overrides:
        path, value = parse_override(text)
        options[".".join(path)] = value
    return options


def evaluate_source(source: str, dataset: Optional[str] = None, split: str = "test",
                    data_root: Optional[Union[str, Path]] = None, download: bool = False,
                    options: Sequence[str] = (), batch_size: int = 250, device: str = "auto",
                    out: Optional[Union[str, Path]] = None) -> EvalReport:
    """Evaluate a model source on a dataset split and write ``eval.json`` + ``confusion_matrix.png``.

    Args:
        source: anything `refiner.load_model` takes.
        dataset: dataset name (default: the one the checkpoint records).
        split: the split.
        data_root: folder of cifar/imagefolder data.
        download: let torchvision download cifar when missing.
        options: ``KEY=VALUE`` dataset options over the checkpoint's own.
        batch_size: images per forward pass.
        device: `refiner.device.resolve_device` name.
        out: output folder (default ``runs/eval/<source>-<dataset>``).

    Raises:
        refiner.ModelSourceError, refiner.training.ConfigError, refiner.data.DatasetNotFoundError, ValueError:
            bad input, before anything is written.
    """
    from ..data import build_dataset, canonical_name, dataset_info
    from ..device import resolve_device
    from ..loading import load_model
    from .evaluation import evaluate, plot_confusion

    target = resolve_device(device)
    loaded = load_model(source, device=target)
    if not (dataset or loaded.info.dataset):
        raise ValueError(f"{source} does not record the dataset it was trained on; give --dataset NAME")
    name = canonical_name(dataset or loaded.info.dataset or "")
    chosen = dataset_options(loaded.info.data, name, options)
    info = dataset_info(name, root=data_root, **chosen)
    data = build_dataset(name, split, root=data_root, **({**chosen, "download": True} if download else chosen))
    model = loaded.model
    num_classes = int(getattr(model, "num_classes", info.num_classes))
    if num_classes != info.num_classes:
        raise ValueError(f"the model has {num_classes} outputs but {name} has {info.num_classes} classes")
    mean, std = loaded.info.preprocessing.mean, loaded.info.preprocessing.std
    result = evaluate(model, data, info.num_classes, mean, std, batch_size=batch_size, device=target,
                      amp=target.type == "cuda")
    folder = Path(out) if out else Path("runs") / "eval" / f"{Path(source).resolve().name}-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    class_names: List[str] = list(info.class_names) or list(loaded.info.class_names)
    report = {"checkpoint": str(Path(source).resolve()), "dataset": name, "split": split,
              "dataset_options": chosen, **result.to_dict(class_names)}
    (folder / "eval.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot_confusion(result, folder / "confusion_matrix.png", class_names,
                   title=f"{Path(source).name} on {name}/{split}: {result.accuracy:.2%}")
    return EvalReport(result=result, report=report, dataset=name, split=split, out=folder)
