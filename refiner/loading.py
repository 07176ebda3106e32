"""`load_model`: the one way a model enters the tool (app, ``refiner analyze``, ``refiner eval``, Python API).

    loaded = refiner.load_model("checkpoints/refined")            # LoadedModel(model, info, label)
    x = loaded.info.transform(pil_image)                           # (C, H, W): the model's own eval transform

Source strings (the same in the app's text box and in ``--model LABEL=SOURCE``):

    ``path/to/checkpoint``                     this project's checkpoint folder (config.json format 1 + safetensors)
    ``vanilla`` / ``refined``                  the shipped pair by name (`refiner.shipped`; a folder of that name wins)
    ``path/to/hub-folder``                     a timm hub-format folder (``save_for_hf``: config.json + weights)
    ``path/to/transformers-folder``            a Hugging Face ``save_pretrained`` folder (ViT, DeiT, DINOv2 (+reg))
    ``path/to/refiner_vit_l.pth``              the released Refiner-ViT weights (official mode)
    ``path/to/model_best.pth.tar``             a timm training checkpoint (its ``arch`` names the architecture)
    ``ARCH@path/to/weights.{safetensors,pth}`` a bare state dict and the timm architecture it belongs to
    ``vit_small_patch16_224`` / ``timm:NAME``  a timm name with pretrained weights (network or timm's cache)
    ``hf-hub:timm/NAME`` / ``local-dir:PATH``  timm's own hub and folder names
    ``random:NAME``                            the architecture with random weights (seeded; tests and benchmarks)
    ``NAME?img_size=448``                      any name above built at another input size (``448`` or ``384x512``;
                                               timm resamples pretrained position embeddings to it)

Our own registered names (``refiner.list_models()``) have no released weights and are built with random
weights. Nothing is executed from a file: safetensors, ``torch.load(weights_only=True)``, JSON configs, and
``transformers`` without remote code. Without a network, a timm name whose weights are not cached fails at
once (a two-second reachability probe, or none with ``HF_HUB_OFFLINE=1``) and says how to get them.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .model_info import LoadedModel, ModelInfo, frozen_mapping
from .preprocessing import Preprocessing
from .shipped import shipped_checkpoint
from .hashing import sha256_of_file, state_dict_sha256

STATE_DICT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".pth.tar", ".ckpt")
HUB_HOST = "huggingface.co"
_PROBE_TIMEOUT_S = 2.0
_reachable: Dict[str, bool] = {}
# Preprocessing fields a checkpoint of ours may record (extra["data"]).
_RECORDED_PREPROCESSING = ("img_size", "in_chans", "mean", "std", "interpolation", "crop_pct", "crop_mode")


class ModelSourceError(ValueError):
    """A source that cannot be loaded, with what was expected in words."""


# ------------------------------------------------------------------------------------------------ public
def load_model(source: str, device: Union[str, torch.device] = "cpu", *, seed: int = 0,
               label: Optional[str] = None) -> LoadedModel:
    """Load any supported source and describe it once.

    Args:
        source: a source string (see the module docstring); ``LABEL=SOURCE`` is accepted too.
        device: where the model should live ("cpu", "cuda", "cuda:1", ...).
        seed: the seed of random weights (``random:`` names and our registered names), so the same source
            always gives the same model.
        label: a short name; default the label in ``LABEL=SOURCE`` or one made from the source.

    Returns:
        `LoadedModel` with ``.model`` in eval mode on ``device`` and ``.info`` (`ModelInfo`).

    Raises:
        ModelSourceError: the source is none of the supported kinds, its files are damaged or do not fit, or
            pretrained weights are not available offline. The message says what was expected.
    """
    given_label, text = split_label(source)
    text = text.strip()
    if not text:
        raise ModelSourceError("empty model source; give a checkpoint folder, a weights file, a hub id or a "
                               "model name")
    model, info = _dispatch(text, seed)
    model = model.to(device).eval()
    return LoadedModel(model=model, info=info, label=label or given_label or default_label(text))


def split_label(text: str) -> Tuple[str, str]:
    """``"A=checkpoints/vanilla"`` -> ("A", "checkpoints/vanilla"); no label -> ("", text).

    Only a plain word before the first "=" is a label, so paths and hub ids containing "=" stay whole.
    """
    head, sep, rest = text.partition("=")
    if sep and head and all(c.isalnum() or c in "-_." for c in head) and not os.path.exists(text):
        return head, rest
    return "", text


def default_label(source: str) -> str:
    """A short name for a source: the folder or file name, or the model name."""
    for prefix in ("random:", "timm:", "hf-hub:", "local-dir:", "dir:"):
        if source.startswith(prefix):
            source = source[len(prefix):]
            break
    arch, at, path = source.partition("@")
    if at and arch and "/" not in arch:
        source = path
    base, question, query = source.partition("?")
    if question and "/" not in base:  # a name with options: "refiner_vit_l?img_size=448" -> "refiner_vit_l-448"
        size = query.partition("img_size=")[2].partition("&")[0]
        return f"{base}-{size}" if size else base
    name = Path(source.rstrip("/")).name or source
    for suffix in STATE_DICT_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def source_path(source: str) -> Optional[Path]:
    """The local file or folder a source reads, by the rules `load_model` dispatches with (``dir:`` and
    ``local-dir:`` folders, ``ARCH@FILE`` weights, paths, the shipped names); None for names and hub ids."""
    text = split_label(source.strip())[1]
    for prefix in ("dir:", "local-dir:"):
        if text.startswith(prefix):
            return Path(text[len(prefix):]).expanduser()
    arch, at, file_part = text.partition("@")
    if at and arch and "/" not in arch and Path(file_part).expanduser().exists():
        return Path(file_part).expanduser()
    path = Path(text).expanduser()
    return path if path.exists() else shipped_checkpoint(text)


# ---------------------------------------------------------------------------------------------- dispatch
def _dispatch(text: str, seed: int) -> Tuple[nn.Module, ModelInfo]:
    if text.startswith("random:"):
        return _load_name(text[len("random:"):], text, pretrained=False, seed=seed)
    if text.startswith("timm:"):
        return _load_name(text[len("timm:"):], text, pretrained=True, seed=seed)
    if text.startswith("dir:"):
        return _load_path(Path(text[len("dir:"):]).expanduser(), text)
    if text.startswith("local-dir:"):
        return _load_timm_hub_folder(Path(text[len("local-dir:"):]).expanduser(), text)
    if text.startswith("hf-hub:"):
        return _load_hf_hub(text[len("hf-hub:"):], text)
    arch, at, file_part = text.partition("@")
    if at and arch and "/" not in arch and Path(file_part).expanduser().exists():
        return _load_state_dict_file(Path(file_part).expanduser(), arch, text)
    path = Path(text).expanduser()
    if path.exists():
        return _load_path(path, text)
    shipped = shipped_checkpoint(text)  # "vanilla", "refined": the shipped pair (checkout or installed copy)
    if shipped is not None:
        return _load_our_checkpoint(shipped, text)
    if "/" in text or text.startswith(".") or text.endswith(STATE_DICT_SUFFIXES):
        raise ModelSourceError(f"no file or folder at {path}")
    return _load_name(text, text, pretrained=True, seed=seed)


def _load_path(path: Path, source: str) -> Tuple[nn.Module, ModelInfo]:
    if path.is_file():
        if not path.name.endswith(STATE_DICT_SUFFIXES):
            raise ModelSourceError(f"{path} is a file but not a weights file ({', '.join(STATE_DICT_SUFFIXES)}); "
                                   "a model source is a checkpoint folder, a weights file, a hub id or a model name")
        return _load_state_dict_file(path, None, source)
    if not path.is_dir():
        raise ModelSourceError(f"no file or folder at {path}")
    config_path = path / "config.json"
    config = _read_json(config_path) if config_path.is_file() else None
    if isinstance(config, dict) and "format" in config and "model" in config:
        return _load_our_checkpoint(path, source)
    if isinstance(config, dict) and "model_type" in config:
        return _load_transformers_folder(path, source, config)
    if isinstance(config, dict) and ("architecture" in config or "model_args" in config):
        return _load_timm_hub_folder(path, source)
    # A save killed between its renames leaves <dir>.old-<pid>; load_checkpoint knows how to recover it.
    if not config_path.is_file() and any(path.parent.glob(f"{path.name}.old-*")):
        return _load_our_checkpoint(path, source)
    raise ModelSourceError(
        f"{path} is a folder but not a model folder: expected config.json of this project's checkpoints "
        "(\"format\" and \"model\"), of a timm hub folder (\"architecture\") or of a Hugging Face transformers "
        "folder (\"model_type\"), beside the weights")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ModelSourceError(f"{path} is not readable JSON ({type(error).__name__}: {error})") from None


# ------------------------------------------------------------------------------------------ our folders
def _load_our_checkpoint(path: Path, source: str) -> Tuple[nn.Module, ModelInfo]:
    from .checkpoint import CheckpointError, load_checkpoint
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as error:
        raise ModelSourceError(str(error)) from None
    model, config = checkpoint.model, checkpoint.config
    data = saved_data(config)
    # The trainer's record wins; what it does not say comes from the model (timm's config of the
    # architecture), except the crop: our trainer evaluates on whole images (crop_pct 1).
    recorded = {k: data[k] for k in _RECORDED_PREPROCESSING if data.get(k) is not None}
    merged: Dict[str, Any] = {**Preprocessing.from_model(model).as_dict(), "crop_pct": 1.0, "crop_mode": "center",
                              **recorded}
    if "img_size" in recorded or "in_chans" in recorded:
        merged.pop("input_size")
    try:
        prep = Preprocessing.from_mapping(merged)
    except ValueError as error:
        raise ModelSourceError(f"{checkpoint.path / 'config.json'}: {error}") from None
    name = str((config.get("model") or {}).get("name"))
    info = describe(model, name=name, source=source, kind="checkpoint",
                    weights=f"checkpoint folder {checkpoint.path}",
                    weights_sha256=str(config.get("weights_sha256") or "") or state_dict_sha256(model),
                    preprocessing=prep, class_names=data.get("class_names"), dataset=data.get("dataset"),
                    dataset_options=data.get("dataset_options"), config=config, metrics=checkpoint.metrics)
    return model, info


_DATA_KEYS = ("dataset", "dataset_options", "img_size", "in_chans", "mean", "std", "class_names", "interpolation")


def saved_data(config: Any) -> Dict[str, Any]:
    """The preprocessing a checkpoint's ``config.json`` records, in the CONTRACT's ``extra["data"]`` shape.

    Reads ``extra["data"]`` (CONTRACT) and also the trainer's flat layout: ``extra["preprocessing"]`` (img_size,
    in_chans, mean, std) with ``extra["class_names"]``, ``extra["dataset"]`` and ``extra["dataset_options"]`` beside
    it, which checkpoints written before the trainer moved to ``extra["data"]`` hold. Without the latter a
    trained checkpoint would silently lose its class names and normalisation. Where both are present,
    ``extra["data"]`` wins.

    Args:
        config: the parsed config.json (anything else gives {}).

    Returns:
        A dict with some of `_DATA_KEYS`.
    """
    extra = config.get("extra") if isinstance(config, Mapping) else None
    if not isinstance(extra, Mapping):
        return {}
    flat: Dict[str, Any] = {}
    preprocessing = extra.get("preprocessing")
    if isinstance(preprocessing, Mapping):
        flat.update({k: preprocessing[k] for k in _DATA_KEYS if k in preprocessing})
    flat.update({k: extra[k] for k in ("dataset", "dataset_options", "class_names") if k in extra})
    data = extra.get("data")
    if isinstance(data, Mapping):
        flat.update(data)
    return flat


# ---------------------------------------------------------------------------------------------- names
# The architecture options a name source may carry after "?": the input size only (research models are studied
# at 384, 448, 518 px); anything else would let a source string reach arbitrary constructor arguments.
NAME_OPTIONS = ("img_size",)


def parse_name_options(text: str) -> Tuple[str, Dict[str, Any]]:
    """``"refiner_vit_l?img_size=448"`` -> ("refiner_vit_l", {"img_size": (448, 448)}); ``384x512`` is (H, W).

    Raises:
        ModelSourceError: an unknown option or a size that is not one or two positive integers.
    """
    name, question, query = text.partition("?")
    options: Dict[str, Any] = {}
    if not question:
        return name.strip(), options
    for item in filter(None, query.split("&")):
        key, equals, value = item.partition("=")
        key = key.strip()
        if key not in NAME_OPTIONS or not equals:
            raise ModelSourceError(f"{text!r}: a model name takes only {', '.join(o + '=' for o in NAME_OPTIONS)} "
                                   f"after '?' (e.g. {name.strip()}?img_size=448), not {item!r}")
        parts = value.lower().replace(" ", "").split("x")
        if not 1 <= len(parts) <= 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ModelSourceError(f"{text!r}: img_size must be a positive integer or HxW (e.g. 448 or 384x512), "
                                   f"not {value!r}")
        size = tuple(int(p) for p in parts)
        options[key] = size * 2 if len(size) == 1 else size
    return name.strip(), options


def _load_name(name: str, source: str, pretrained: bool, seed: int) -> Tuple[nn.Module, ModelInfo]:
    import timm

    from .registry import create_model, list_models

    name, options = parse_name_options(name)
    if not timm.is_model(name):
        try:
            create_model(name)  # raises ValueError with close matches
        except ValueError as error:
            raise ModelSourceError(f"{name!r} is neither a file or folder nor a model name ({error}); a source is "
                                   "a checkpoint or hub folder, a weights file (ARCH@FILE), a timm name, "
                                   "hf-hub:ORG/NAME or random:NAME") from None
    has_weights = _has_pretrained_weights(name)
    if pretrained and (name in list_models() or not has_weights):
        pretrained = False  # our registered names (and bare architectures) have no released weights
    if not pretrained:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _build(create_model, name, source, options)
        return model, describe(model, name=name, source=source, kind="random",
                               weights=f"random init (torch.manual_seed({seed}))",
                               weights_sha256=state_dict_sha256(model))
    overlay = _offline_weights_overlay(name)
    try:
        model = _build(create_model, name, source, options, pretrained=True,
                       **({"pretrained_cfg_overlay": overlay} if overlay else {}))
    except ModelSourceError:
        raise
    except Exception as error:  # timm raises many kinds for hub/network/cache problems
        raise ModelSourceError(f"could not get the pretrained weights of {name}: {type(error).__name__}: "
                               f"{error}. {_how_to_get_weights(name)}") from None
    return model, describe(model, name=name, source=source, kind="timm",
                           weights=f"timm pretrained ({getattr(model, 'pretrained_cfg', {}).get('tag') or 'default'})",
                           weights_sha256=state_dict_sha256(model))


def _build(create_model: Callable[..., nn.Module], name: str, source: str, options: Dict[str, Any],
           **kwargs: Any) -> nn.Module:
    """``create_model(name, **options, **kwargs)``; an architecture that refuses the options says so."""
    try:
        return create_model(name, **options, **kwargs)
    except (TypeError, ValueError, AssertionError) as error:
        if not options:
            raise
        raise ModelSourceError(f"{source!r}: {name} cannot be built with "
                               f"{', '.join(f'{k}={v}' for k, v in options.items())}: {error}") from None


def _has_pretrained_weights(name: str) -> bool:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return bool(cfg is not None and (cfg.hf_hub_id or cfg.url or cfg.file))


def _offline_weights_overlay(name: str) -> Optional[Dict[str, str]]:
    """``pretrained_cfg_overlay`` that points timm at cached weights when the hub cannot be reached, None when
    it can (timm downloads or revalidates itself). Raises at once when neither works."""
    if hub_reachable():
        return None
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    cached = _cached_hub_file(cfg.hf_hub_id) if cfg is not None and cfg.hf_hub_id else None
    if cached is None and cfg is not None and cfg.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        cached = candidate if candidate.is_file() else None
    if cached is None:
        raise ModelSourceError(f"the pretrained weights of {name} are not in the local caches and "
                               f"{HUB_HOST} cannot be reached. {_how_to_get_weights(name)}")
    return {"file": str(cached)}


def _cached_hub_file(repo_id: str) -> Optional[Path]:
    """The weights file of a hub repo in the local Hugging Face cache (no network), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, _, revision = repo_id.partition("@")
    for filename in ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _how_to_get_weights(name: str) -> str:
    return (f"To use them without a network, download them once where there is one (timm.create_model({name!r}, "
            "pretrained=True) fills the Hugging Face cache, ~/.cache/huggingface or $HF_HOME, which is then used "
            f"offline; HF_HUB_OFFLINE=1 skips the network check), or save them to a folder and give that folder "
            f"(local-dir:PATH) or the weights file as {name}@FILE. For random weights of the same architecture use "
            f"random:{name}.")


