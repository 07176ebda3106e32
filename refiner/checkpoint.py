"""Checkpoints: one directory each, written atomically, loaded without executing code (DESIGN section 8).

    <dir>/model.safetensors   weights
    <dir>/config.json         {"format": 1, "model": model_spec, "extra": ..., "weights_sha256": ...}
    <dir>/metrics.json        whatever the caller measured
    <dir>/training_state.pt   optional optimizer/scheduler/RNG state (read with weights_only=True)

A save writes everything into a temporary sibling directory ``.<dir>.tmp-<pid>-*``, flushes it, and renames
it into place. If the target exists it is first renamed to ``<dir>.old-<pid>``; a kill between the two
renames leaves that copy, which `load_checkpoint` falls back to, so a readable checkpoint exists at every
instant. The next successful save (or `tidy_checkpoint`, which a resume calls) removes what killed saves
left behind.

Loading trusts nothing in the directory: config.json is validated field by field (a damaged one gives one
`CheckpointError` naming the file and the field), only architecture fields reach the model constructor
(never ``checkpoint_path`` or anything else that makes a loader read a file), and the model is first
built on the ``meta`` device and compared with the weights file's header, so a config asking for a huge
model fails before any memory is allocated.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .bounded_repr import bounded_repr
from .hashing import sha256_of_file

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
TRAINING_STATE_FILE = "training_state.pt"

PathLike = Union[str, os.PathLike]
# Files are made readable by everyone, like the directory (safetensors creates its file 0600).
FILE_MODE = 0o644
DIR_MODE = 0o755

# The only constructor arguments a config.json may pass on: architecture fields of timm's VisionTransformer,
# of our registered names (the refine_* options) and of the official Refiner-ViT. Anything else, above all
# timm's ``checkpoint_path``/``pretrained_cfg*``, would let a downloaded folder decide which file is read.
ARCHITECTURE_FIELDS = frozenset({
    "img_size", "patch_size", "in_chans", "num_classes", "global_pool", "embed_dim", "depth", "num_heads",
    "mlp_ratio", "qkv_bias", "qk_norm", "proj_bias", "init_values", "class_token", "pos_embed", "no_embed_class",
    "reg_tokens", "pre_norm", "final_norm", "fc_norm", "dynamic_img_size", "dynamic_img_pad", "drop_rate",
    "pos_drop_rate", "patch_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate", "weight_init",
    "refine_ratio", "refine_kernel", "refine_layout", "refine_blocks", "zero_init", "aux_head",
})
REFINE_FIELDS = ("blocks", "ratio", "kernel", "layout", "zero_init")
REFINE_LAYOUTS = ("sequence", "spatial")


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
    existed = target.is_dir()
    staging: Optional[Path] = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
        os.chmod(staging, DIR_MODE)  # mkdtemp makes it private; a checkpoint is meant to be shared
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        # safetensors refuses tensors that share memory; clone the (rare) aliases.
        seen: Dict[int, str] = {}
        for key, tensor in state.items():
            if tensor.data_ptr() in seen and tensor.numel():
                state[key] = tensor.clone()
            seen[tensor.data_ptr()] = key
        weights = staging / WEIGHTS_FILE
        save_file(state, str(weights), metadata={"format": str(FORMAT_VERSION), "model": spec["name"]})
        os.chmod(weights, FILE_MODE)
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
        _swap_into_place(staging, target)
        staging = None
    except (OSError, RuntimeError, SafetensorError) as error:
        # torch.save reports a full disk as a RuntimeError ("unexpected pos ..."), safetensors as its own type.
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointError(_write_failure(target, error, existed)) from None
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    tidy_checkpoint(target)
    return target


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``, moving an existing ``target`` aside first and back on failure."""
    backup = target.with_name(f"{target.name}.old-{os.getpid()}")
    moved = False
    if target.exists():
        if backup.exists():
            shutil.rmtree(backup)
        os.rename(target, backup)
        moved = True
    try:
        os.rename(staging, target)
    except OSError:
        if moved and not target.exists():
            os.rename(backup, target)
        raise
    _fsync_dir(target.parent)
    if moved:
        shutil.rmtree(backup, ignore_errors=True)


