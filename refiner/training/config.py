"""The training recipe: one frozen dataclass, read from YAML plus ``key=value`` overrides.

Every field is documented below; a key that is not a field is an error naming the key and its close
matches, so a typo never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml

from ..bounded_repr import bounded_repr


class ConfigError(ValueError):
    """A training config has an unknown key, a value of the wrong type, or an impossible setting."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Attributes:
        model: model name for `refiner.create_model` (ours or any timm name).
        model_overrides: constructor overrides (embed_dim, depth, drop_rate, refine_ratio, ...). ``num_classes``
            and ``in_chans`` default to the dataset's.
        dataset: dataset name for `refiner.data.build_dataset`.
        dataset_options: options of that dataset (cluttered-mnist: canvas_size, scale_range, fragments, ...;
            the training seed of cluttered-mnist is taken from ``seed``).
        data_root: folder of cifar/imagefolder data (default ``$REFINER_DATA`` or ``~/.cache/refiner/data``).
        download: let torchvision download cifar10/cifar100 when missing.
        eval_split: split evaluated after every epoch ("test"; "val" for imagefolder).
        epochs: training epochs (an epoch is one pass over the training split; cluttered-mnist draws
            ``dataset_options.epoch_size`` new canvases per epoch).
        batch_size: images per step *per process* (the global batch is batch_size x world size).
        eval_batch_size: images per evaluation forward pass.
        lr: peak learning rate of AdamW, reached at the end of warmup.
        min_lr: learning rate at the end of the cosine decay.
        warmup_epochs: linear warmup length in epochs (fractions allowed), from ``warmup_lr``.
        warmup_lr: learning rate at step 0.
        weight_decay: AdamW decoupled weight decay (not applied to biases, norms, position embeddings, tokens).
        betas: AdamW betas.
        label_smoothing: label smoothing of the cross-entropy (folded into the soft targets under mixup).
        mixup: mixup alpha (0 = off).
        cutmix: cutmix alpha (0 = off); with both on, timm's Mixup switches between them per batch.
        randaugment: timm auto-augment string such as "rand-m9-mstd0.5-inc1", applied to PIL-image datasets
            (cifar, imagefolder); None = off. Cluttered-mnist is random by construction and ignores it.
        random_erasing: probability of timm's random erasing on PIL-image datasets (0 = off).
        drop_path: stochastic depth rate (timm's drop_path_rate).
        ema_decay: decay of an exponential moving average of the weights (timm ModelEmaV3); None = off.
            When on, evaluation and the saved weights use the average.
        grad_clip: clip the global gradient norm to this value; None = off.
        amp: bf16 autocast on CUDA (ignored on the CPU, where it is slower).
        seed: seed of initialisation, data order, augmentation and the cluttered-mnist stream.
        workers: DataLoader worker processes (0 = load in the training process).
        threads: torch CPU threads per process (None = torch's default); set 1 to share a CPU.
        output_dir: where ``last/``, ``best/``, ``metrics.jsonl``, ``training_curve.png`` and
            ``config.yaml`` go.
        log_every: steps between progress-bar updates of the running loss/accuracy.
        progress: show a tqdm progress bar (rank 0 only).
    """

    model: str = "vit_mini_patch6_48"
    model_overrides: Dict[str, Any] = field(default_factory=dict)
    dataset: str = "cluttered-mnist"
    dataset_options: Dict[str, Any] = field(default_factory=dict)
    data_root: Optional[str] = None
    download: bool = False
    eval_split: str = "test"
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 250
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_epochs: float = 1.0
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    randaugment: Optional[str] = None
    random_erasing: float = 0.0
    drop_path: float = 0.0
    ema_decay: Optional[float] = None
    grad_clip: Optional[float] = 1.0
    amp: bool = True
    seed: int = 0
    workers: int = 0
    threads: Optional[int] = None
    output_dir: str = "runs/default"
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append("epochs must be >= 1")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            problems.append("batch_size and eval_batch_size must be >= 1")
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            problems.append("mixup/cutmix need an even batch_size")
        if not 0 < self.lr or self.min_lr < 0 or self.warmup_lr < 0:
            problems.append("lr must be > 0 and min_lr, warmup_lr >= 0")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            problems.append("warmup_epochs must lie in [0, epochs]")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.random_erasing <= 1 or not 0 <= self.drop_path < 1:
            problems.append("label_smoothing, drop_path must lie in [0, 1) and random_erasing in [0, 1]")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            problems.append("ema_decay must lie in (0, 1) or be null")
        if self.grad_clip is not None and self.grad_clip <= 0:
            problems.append("grad_clip must be > 0 or null")
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                                           for b in self.betas):
            problems.append(f"betas must be two numbers in [0, 1), not {bounded_repr(self.betas)}")
        if self.seed < 0:
            problems.append("seed must be >= 0")
        if self.workers < 0 or (self.threads is not None and self.threads < 1) or self.log_every < 1:
            problems.append("workers must be >= 0, threads >= 1 or null, log_every >= 1")
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> Dict[str, Any]:
        """Plain-data copy (what ``config.yaml`` and the checkpoint record)."""
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# Fields whose values are free-form mappings: their keys are checked later by the model/dataset builders.
_MAPPING_FIELDS = ("model_overrides", "dataset_options")
# Values inside those mappings are plain: scalars or short flat lists (img_size [48, 48], scale_range, blocks).
_MAX_LIST = 1024


def _unknown_key_error(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(_FIELDS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key {key!r} in {where}{hint} (see refiner.training.config.TrainConfig)")


def _check_type(key: str, value: Any) -> Any:
    """Validate (and lightly coerce: int -> float, list -> list) one value against its field's annotation."""
    annotation = str(_FIELDS[key].type)
    optional = "Optional" in annotation
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key {key!r} cannot be null")
    base = annotation.replace("Optional[", "").rstrip("]") if optional else annotation
    if base == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    expected = {"int": int, "bool": bool, "str": str}.get(base)
    if expected is not None:
        if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"config key {key!r} must be {base}, got {bounded_repr(value)}")
    if base.startswith("Dict") and not isinstance(value, Mapping):
        raise ConfigError(f"config key {key!r} must be a mapping, got {bounded_repr(value)}")
    if base.startswith("List") and not (isinstance(value, (list, tuple)) and len(value) <= _MAX_LIST and
                                        all(_is_scalar(v) for v in value)):
        raise ConfigError(f"config key {key!r} must be a list of numbers, got {bounded_repr(value)}")
    if base.startswith("Dict"):
        for name, item in value.items():
            _check_plain(f"{key}.{name}", item)
        return dict(value)
    if base.startswith("List"):
        return list(value)
    if base == "float":
        raise ConfigError(f"config key {key!r} must be a number, got {bounded_repr(value)}")
    return value


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _check_plain(where: str, value: Any) -> None:
    """A value of ``model_overrides``/``dataset_options``: a scalar or a short flat list of scalars.

    Checked without walking into nested values, so a YAML alias bomb (a few hundred bytes that stand for
    billions of items) is refused at once instead of exhausting memory when copied or quoted.
    """
    if _is_scalar(value):
        return
    if isinstance(value, (list, tuple)) and len(value) <= _MAX_LIST and all(_is_scalar(v) for v in value):
        return
    raise ConfigError(f"config key {where!r} must be a number, text, true/false, null or a flat list of those, "
                      f"got {bounded_repr(value)}")


def parse_override(text: str) -> tuple[List[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], value parsed as YAML: ``lr=3e-3`` -> 0.003, ``x=null`` -> None)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:  # e.g. a tag such as !!python/object, which safe_load refuses
        problem = str(getattr(error, "problem", "") or error).splitlines()[0]
        raise ConfigError(f"override {bounded_repr(text)}: the value is not a plain YAML value ({problem})") from None
    # YAML 1.1 reads "3e-3" as a string; a number is what anyone writing it means.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key.strip().split("."), value


def build_config(data: Mapping[str, Any], overrides: Sequence[str] = (), where: str = "config") -> TrainConfig:
    """Validate a mapping (from YAML) plus ``key=value`` overrides into a `TrainConfig`.

    Overrides may address a key of a mapping field with a dot: ``dataset_options.fragments=2``.

    Raises:
        ConfigError: unknown key (with close matches), wrong type, or an impossible combination.
    """
    values: Dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in _FIELDS:
            raise _unknown_key_error(bounded_repr(key), where)
        values[key] = value
    for text in overrides:
        path, value = parse_override(text)
        if path[0] not in _FIELDS:
            raise _unknown_key_error(path[0], f"override {text!r}")
        if len(path) == 1:
            values[path[0]] = value
        elif path[0] in _MAPPING_FIELDS and len(path) == 2:
            values[path[0]] = {**dict(values.get(path[0]) or {}), path[1]: value}
        else:
            raise ConfigError(f"override {text!r}: only {', '.join(_MAPPING_FIELDS)} take a dotted key")
    checked = {key: _check_type(key, value) for key, value in values.items()}
    return TrainConfig(**checked)


def load_config(path: os.PathLike | str, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML recipe and apply overrides.

    Raises:
        ConfigError: unreadable file, not a mapping, or any `build_config` error.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values")
    return build_config(data, overrides, where=str(path))