def hub_reachable() -> bool:
    """Whether the Hugging Face hub answers a TCP connection within two seconds (cached per process;
    False at once when ``HF_HUB_OFFLINE`` is set). Name resolution is included in the bound: it runs in a thread
    because ``getaddrinfo`` ignores socket timeouts."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if HUB_HOST in _reachable:
        return _reachable[HUB_HOST]
    result = [False]

    def probe() -> None:
        try:
            with socket.create_connection((HUB_HOST, 443), timeout=_PROBE_TIMEOUT_S):
                result[0] = True
        except OSError:
            result[0] = False

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(_PROBE_TIMEOUT_S + 0.2)
    _reachable[HUB_HOST] = result[0]
    return result[0]


# ------------------------------------------------------------------------------------------- timm hub
def _load_hf_hub(repo_id: str, source: str) -> Tuple[nn.Module, ModelInfo]:
    """``hf-hub:ORG/NAME``: timm downloads it where the hub answers; otherwise the cached snapshot is used."""
    if hub_reachable():
        import timm

        try:
            model = timm.create_model(f"hf-hub:{repo_id}", pretrained=True)
        except Exception as error:
            raise ModelSourceError(f"could not load hf-hub:{repo_id}: {type(error).__name__}: {error}") from None
        return model, describe(model, name=str(getattr(model, "pretrained_cfg", {}).get("architecture") or repo_id),
                               source=source, kind="timm-hub", weights=f"hf-hub:{repo_id}",
                               weights_sha256=state_dict_sha256(model))
    folder = None
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        folder = None
    if folder is None or not (folder / "config.json").is_file():
        raise ModelSourceError(f"hf-hub:{repo_id} is not in the local Hugging Face cache and {HUB_HOST} cannot be "
                               "reached; download it once where there is a network (huggingface-cli download "
                               f"{repo_id}) or give the downloaded folder as local-dir:PATH")
    return _load_timm_hub_folder(folder, source)


def _load_timm_hub_folder(path: Path, source: str) -> Tuple[nn.Module, ModelInfo]:
    """A timm hub-format folder (config.json with ``architecture`` and ``pretrained_cfg``, plus the weights):
    timm's own ``local-dir:`` loader, which reads safetensors or ``torch.load(weights_only=True)``."""
    import timm

    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelSourceError(f"{path} has no config.json; a timm hub folder holds config.json and "
                               "model.safetensors (timm.models.save_for_hf)")
    config = _read_json(config_path)
    weights = next((path / f for f in ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")
                    if (path / f).is_file()), None)
    if weights is None:
        raise ModelSourceError(f"{path} has a config.json but no model.safetensors or pytorch_model.bin")
    try:
        model = timm.create_model(f"local-dir:{path}", pretrained=True)
    except Exception as error:
        raise ModelSourceError(f"{path} could not be loaded as a timm hub folder: {type(error).__name__}: "
                               f"{error}") from None

    arch = str(config.get("architecture") or getattr(model, "pretrained_cfg", {}).get("architecture") or path.name)
    label_names = config.get("label_names") if isinstance(config, dict) else None
    return model, describe(model, name=arch, source=source, kind="timm-hub", weights=str(weights),
                           weights_sha256=sha256_of_file(weights), class_names=label_names, config=config)