def _write_failure(target: Path, error: BaseException, existed: bool) -> str:
    """Words for a failed save: what happened, and that the previous copy (if any) is unchanged."""
    if isinstance(error, OSError):
        reason = error.strerror or str(error)
        full = error.errno == errno.ENOSPC
        if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            reason = f"{reason} (the folder cannot be written)"
        elif error.errno in (errno.ENOTDIR, errno.EEXIST):
            reason = f"{reason} (a part of the path is a file, not a folder)"
        text = f"{error.filename}: {reason}" if error.filename else reason
    else:
        full = False
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if not full:
        try:
            probe = next((p for p in (target.parent, *target.parents) if p.exists()), Path("."))
            full = shutil.disk_usage(probe).free < 64 * 1024 * 1024
        except OSError:
            pass
    if full:
        text = f"the disk is full ({text})"
    kept = (f"the previous checkpoint in {target} is intact" if existed
            else "no checkpoint was written")
    return f"cannot write checkpoint {target}: {text}; {kept}"


_COPY_PATTERN = r"(?:\.{name}\.tmp-|{name}\.old-)(\d+)?"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def tidy_checkpoint(directory: PathLike) -> List[Path]:
    """Put back a checkpoint a killed save left only as ``<dir>.old-<pid>``, then delete stale copies.

    Stale copies are the staging folders ``.<dir>.tmp-*`` and backups ``<dir>.old-*`` of saves that were
    killed; those of a save still running in another live process are kept.

    Returns:
        The paths removed.
    """
    target = Path(directory)
    parent = target.parent
    if not parent.is_dir():
        return []
    pattern = re.compile(_COPY_PATTERN.format(name=re.escape(target.name)))
    copies = []
    for entry in parent.iterdir():
        match = pattern.match(entry.name)
        if not match or not entry.is_dir():
            continue
        pid = int(match.group(1)) if match.group(1) else None
        if pid is not None and pid != os.getpid() and _alive(pid):
            continue  # another process's save in progress
        copies.append(entry)
    if not target.is_dir():
        backups = sorted((c for c in copies if ".old-" in c.name), key=lambda p: p.stat().st_mtime, reverse=True)
        if not backups:
            return []
        os.rename(backups[0], target)
        copies.remove(backups[0])
    for entry in copies:
        shutil.rmtree(entry, ignore_errors=True)
    return copies


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


def _field_error(path: Path, field: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: {field} {problem}; the file is damaged or was not written by refiner")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); the file is damaged") from None
    except RecursionError:
        raise CheckpointError(f"{path} is nested too deeply to be a checkpoint file; the file is damaged") from None
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror or error}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_override(path: Path, key: str, value: Any) -> None:
    field = f"model.overrides.{key}"
    if key not in ARCHITECTURE_FIELDS:
        raise CheckpointError(f"{path}: {field} is not an architecture field a model is built with; refusing to "
                              f"pass it on (only {', '.join(sorted(ARCHITECTURE_FIELDS))} are accepted)")
    plain = value is None or isinstance(value, (bool, str)) or _is_number(value)
    if isinstance(value, list):
        plain = len(value) <= 1024 and all(_is_int(v) for v in value)
    if not plain or (isinstance(value, str) and len(value) > 64):
        raise _field_error(path, field, f"must be a number, a short text or a list of integers, not {bounded_repr(value)}")
    if _is_int(value) and not -1 <= value <= 1_000_000:
        raise _field_error(path, field, f"= {value} is out of range")


