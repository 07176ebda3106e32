"""refiner.load_model: every source kind round-trips offline to the same logits, and bad sources get one clear
message. Everything here is made in the test (random weights, temp folders); nothing is downloaded."""

from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import refiner
from refiner import ModelSourceError, load_model
from refiner import loading

SMALL = dict(depth=2, embed_dim=64, num_heads=2, num_classes=7)


def _timm_model(name: str = "vit_small_patch16_224", **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **{**SMALL, **overrides}).eval()


def _same_logits(a: torch.nn.Module, b: torch.nn.Module, shape=(2, 3, 224, 224)) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=1e-5)


@pytest.fixture()
def offline(monkeypatch):
    """No network, deterministically: the hub probe fails as it does without one, and the caches are empty."""
    def refuse(*_args, **_kwargs):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(loading, "_reachable", {})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


# ------------------------------------------------------------------------------------------- our folders
def test_our_checkpoint_folder(tmp_path: Path) -> None:
    model = refiner.create_model("vit_micro_patch4_32", in_chans=1).eval()
    refiner.save_checkpoint(model, tmp_path / "ck", extra={"data": {
        "dataset": "mnist", "img_size": [32, 32], "in_chans": 1, "mean": [0.1307], "std": [0.3081],
        "class_names": [f"digit {i}" for i in range(10)]}})
    loaded = load_model(str(tmp_path / "ck"))
    info = loaded.info
    assert info.kind == "checkpoint" and info.name == "vit_micro_patch4_32" and loaded.label == "ck"
    assert info.input_size == (1, 32, 32) and info.preprocessing.mean == (0.1307,)
    assert info.preprocessing.crop_pct == 1.0  # our trainer evaluates on whole images
    assert info.class_names[3] == "digit 3" and info.dataset == "mnist"
    assert info.grid_size == (8, 8) and info.patch_size == (4, 4) and info.num_tokens == 65
    assert info.has_class_token and info.num_prefix_tokens == 1
    assert info.weights_sha256 == json.loads((tmp_path / "ck" / "config.json").read_text())["weights_sha256"]
    assert not loaded.model.training
    _same_logits(model, loaded.model, (2, 1, 32, 32))
    with pytest.raises((TypeError, AttributeError)):
        info.name = "other"  # frozen
    with pytest.raises(TypeError):
        info.config["format"] = 2  # read-only mapping


def test_shipped_pair_loads_with_recorded_preprocessing() -> None:
    root = Path(__file__).resolve().parents[2] / "checkpoints"
    for name in ("vanilla", "refined"):
        info = load_model(str(root / name)).info
        assert info.input_size == (1, 48, 48) and info.dataset == "cluttered-mnist"
        assert len(info.class_names) == 10 and info.preprocessing.crop_pct == 1.0


def test_label_prefix_and_default_labels(tmp_path: Path) -> None:
    assert loading.split_label("A=random:vit_micro_patch4_32") == ("A", "random:vit_micro_patch4_32")
    assert loading.split_label("hf-hub:timm/x=y") == ("", "hf-hub:timm/x=y")  # not a plain word before "="
    assert loading.default_label("vit_small_patch16_224@/runs/x/model_best.pth.tar") == "model_best"
    assert load_model("mine=random:vit_micro_patch4_32").label == "mine"


# ----------------------------------------------------------------------------------------- names, offline
def test_random_names_are_seeded_and_described() -> None:
    a, b = load_model("random:vit_micro_patch4_32"), load_model("random:vit_micro_patch4_32")
    assert a.info.kind == "random" and a.info.weights_sha256 == b.info.weights_sha256
    assert load_model("random:vit_micro_patch4_32", seed=1).info.weights_sha256 != a.info.weights_sha256
    # Our registered names have no released weights: built with random weights, said so.
    assert load_model("refined_vit_micro_patch4_32").info.kind == "random"


def test_name_options_build_another_input_size() -> None:
    loaded = load_model("random:vit_micro_patch4_32?img_size=48x40")
    assert loaded.info.preprocessing.img_size == (48, 40) and loaded.label == "vit_micro_patch4_32-48x40"
    assert loaded.model(torch.zeros(1, 3, 48, 40)).shape[0] == 1
    assert load_model("random:vit_micro_patch4_32?img_size=48").info.preprocessing.img_size == (48, 48)


@pytest.mark.parametrize("source, word", [("random:vit_micro_patch4_32?depth=2", "only img_size"),
                                          ("random:vit_micro_patch4_32?img_size=big", "positive integer"),
                                          ("random:vit_micro_patch4_32?img_size=0", "positive integer"),
                                          ("random:refiner_vit_s?img_size=30", "cannot be built")])