# ------------------------------------------------------------------------------------------ state dicts
def read_state_dict(path: Path) -> Tuple[Dict[str, torch.Tensor], Optional[str]]:
    """Tensors of a weights file and the architecture it records (timm's training checkpoints keep ``arch``).

    safetensors, or ``torch.load(weights_only=True)`` (timm's loader: ``argparse.Namespace`` of the training
    arguments is the one extra type allowed). Wrapped dicts (``state_dict``, ``model``, ``state_dict_ema``,
    ``model_ema``: the non-EMA weights are preferred, EMA is used when it is all there is) and ``module.`` /
    ``_orig_mod.`` prefixes are unwrapped.
    """
    from timm.models import clean_state_dict

    if path.name.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), None
        except (SafetensorError, OSError, ValueError) as error:
            raise ModelSourceError(f"cannot read {path} as safetensors: {error}") from None
    from timm.models._helpers import _torch_load

    try:
        raw = _torch_load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged or unsafe pickles
        raise ModelSourceError(f"cannot read {path} as a PyTorch weights file with weights_only=True: "
                               f"{type(error).__name__}: {error}") from None
    if not isinstance(raw, Mapping):
        raise ModelSourceError(f"{path} holds a {type(raw).__name__}, not a state dict")
    arch = raw.get("arch") if isinstance(raw.get("arch"), str) else None
    for key in ("state_dict", "model", "state_dict_ema", "model_ema", "module"):
        if isinstance(raw.get(key), Mapping):
            raw = raw[key]
            break
    state = {k: v for k, v in clean_state_dict(dict(raw)).items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ModelSourceError(f"{path} holds no tensors")
    return state, arch


def _is_official_refiner(state: Mapping[str, torch.Tensor]) -> bool:
    return any(".DLA." in k or "adapt_bn" in k for k in state)


def _load_state_dict_file(path: Path, arch: Optional[str], source: str) -> Tuple[nn.Module, ModelInfo]:

    state, recorded_arch = read_state_dict(path)
    digest = sha256_of_file(path)
    if arch is None and _is_official_refiner(state):
        from .convert_official import load_official_checkpoint

        try:
            model = load_official_checkpoint(path)
        except (ValueError, FileNotFoundError) as error:
            raise ModelSourceError(str(error)) from None
        name = str((getattr(model, "model_spec", None) or {}).get("name") or "refiner_vit")
        return model, describe(model, name=name, source=source, kind="official", weights=str(path),
                               weights_sha256=digest)
    arch = arch or recorded_arch
    if arch is None:
        raise ModelSourceError(f"{path} is a bare state dict that does not say its architecture; give it as "
                               f"ARCH@{path} (e.g. vit_small_patch16_224@{path})")
    model = _model_for_state_dict(arch, state, path)
    return model, describe(model, name=arch, source=source, kind="state-dict", weights=str(path),
                           weights_sha256=digest)


def _model_for_state_dict(arch: str, state: Dict[str, torch.Tensor], path: Path) -> nn.Module:
    """Build ``arch`` with the classifier size the weights have, then load them strictly (through the family's
    ``checkpoint_filter_fn`` when the keys are in the original repository's layout)."""
    import sys

    import timm

    from .registry import create_model

    if not timm.is_model(arch):
        try:
            create_model(arch)
        except ValueError as error:
            raise ModelSourceError(f"{arch!r} in {arch}@{path}: {error}") from None
    overrides: Dict[str, Any] = {}
    head = state.get("head.weight", state.get("head.fc.weight"))
    if head is not None and head.ndim == 2:
        overrides["num_classes"] = int(head.shape[0])
    elif not any(k.startswith("head") for k in state):
        overrides["num_classes"] = 0
    try:
        model = create_model(arch, **overrides)
    except (TypeError, ValueError) as error:
        raise ModelSourceError(f"cannot build {arch} for {path}: {error}") from None
    attempts: Dict[str, Callable[[], Dict[str, torch.Tensor]]] = {"as saved": lambda: state}
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if callable(filter_fn):
        attempts["through timm's checkpoint_filter_fn"] = lambda: filter_fn(dict(state), model)
    problems = []
    for how, make in attempts.items():
        try:
            candidate = make()
        except Exception as error:  # a filter for another layout may fail on these keys
            problems.append(f"{how}: {type(error).__name__}: {error}")
            continue
        mismatch = _state_mismatch(model, candidate)
        if not mismatch:
            model.load_state_dict(candidate, strict=True)
            return model
        problems.append(f"{how}: {mismatch}")
    raise ModelSourceError(f"the weights in {path} do not fit {arch} ({'; '.join(problems)})")


def _state_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in set(own) & set(state)
                    if tuple(own[k].shape) != tuple(state[k].shape))
    parts = [f"{what}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
             for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if keys]
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------- transformers
# transformers classes a folder's config.json may name, by family (never a class from elsewhere).
_HF_CLASS_PREFIXES = {"vit": "ViT", "deit": "DeiT", "dinov2": "Dinov2", "dinov2_with_registers": "Dinov2WithRegisters"}