def _check_refine(path: Path, refine: Any) -> None:
    if refine is None:
        return
    if not isinstance(refine, Mapping):
        raise _field_error(path, "model.refine", f"must be an object or null, not {bounded_repr(refine)}")
    unknown = sorted(set(refine) - set(REFINE_FIELDS))
    if unknown:
        raise _field_error(path, f"model.refine.{unknown[0]}", f"is unknown (fields: {', '.join(REFINE_FIELDS)})")
    blocks = refine.get("blocks")
    if blocks is not None and not (isinstance(blocks, list) and len(blocks) <= 4096 and all(_is_int(b) for b in blocks)):
        raise _field_error(path, "model.refine.blocks", f"must be a list of block indices, not {bounded_repr(blocks)}")
    for key in ("ratio", "kernel"):
        if key in refine and not (_is_int(refine[key]) and 1 <= refine[key] <= 64):
            raise _field_error(path, f"model.refine.{key}", f"must be an integer from 1 to 64, not {bounded_repr(refine[key])}")
    if "layout" in refine and refine["layout"] not in REFINE_LAYOUTS:
        raise _field_error(path, "model.refine.layout", f"must be one of {', '.join(REFINE_LAYOUTS)}, not "
                           f"{bounded_repr(refine['layout'])}")
    if "zero_init" in refine and not isinstance(refine["zero_init"], bool):
        raise _field_error(path, "model.refine.zero_init", "must be true or false")


def _check_data(path: Path, where: str, data: Any) -> None:
    """The preprocessing fields the app, eval and analysis read (CONTRACT "Checkpoint extra and preprocessing")."""
    if data is None:
        return
    if not isinstance(data, Mapping):
        raise _field_error(path, where, f"must be an object, not {bounded_repr(data)}")
    if "img_size" in data and data["img_size"] is not None:
        size = data["img_size"]
        sides = [size] if _is_int(size) else size if isinstance(size, list) else None
        if not sides or len(sides) > 3 or not all(_is_int(v) and 1 <= v <= 16384 for v in sides):
            raise _field_error(path, f"{where}.img_size", f"must be a size in pixels or [height, width], not "
                               f"{bounded_repr(size)}")
    if "in_chans" in data and data["in_chans"] is not None and not (_is_int(data["in_chans"]) and
                                                                     1 <= data["in_chans"] <= 64):
        raise _field_error(path, f"{where}.in_chans", f"must be an integer from 1 to 64, not {bounded_repr(data['in_chans'])}")
    for key in ("mean", "std"):
        values = data.get(key)
        if values is None:
            continue
        if not (isinstance(values, list) and 1 <= len(values) <= 64 and all(_is_number(v) for v in values)):
            raise _field_error(path, f"{where}.{key}", f"must be a list of numbers, not {bounded_repr(values)}")
        if key == "std" and any(v <= 0 for v in values):
            raise _field_error(path, f"{where}.std", "must be positive")
    names = data.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise _field_error(path, f"{where}.class_names", f"must be a list of texts, not {bounded_repr(names)}")
    for key in ("dataset", "interpolation"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise _field_error(path, f"{where}.{key}", f"must be a text, not {bounded_repr(data[key])}")
    if data.get("dataset_options") is not None and not isinstance(data["dataset_options"], Mapping):
        raise _field_error(path, f"{where}.dataset_options", f"must be an object, not {bounded_repr(data['dataset_options'])}")


def read_config(directory: PathLike) -> Dict[str, Any]:
    """Parse and validate ``config.json`` of a checkpoint directory.

    Raises:
        CheckpointError: naming the file and the field, for anything a loader could trip over later.
    """
    path = _resolve_directory(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {CONFIG_FILE}; is it a checkpoint written by refiner?")
    config = _read_json(path)
    if not isinstance(config, dict) or config.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a refiner checkpoint config of format {FORMAT_VERSION}")
    model = config.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise CheckpointError(f"{path} does not say which model to build (missing model.name)")
    overrides = model.get("overrides")
    if overrides is not None and not isinstance(overrides, dict):
        raise _field_error(path, "model.overrides", f"must be an object, not {bounded_repr(overrides)}")
    for key, value in (overrides or {}).items():
        _check_override(path, key, value)
    _check_refine(path, model.get("refine"))
    digest = config.get("weights_sha256")
    if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        raise _field_error(path, "weights_sha256", f"must be a SHA-256 in hex, not {bounded_repr(digest)}")
    extra = config.get("extra")
    if extra is not None and not isinstance(extra, dict):
        raise _field_error(path, "extra", f"must be an object, not {bounded_repr(extra)}")
    for key in ("data", "preprocessing"):
        _check_data(path, f"extra.{key}", (extra or {}).get(key))
    if extra and "class_names" in extra:
        _check_data(path, "extra", {"class_names": extra["class_names"]})
    return config


def load_checkpoint(directory: PathLike, map_location: Union[str, torch.device] = "cpu") -> Checkpoint:
    """Rebuild a model from its config and load its weights (never runs code from the files).

    Raises:
        CheckpointError: and no other type, for missing files, a damaged config.json or metrics.json (naming
            the field), damaged or truncated weights, a weights file that is not the one the config was
            written with, or weights that do not fit the model (the message lists the keys).
    """
    path = _resolve_directory(directory)
    config = read_config(path)
    config_path = path / CONFIG_FILE
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path} has no {WEIGHTS_FILE}")
    expected = config.get("weights_sha256")
    if expected and sha256_of_file(weights) != expected:
        raise CheckpointError(f"{weights} does not match the hash in {CONFIG_FILE}: it is truncated, damaged or "
                              "from another checkpoint")
    shapes = _weight_shapes(weights)
    spec = config["model"]
    # Built on the meta device first: no memory is allocated, so a config asking for a huge model (or one the
    # weights do not fit) is refused before anything real is built.
    _load_state_strict(_rebuild(spec, config_path, meta=True), shapes, weights, shapes_only=True)
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"cannot read {weights}: {error}") from None
    model = _rebuild(spec, config_path, meta=False)
    _load_state_strict(model, state, weights)
    model.model_spec = spec
    model.to(map_location).eval()
    metrics_path = path / METRICS_FILE
    metrics = _read_json(metrics_path) if metrics_path.is_file() else {}
    if not isinstance(metrics, dict):
        raise CheckpointError(f"{metrics_path} must hold a JSON object, not {bounded_repr(metrics)}")
    return Checkpoint(model=model, config=config, metrics=metrics, path=path)