def test_bad_name_options_are_refused_clearly(source: str, word: str) -> None:
    with pytest.raises(ModelSourceError, match=word):
        load_model(source)


def test_offline_timm_name_fails_fast_and_says_how(offline, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.perf_counter()
    with pytest.raises(ModelSourceError) as error:
        load_model("vit_small_patch16_224")
    assert time.perf_counter() - start < 3.0
    message = str(error.value)
    assert "cannot be reached" in message and "HF_HUB_OFFLINE" in message and "local-dir:" in message
    assert "random:vit_small_patch16_224" in message


def test_hf_hub_offline_off_the_cache_fails_fast(offline, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelSourceError, match="not in the local Hugging Face cache"):
        load_model("hf-hub:timm/not_cached_anywhere")
    assert time.perf_counter() - start < 3.0


def test_offline_timm_name_uses_cached_weights(offline, monkeypatch, tmp_path: Path) -> None:
    """Weights in the Hugging Face cache layout are found without a network and give the same model."""
    from timm.models import get_pretrained_cfg

    name = "vit_micro_patch4_32"  # stands in for a timm name: cfg lookups are pointed at a fake hub id
    model = refiner.create_model(name).eval()
    repo = "timm/test-cached-model"
    snapshot = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "model.safetensors"))
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(loading, "_has_pretrained_weights", lambda n: True)
    cfg = type("Cfg", (), {"hf_hub_id": repo, "url": None})()
    monkeypatch.setattr("timm.models.get_pretrained_cfg", lambda n: cfg if n == name else get_pretrained_cfg(n))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    overlay = loading._offline_weights_overlay(name)
    assert overlay == {"file": str(snapshot / "model.safetensors")}


# ----------------------------------------------------------------------------------------- timm hub folders
def test_timm_hub_folder_round_trip(tmp_path: Path) -> None:
    from timm.models import save_for_hf

    model = _timm_model()
    save_for_hf(model, str(tmp_path / "hub"))
    for source in (str(tmp_path / "hub"), f"local-dir:{tmp_path / 'hub'}"):
        loaded = load_model(source)
        assert loaded.info.kind == "timm-hub" and loaded.info.name == "vit_small_patch16_224"
        assert loaded.info.preprocessing.crop_pct == pytest.approx(0.9)
        _same_logits(model, loaded.model)


# ------------------------------------------------------------------------------------------- state dicts
def test_bare_state_dicts_wrapped_and_prefixed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7).eval()  # the exact arch
    state = model.state_dict()
    files = {
        "plain.pth": state,
        "train.pth.tar": {"epoch": 3, "arch": "vit_tiny_patch16_224", "state_dict": state,
                          "args": argparse.Namespace(model="vit_tiny_patch16_224", lr=1e-3)},
        "ddp.pth": {"model": {f"module.{k}": v for k, v in state.items()}},
        "compiled.pt": {f"_orig_mod.{k}": v for k, v in state.items()},
        "ema.pth": {"model_ema": state},
    }
    for name, payload in files.items():
        torch.save(payload, tmp_path / name)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "weights.safetensors"))
    sources = [f"vit_tiny_patch16_224@{tmp_path / n}" for n in (*files, "weights.safetensors")]
    sources.append(str(tmp_path / "train.pth.tar"))  # timm's training checkpoint names its architecture
    for source in sources:
        loaded = load_model(source)
        assert loaded.info.kind == "state-dict", source
        _same_logits(model, loaded.model)


def test_state_dict_of_a_smaller_variant_is_refused_with_the_keys(tmp_path: Path) -> None:
    torch.save(_timm_model().state_dict(), tmp_path / "w.pth")  # depth 2, width 64: not the real ViT-B
    with pytest.raises(ModelSourceError) as error:
        load_model(f"vit_base_patch16_224@{tmp_path / 'w.pth'}")
    assert "do not fit vit_base_patch16_224" in str(error.value) and "wrong shape" in str(error.value)