def _load_transformers_folder(path: Path, source: str, config: Mapping[str, Any]) -> Tuple[nn.Module, ModelInfo]:
    """A Hugging Face ``save_pretrained`` folder of the ViT family (the optional ``[hf]`` extra): the class its
    config names (``architectures``), loaded by ``from_pretrained`` without remote code, wrapped as a ViT; the
    preprocessing from its ``preprocessor_config.json`` (the family's processor defaults when there is none)."""
    from .hf_vit import SUPPORTED_MODEL_TYPES, wrap_hf_model

    model_type = str(config.get("model_type"))
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelSourceError(f"{path} is a transformers {model_type!r} folder; supported model types are "
                               f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    try:
        import transformers
    except ImportError:
        raise ModelSourceError(f"{path} is a Hugging Face transformers folder; install the optional extra "
                               "(pip install 'refiner-attention[hf]', or pip install transformers)") from None
    prefix = _HF_CLASS_PREFIXES[model_type]
    names = [n for n in (config.get("architectures") or []) if isinstance(n, str)]
    class_name = next((n for n in names if n.startswith(prefix) and not n[len(prefix):len(prefix) + 1].islower()),
                      f"{prefix}Model")
    hf_class = getattr(transformers, class_name, None)
    if hf_class is None:
        raise ModelSourceError(f"{path}: transformers {transformers.__version__} has no class {class_name}")
    try:
        hf_model = hf_class.from_pretrained(str(path), trust_remote_code=False)
    except Exception as error:  # transformers raises OSError/ValueError/... for damaged folders
        raise ModelSourceError(f"{path} could not be loaded with transformers.{class_name}: "
                               f"{type(error).__name__}: {error}") from None
    processor_path = path / "preprocessor_config.json"
    processor = _read_json(processor_path) if processor_path.is_file() else None
    model = wrap_hf_model(hf_model.eval(), processor)
    weights = next((path / f for f in ("model.safetensors", "pytorch_model.bin") if (path / f).is_file()), None)

    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    return model, describe(model, name=f"transformers:{class_name}", source=source, kind="transformers",
                           weights=str(weights or path),
                           weights_sha256=sha256_of_file(weights) if weights else state_dict_sha256(model),
                           class_names=cfg.get("label_names"), config=config)


# ---------------------------------------------------------------------------------------- description
def describe(model: nn.Module, *, name: str, source: str, kind: str, weights: str, weights_sha256: str,
             preprocessing: Optional[Preprocessing] = None, class_names: Optional[Any] = None,
             dataset: Optional[str] = None, dataset_options: Optional[Mapping[str, Any]] = None,
             config: Optional[Mapping[str, Any]] = None, metrics: Optional[Mapping[str, Any]] = None) -> ModelInfo:
    """The `ModelInfo` of a built model: geometry read from the model at its input size."""
    from .model_geometry import grid_for_image, model_patch_size, token_layout

    prep = preprocessing or Preprocessing.from_model(model)
    height, width = prep.img_size
    try:
        patch = model_patch_size(model)
        grid = grid_for_image(model, height, width)
    except (TypeError, AttributeError) as error:
        raise ModelSourceError(f"{name} is not a ViT this tool can analyse: {error}") from None
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    names = tuple(str(n) for n in class_names) if class_names else tuple(str(i) for i in range(num_classes))
    if num_classes and len(names) != num_classes:
        names = tuple(str(i) for i in range(num_classes))
    layout = token_layout(model)
    return ModelInfo(name=name, source=source, kind=kind, weights=weights, weights_sha256=weights_sha256,
                     num_params=sum(p.numel() for p in model.parameters()), num_classes=num_classes,
                     class_names=names, preprocessing=prep, patch_size=tuple(patch), grid_size=tuple(grid),
                     num_prefix_tokens=layout.num_prefix_tokens, has_class_token=layout.has_class_token,
                     dataset=dataset, dataset_options=frozen_mapping(dataset_options),
                     config=frozen_mapping(config), metrics=frozen_mapping(metrics))