def _weight_shapes(weights: Path) -> Dict[str, tuple]:
    """Tensor name -> shape from a safetensors header (no tensor data is read)."""
    try:
        with safe_open(str(weights), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"cannot read {weights}: {error}") from None


def _rebuild(spec: Dict[str, Any], config_path: Path, meta: bool) -> nn.Module:
    """The model ``spec`` describes (validated by `read_config`), on the meta device or for real."""
    from .refine import refine
    from .registry import create_model  # late import: registry imports model modules that import this one

    name = spec["name"]
    overrides = dict(spec.get("overrides") or {})
    try:
        with torch.device("meta") if meta else contextlib.nullcontext():
            model = create_model(name, **overrides)
            if spec.get("refine") and not (model.model_spec or {}).get("refine"):
                refine(model, **{k: v for k, v in spec["refine"].items() if k != "zero_init"})
    except MemoryError:
        raise CheckpointError(f"{config_path}: model.overrides ask for a model too large to build") from None
    except Exception as error:  # timm and torch raise many types for impossible sizes
        field = "model.refine" if "refine" in str(error) else "model.overrides" if overrides else "model.name"
        raise CheckpointError(f"cannot rebuild model {name!r} from {config_path} ({field}): "
                              f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    return model


def _load_state_strict(model: nn.Module, state: Mapping[str, Any], source: Path, shapes_only: bool = False) -> None:
    """Check that ``state`` (tensors, or shapes with ``shapes_only``) fits ``model`` exactly, then load it."""
    own = model.state_dict()
    shape_of = (lambda k: tuple(state[k])) if shapes_only else (lambda k: tuple(state[k].shape))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(f"{k}: file {shape_of(k)} vs model {tuple(own[k].shape)}"
                         for k in set(own) & set(state) if tuple(own[k].shape) != shape_of(k))
    if missing or unexpected or wrong_shape:
        parts = [f"{label}: {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
                 if keys]
        raise CheckpointError(f"weights in {source} do not fit the model ({'; '.join(parts)})")
    if not shapes_only:
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
