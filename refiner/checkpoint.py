"""Checkpoints: one directory each, written atomically, loaded without executing code (DESIGN section 8).

    <dir>/model.safetensors   weights
    <dir>/config.json         {"format": 1, "model": model_spec, "extra": ..., "weights_sha256": ...}
    <dir>/metrics.json        whatever the caller measured
    <dir>/training_state.pt   optional optimizer/scheduler/RNG state (read with weights_only=True)

A save writes everything into a temporary sibling directory, flushes it, and renames it into place. If the
target exists it is first renamed to ``<dir>.old-<pid>``; a kill between the two renames leaves that copy,
which `load_checkpoint` falls back to, so a readable checkpoint exists at every instant.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
TRAINING_STATE_FILE = "training_state.pt"

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint directory is missing, wrong, truncated, or does not match its config."""


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        model: the rebuilt model with its weights, in eval mode.
        config: the parsed config.json.
        metrics: the parsed metrics.json ({} when absent).
        path: the directory it was read from.
    """

    model: nn.Module
    config: Dict[str, Any]
    metrics: Dict[str, Any]
    path: Path


def sha256_of_file(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, payload: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, allow_nan=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def save_checkpoint(model: nn.Module, directory: PathLike, metrics: Optional[Dict[str, Any]] = None,
                    extra: Optional[Dict[str, Any]] = None,
                    training_state: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``model`` to ``directory`` atomically.

    Args:
        model: a model from `refiner.create_model` (it carries ``model_spec``) or the official Refiner-ViT.
        directory: checkpoint directory; replaced as a whole if it exists.
        metrics: JSON-serialisable numbers to keep beside the weights (accuracy, epoch, ...).
        extra: JSON-serialisable data to store in config.json (dataset, preprocessing, recipe, git commit).
        training_state: optional dict of tensors/numbers (optimizer, scheduler, RNG state) for resuming.

    Returns:
        The checkpoint directory.
    """
    spec = getattr(model, "model_spec", None)
    if not spec or "name" not in spec:
        raise CheckpointError("the model has no model_spec; build it with refiner.create_model(...) so that its "
                              "checkpoint can be rebuilt")
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes it private; a checkpoint is meant to be shared like any directory
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        # safetensors refuses tensors that share memory; clone the (rare) aliases.
        seen: Dict[int, str] = {}
        for key, tensor in state.items():
            if tensor.data_ptr() in seen and tensor.numel():
                state[key] = tensor.clone()
            seen[tensor.data_ptr()] = key
        weights = staging / WEIGHTS_FILE
        save_file(state, str(weights), metadata={"format": str(FORMAT_VERSION), "model": spec["name"]})
        with open(weights, "rb+") as handle:
            os.fsync(handle.fileno())
        config = {"format": FORMAT_VERSION, "model": spec, "extra": extra or {},
                  "weights_sha256": sha256_of_file(weights)}
        _write_json(staging / CONFIG_FILE, config)
        _write_json(staging / METRICS_FILE, metrics or {})
        if training_state is not None:
            with open(staging / TRAINING_STATE_FILE, "wb") as handle:
                torch.save(training_state, handle)
                handle.flush()
                os.fsync(handle.fileno())
        _fsync_dir(staging)
        backup = target.with_name(f"{target.name}.old-{os.getpid()}")
        if target.exists():
            os.rename(target, backup)
        os.rename(staging, target)
        _fsync_dir(target.parent)
        shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _resolve_directory(directory: PathLike) -> Path:
    path = Path(directory)
    if path.is_dir():
        return path
    # A save killed between its two renames leaves only the previous copy under <dir>.old-<pid>.
    backups = sorted(path.parent.glob(f"{path.name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    if backups:
        return backups[0]
    if path.is_file():
        raise CheckpointError(f"{path} is a file; a checkpoint is a directory holding {WEIGHTS_FILE} and "
                              f"{CONFIG_FILE}")
    raise CheckpointError(f"no checkpoint directory at {path}")


def read_config(directory: PathLike) -> Dict[str, Any]:
    """Parse and validate ``config.json`` of a checkpoint directory."""
    path = _resolve_directory(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {CONFIG_FILE}; is it a checkpoint written by refiner?")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); the file is damaged") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a refiner checkpoint config of format {FORMAT_VERSION}")
    model = config.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise CheckpointError(f"{path} does not say which model to build (missing model.name)")
    return config


def load_checkpoint(directory: PathLike, map_location: Union[str, torch.device] = "cpu") -> Checkpoint:
    """Rebuild a model from its config and load its weights (never runs code from the files).

    Raises:
        CheckpointError: missing files, damaged or truncated weights, a weights file that is not the one the
            config was written with, or weights that do not fit the model (the message lists the keys).
    """
    from .registry import create_model  # late import: registry imports model modules that import this one

    path = _resolve_directory(directory)
    config = read_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path} has no {WEIGHTS_FILE}")
    expected = config.get("weights_sha256")
    if expected and sha256_of_file(weights) != expected:
        raise CheckpointError(f"{weights} does not match the hash in {CONFIG_FILE}: it is truncated, damaged or "
                              "from another checkpoint")
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {weights}: {error}") from None
    spec = config["model"]
    try:
        model = create_model(spec["name"], **(spec.get("overrides") or {}))
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"cannot rebuild model {spec['name']!r} from {path / CONFIG_FILE}: {error}") from None
    if spec.get("refine") and not (model.model_spec or {}).get("refine"):
        from .refine import refine

        options = {k: v for k, v in spec["refine"].items() if k != "zero_init"}
        refine(model, **options)
    _load_state_strict(model, state, weights)
    model.model_spec = spec
    model.to(map_location).eval()
    metrics_path = path / METRICS_FILE
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    return Checkpoint(model=model, config=config, metrics=metrics, path=path)


def _load_state_strict(model: nn.Module, state: Dict[str, torch.Tensor], source: Path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                         for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        parts = [f"{label}: {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
                 if keys]
        raise CheckpointError(f"weights in {source} do not fit the model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)


def load_training_state(directory: PathLike) -> Optional[Dict[str, Any]]:
    """The saved optimizer/scheduler/RNG state of a checkpoint, or None (read with ``weights_only=True``)."""
    path = _resolve_directory(directory) / TRAINING_STATE_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged or unsafe pickles
        raise CheckpointError(f"cannot read {path}: {error}") from None