def test_unsafe_pickle_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "evil": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ModelSourceError, match="weights_only=True"):
        load_model(f"vit_small_patch16_224@{tmp_path / 'evil.pth'}")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("make, expected", [
    (lambda p: p, "not a model folder"),                                                 # empty folder
    (lambda p: (p / "config.json").write_text("{not json") and p, "not readable JSON"),
    (lambda p: (p / "notes.txt").write_text("hi") and p / "notes.txt", "not a weights file"),
    (lambda p: torch.save({"w": torch.zeros(1)}, p / "w.pth") or p / "w.pth", "ARCH@"),   # no architecture
    (lambda p: (p / "w.safetensors").write_bytes(b"garbage") and p / "w.safetensors", "cannot read"),
    (lambda p: p / "missing" / "model.pth", "no file or folder"),
    (lambda p: "vit_smal_patch16_224", "did you mean"),
    (lambda p: "", "empty model source"),
])
def test_bad_sources_get_one_clear_message(tmp_path: Path, make, expected: str) -> None:
    source = make(tmp_path)
    with pytest.raises(ModelSourceError, match=expected):
        load_model(str(source))


# ---------------------------------------------------------------------------------------------- transformers
def test_transformers_folders_round_trip(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    common = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                  image_size=32, patch_size=8)
    cases = {
        "vit": (transformers.ViTConfig(num_labels=5, **common), transformers.ViTForImageClassification, 1),
        "deit": (transformers.DeiTConfig(num_labels=5, **common),
                 transformers.DeiTForImageClassificationWithTeacher, 2),
        "dinov2": (transformers.Dinov2Config(**common), transformers.Dinov2Model, 1),
        "dinov2_with_registers": (transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **common),
                                  transformers.Dinov2WithRegistersModel, 5),
    }
    for model_type, (config, cls, prefix) in cases.items():
        torch.manual_seed(0)
        original = cls(config).eval()
        folder = tmp_path / model_type
        original.save_pretrained(folder)
        loaded = load_model(str(folder))
        info = loaded.info
        assert info.kind == "transformers" and info.num_prefix_tokens == prefix, model_type
        assert info.patch_size == (8, 8) and info.grid_size == (4, 4) and info.has_class_token
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            out = original(pixel_values=x)
            want = out.logits if hasattr(out, "logits") else out.pooler_output
            torch.testing.assert_close(loaded.model(x), want, rtol=0, atol=1e-5)


def test_transformers_vit_preprocessing_equals_its_image_processor(tmp_path: Path) -> None:
    """ViTImageProcessor resizes to (height, width) without keeping the aspect: timm's "squash", not a centre
    crop (which cut the sides of a landscape photo off)."""
    transformers = pytest.importorskip("transformers")
    import numpy as np
    from PIL import Image

    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, image_size=32, patch_size=8)
    folder = tmp_path / "vit"
    transformers.ViTModel(config).save_pretrained(folder)
    processor = transformers.ViTImageProcessor(size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    loaded = load_model(str(folder))
    assert loaded.info.preprocessing.crop_mode == "squash"
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8))
    want = torch.as_tensor(processor(photo, return_tensors="np")["pixel_values"][0])
    # Pillow's bilinear in both; the processor rounds the resized image to uint8 as timm does.
    assert (loaded.info.transform(photo) - want).abs().max().item() <= 2e-2


def test_transformers_folder_of_another_family_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelSourceError, match="'bert'.*supported model types are vit"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("name, prefix, has_cls, patch, grid", [
    ("vit_betwixt_patch16_reg4_gap_256", 4, False, (16, 16), (16, 16)),   # registers, no CLS
    ("deit_tiny_distilled_patch16_224", 2, True, (16, 16), (14, 14)),     # CLS + distillation token
    ("vit_small_r26_s32_224", 1, True, (32, 32), (7, 7)),                 # ResNet hybrid: stride 32, not 1
])
def test_geometry_in_the_description(name: str, prefix: int, has_cls: bool, patch, grid) -> None:
    info = load_model(f"random:{name}").info
    assert (info.num_prefix_tokens, info.has_class_token, info.patch_size, info.grid_size) == \
        (prefix, has_cls, patch, grid)
    assert info.num_tokens == prefix + grid[0] * grid[1]


def test_source_path_is_the_file_or_folder_a_source_reads(tmp_path) -> None:
    from refiner.loading import source_path
    from refiner.shipped import checkpoint_root

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    assert source_path(f"vit_micro_patch4_32@{weights}") == weights
    assert source_path(f"dir:{tmp_path}") == tmp_path and source_path(f"local-dir:{tmp_path}") == tmp_path
    assert source_path(f"A={tmp_path}") == tmp_path  # a label is not part of the path
    assert source_path("vanilla") == checkpoint_root() / "vanilla"  # a shipped name
    assert source_path("vit_small_patch16_224") is None and source_path("hf-hub:timm/x") is None
    assert source_path("random:vit_micro_patch4_32") is None
