"""Load the released Refiner-ViT checkpoints (original key names) into our official-mode model.

The released ``.pth`` files store the original module names; only the shared blocks' modules and the MLP gain
are named differently here:

    released                                   ours
    blocks.{odd}.attn.qkv.*                    blocks.{odd}.attn.v.*            (it only computes V)
    blocks.{odd}.attn.DLA.conv_exp.*           blocks.{odd}.attn.refinement.expand.*
    blocks.{odd}.attn.DLA.bn1.*                blocks.{odd}.attn.refinement.expand_norm.*
    blocks.{odd}.attn.DLA.depth_sep_conv.*     blocks.{odd}.attn.refinement.local.*
    blocks.{odd}.attn.DLA.bn2.*                blocks.{odd}.attn.refinement.local_norm.*
    blocks.{odd}.attn.DLA.conv_pro.*           blocks.{odd}.attn.refinement.reduce.*
    blocks.{odd}.attn.DLA.bn3.*                blocks.{odd}.attn.refinement.reduce_norm.*
    blocks.{odd}.attn.adapt_bn.*               blocks.{odd}.attn.adapt_norm.*
    blocks.{i}.mlp.scale_channel               blocks.{i}.mlp.gain

Everything else (``patch_embed.conv1``..``bn3``, ``patch_embed.proj``, ``cls_token``, ``pos_embed``, block norms,
``qkv``/``proj`` of normal blocks, ``mlp.fc1/fc2``, ``norm``, ``head``, ``aux_head``) keeps its name.

Files are read with ``torch.load(..., weights_only=True)`` only, so loading never runs code from the file.
`convert_to_checkpoint` (the command ``refiner convert-official PATH [--out DIR]``) writes one of our checkpoint
directories.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .official_refiner_vit import (
    VARIANTS, OfficialRefinerViT, RefinerViTConfig, build_official, is_shared_block, resample_pos_embed,
)

PathLike = Union[str, os.PathLike]

# Wrappers the released/trained files may put around the state dict (checked in this order).
_WRAPPER_KEYS = ("model", "state_dict", "model_ema", "state_dict_ema")
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
# (released prefix, our prefix) inside a shared (odd) block; prefixes end with "." so that e.g. "attn.qkv."
# never matches "attn.qkv_bias".
_SHARED_RENAMES: Tuple[Tuple[str, str], ...] = (
    ("attn.qkv.", "attn.v."),
    ("attn.DLA.conv_exp.", "attn.refinement.expand."),
    ("attn.DLA.bn1.", "attn.refinement.expand_norm."),
    ("attn.DLA.depth_sep_conv.", "attn.refinement.local."),
    ("attn.DLA.bn2.", "attn.refinement.local_norm."),
    ("attn.DLA.conv_pro.", "attn.refinement.reduce."),
    ("attn.DLA.bn3.", "attn.refinement.reduce_norm."),
    ("attn.adapt_bn.", "attn.adapt_norm."),
)
# Exact key renames inside every block.
_BLOCK_RENAMES: Tuple[Tuple[str, str], ...] = (("mlp.scale_channel", "mlp.gain"),)
_BN_COUNTER = "num_batches_tracked"
_VARIANT_ALIASES = {"s": "refiner_vit_s", "m": "refiner_vit_m", "l": "refiner_vit_l"}
VARIANT_CHOICES = tuple(sorted(_VARIANT_ALIASES))  # what `refiner convert-official --variant` takes


def _rename_block_suffix(index: int, suffix: str, renames_to_ours: bool) -> str:
    pairs = _SHARED_RENAMES if is_shared_block(index) else ()
    for released, ours in pairs:
        source, target = (released, ours) if renames_to_ours else (ours, released)
        if suffix.startswith(source):
            return target + suffix[len(source):]
    for released, ours in _BLOCK_RENAMES:
        source, target = (released, ours) if renames_to_ours else (ours, released)
        if suffix == source:
            return target
    return suffix


def _rename_key(key: str, renames_to_ours: bool) -> str:
    """Rename a block key in either direction; keys outside the blocks are named alike in both."""
    match = _BLOCK_KEY.match(key)
    if match is None:
        return key
    index = int(match.group(1))
    return f"blocks.{index}.{_rename_block_suffix(index, match.group(2), renames_to_ours=renames_to_ours)}"


def official_to_ours(key: str) -> str:
    """Our name for a released key (no validation; unknown names come back unchanged)."""
    return _rename_key(key, renames_to_ours=True)


def ours_to_official(key: str) -> str:
    """The released name of one of our keys (used to report missing keys in the file's own terms)."""
    return _rename_key(key, renames_to_ours=False)


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """The flat state dict inside a checkpoint, without wrappers or DDP / torch.compile prefixes.

    The prefixes go through timm's ``clean_state_dict``; what this adds is the wrapper keys and a refusal of
    entries that are not tensors (timm passes them through), so a wrong file fails here with their names.

    Args:
        checkpoint: a state dict, or a dict holding one under "model", "state_dict", "model_ema" or
            "state_dict_ema" (with other entries such as "epoch" or "optimizer" ignored).

    Returns:
        {key: tensor} with leading ``module.`` / ``_orig_mod.`` removed.

    Raises:
        ValueError: the object is not a dict of tensors.
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"expected a state dict (a dict of tensors), got {type(checkpoint).__name__}")
    state: Mapping[str, Any] = checkpoint
    for wrapper in _WRAPPER_KEYS:
        inner = checkpoint.get(wrapper)
        if isinstance(inner, Mapping):
            state = inner
            break
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"not a state dict: entries that are not tensors: {', '.join(not_tensors)}")
    from timm.models import clean_state_dict

    return clean_state_dict({str(key): tensor for key, tensor in state.items()})


def expected_keys(depth: int, num_classes: int = 1000, aux_head: bool = False) -> List[str]:
    """Our state-dict keys for a model of ``depth`` blocks (they do not depend on widths)."""
    config = RefinerViTConfig(img_size=(16, 16), patch_size=16, embed_dim=2, num_heads=1, depth=depth,
                              num_classes=num_classes, aux_head=aux_head)
    with torch.device("meta"):  # names only: allocate nothing
        return list(OfficialRefinerViT(config).state_dict())


def convert_official_state_dict(state_dict: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """Map a released Refiner-ViT state dict onto `OfficialRefinerViT`'s keys.

    The depth is the number of blocks in the file; a head and an auxiliary head are expected when any of
    their keys is present. BatchNorm ``num_batches_tracked`` counters are filled with 0 when a file lacks
    them (they are not weights and do not change eval-mode outputs); every other key must be present.

    Args:
        state_dict: the released state dict, possibly wrapped (see `unwrap_state_dict`).

    Returns:
        {our key: tensor} (the same tensor objects, not copies).

    Raises:
        ValueError: unknown or missing keys; the message lists all of them, sorted, in the file's names.
    """
    source = unwrap_state_dict(state_dict)
    indices = [int(m.group(1)) for m in map(_BLOCK_KEY.match, source) if m is not None]
    if not indices:
        raise ValueError("not a Refiner-ViT state dict: it has no blocks.N.* keys")
    depth = max(indices) + 1
    has_head = any(k.startswith("head.") for k in source)
    has_aux = any(k.startswith("aux_head.") for k in source)
    expected = expected_keys(depth, num_classes=1 if has_head else 0, aux_head=has_aux and has_head)
    expected_set = set(expected)
    converted: Dict[str, torch.Tensor] = {}
    unknown: List[str] = []
    for key, tensor in source.items():
        ours = official_to_ours(key)
        if ours in expected_set:
            converted[ours] = tensor
        else:
            unknown.append(key)
    missing = [ours_to_official(k) for k in expected if k not in converted and not k.endswith(_BN_COUNTER)]
    if unknown or missing:
        parts = [f"{label} keys ({len(keys)}): {', '.join(sorted(keys))}"
                 for label, keys in (("unknown", unknown), ("missing", missing)) if keys]
        raise ValueError(f"not a released Refiner-ViT checkpoint of depth {depth}: {'; '.join(parts)}")
    for key in expected:
        if key.endswith(_BN_COUNTER) and key not in converted:
            converted[key] = torch.zeros((), dtype=torch.long)
    return {key: converted[key] for key in expected}


def infer_official_spec(state_dict: Mapping[str, torch.Tensor],
                        variant: Optional[str] = None) -> Tuple[str, Dict[str, Any]]:
    """Which registered model, with which overrides, a converted state dict fits (from shapes only).

    Args:
        state_dict: our keys (output of `convert_official_state_dict`); tensors may be on the meta device.
        variant: "s", "m", "l" or a full name; None picks the released size whose depth, width, heads and
            MLP width match. With a variant, sizes that differ from it become overrides.

    Returns:
        (name, overrides) for `build_official` / `refiner.create_model`; img_size is inferred from the
        length of ``pos_embed`` (a square grid).

    Raises:
        ValueError: no released size matches (and no variant was given), or an unknown variant.
    """
    embed_dim = int(state_dict["pos_embed"].shape[-1])
    depth = 1 + max(int(m.group(1)) for m in map(_BLOCK_KEY.match, state_dict) if m is not None)
    heads = int(state_dict["blocks.1.attn.adapt_norm.weight"].shape[0]) if depth > 1 else None
    hidden = int(state_dict["blocks.0.mlp.fc1.weight"].shape[0])
    patch_size = 2 * int(state_dict["patch_embed.proj.weight"].shape[-1])
    in_chans = int(state_dict["patch_embed.conv1.weight"].shape[1])
    num_classes = int(state_dict["head.weight"].shape[0]) if "head.weight" in state_dict else 0
    patches = int(state_dict["pos_embed"].shape[1]) - 1
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"pos_embed has {patches} patch positions, not a square grid; cannot infer img_size")
    found = {"embed_dim": embed_dim, "depth": depth, "num_heads": heads, "mlp_hidden": hidden}

    def fits(config: RefinerViTConfig) -> bool:
        return (config.embed_dim == embed_dim and config.depth == depth and heads in (None, config.num_heads)
                and int(config.embed_dim * config.mlp_ratio) == hidden)

    if variant is None:
        matches = [name for name, config in VARIANTS.items() if fits(config)]
        if not matches:
            raise ValueError(f"the weights' sizes {found} match none of {', '.join(VARIANTS)}; pass a variant "
                             "to build that variant with these sizes as overrides")
        name = matches[0]
    else:
        name = _VARIANT_ALIASES.get(variant.lower(), variant.lower())
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose from s, m, l")
    base = VARIANTS[name]
    overrides: Dict[str, Any] = {}
    for field, value in (("embed_dim", embed_dim), ("depth", depth), ("num_heads", heads),
                         ("patch_size", patch_size), ("in_chans", in_chans), ("num_classes", num_classes)):
        if value is not None and value != getattr(base, field):
            overrides[field] = value
    if int(embed_dim * base.mlp_ratio) != hidden:
        overrides["mlp_ratio"] = hidden / embed_dim
    if side * patch_size != base.img_size[0] or side * patch_size != base.img_size[1]:
        overrides["img_size"] = side * patch_size
    if "aux_head.weight" in state_dict:
        overrides["aux_head"] = True
    return name, overrides


def _read_pth(path: PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged, non-torch or code-carrying files
        raise ValueError(f"cannot read {path} as a PyTorch checkpoint with weights_only=True (only plain tensors "
                         f"are accepted, never code): {error}") from None


def load_official_checkpoint(path: PathLike, variant: Optional[str] = None,
                             img_size: Optional[int] = None) -> OfficialRefinerViT:
    """Build the official-mode model a released ``.pth`` describes and load it strictly.

    Args:
        path: the released checkpoint (read with ``torch.load(weights_only=True)``).
        variant: "s", "m" or "l" (None: inferred from the shapes).
        img_size: input size to build for; None uses the size the position embedding was trained at
            (e.g. 448 for the released L). Another size resamples the position embedding.

    Returns:
        The model in eval mode, with ``model_spec`` set so `refiner.save_checkpoint` can store it.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable file, unknown/missing keys, or shapes that fit no model.
    """
    state = convert_official_state_dict(_read_pth(path))
    name, overrides = infer_official_spec(state, variant)
    if img_size is not None:
        trained_grid = _config_for(name, overrides).grid_size
        overrides["img_size"] = int(img_size)
        target = _config_for(name, overrides)  # validates the size (a multiple of the patch size)
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], target.grid_size, trained_grid)
        if target.img_size == VARIANTS[name].img_size:
            del overrides["img_size"]
    model = build_official(name, **overrides)
    _load_strict(model, state, Path(path))
    return model.eval()


def _config_for(name: str, overrides: Mapping[str, Any]) -> RefinerViTConfig:
    values = dict(overrides)
    if isinstance(values.get("img_size"), int):
        values["img_size"] = (values["img_size"], values["img_size"])
    return replace(VARIANTS[name], **values)


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> None:
    own = model.state_dict()
    wrong = sorted(f"{ours_to_official(k)}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in own if k in state and state[k].shape != own[k].shape)
    if wrong:
        raise ValueError(f"weights in {source} do not fit {model.model_spec['name']} "
                         f"(wrong shapes: {'; '.join(wrong)})")
    model.load_state_dict(state, strict=True)


def _default_output(path: Path) -> Path:
    name = path.name
    for suffix in (".tar", ".pth", ".pt", ".bin"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return path.with_name(name if name and name != path.name else f"{path.name}-converted")


def _extra(model: OfficialRefinerViT, source: Path) -> Dict[str, Any]:
    """config.json ``extra``: where the weights came from and the preprocessing they expect."""
    from timm.data import ImageNetInfo

    from .hashing import sha256_of_file

    cfg = model.pretrained_cfg
    config = model.config
    class_names = None
    if config.num_classes == 1000:  # the released models are ImageNet-1k classifiers
        info = ImageNetInfo()
        class_names = [info.index_to_description(i) for i in range(1000)]
    return {
        "data": {"dataset": "imagenet-1k" if class_names else None, "img_size": list(config.img_size),
                 "in_chans": config.in_chans, "mean": list(cfg["mean"]), "std": list(cfg["std"]),
                 "interpolation": cfg["interpolation"], "crop_pct": cfg["crop_pct"], "class_names": class_names},
        "source": {"file": source.name, "sha256": sha256_of_file(source), "format": "released Refiner-ViT .pth"},
    }


def convert_to_checkpoint(path: PathLike, out: Optional[PathLike] = None, variant: Optional[str] = None,
                          img_size: Optional[int] = None, force: bool = False) -> Tuple[OfficialRefinerViT, Path]:
    """Convert a released Refiner-ViT ``.pth`` and write it as one of our checkpoint directories.

    Args:
        path: the released checkpoint.
        out: the directory to write (default: next to ``path``, named after it).
        variant: model size (default: inferred from the weights' shapes).
        img_size: input size to build for (default: the size the weights were trained at).
        force: replace a checkpoint of ours already at ``out``.

    Returns:
        The model and the directory written.

    Raises:
        FileExistsError: ``out`` exists and is not a checkpoint of ours, or is one and ``force`` is not set.
        FileNotFoundError, ValueError: the file cannot be read or converted (nothing is written).
    """
    from .checkpoint import CONFIG_FILE, save_checkpoint

    path = Path(path)
    target = Path(out) if out is not None else _default_output(path)
    if target.exists():
        # save_checkpoint replaces a directory as a whole: never let that hit something that is not ours.
        if not (target / CONFIG_FILE).is_file():
            raise FileExistsError(f"{target} exists and is not a refiner checkpoint; choose another --out")
        if not force:
            raise FileExistsError(f"{target} already holds a checkpoint; pass --force to replace it")
    model = load_official_checkpoint(path, variant=variant, img_size=img_size)
    save_checkpoint(model, target, metrics={}, extra=_extra(model, path))
    return model, target
