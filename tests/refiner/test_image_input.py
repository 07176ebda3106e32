"""refiner.image_input: every DESIGN section 8 image case, with files generated here."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import refiner
from refiner.image_input import ImageInputError, check_min_size, load_image
from refiner.preprocessing import Preprocessing, input_channels


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient_rgb(width: int = 40, height: int = 30) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8), "RGB")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_accepted_format_gives_rgb(fmt: str) -> None:
    image = load_image(encode(gradient_rgb(), fmt))
    assert image.mode == "RGB" and image.size == (40, 30)
    assert image.info["input_notes"] == []


def test_path_and_file_object_inputs(tmp_path: Path) -> None:
    path = tmp_path / "g.png"
    gradient_rgb().save(path)
    assert load_image(path).size == (40, 30)
    assert load_image(str(path)).size == (40, 30)
    with open(path, "rb") as handle:
        assert load_image(handle).size == (40, 30)
    with pytest.raises(ImageInputError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_png_roundtrip_is_exact() -> None:
    original = gradient_rgb()
    assert np.array_equal(np.asarray(load_image(encode(original, "PNG"))), np.asarray(original))


@pytest.mark.parametrize("payload", [b"", b"hello, this is text not an image", b"%PDF-1.4\n%...",
                                     b"\x00" * 500])
def test_non_images_are_refused(payload: bytes) -> None:
    with pytest.raises(ImageInputError, match="empty|not an image"):
        load_image(payload)


def test_unsupported_format_is_refused() -> None:
    # PPM is a real image format Pillow reads, but not one we accept.
    with pytest.raises(ImageInputError, match="not an image in a supported format"):
        load_image(encode(gradient_rgb(), "PPM"))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_refused(fmt: str) -> None:
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8))
    data = encode(noisy, fmt)
    with pytest.raises(ImageInputError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])


def test_corrupt_png_checksum_is_refused() -> None:
    data = bytearray(encode(gradient_rgb(), "PNG"))
    index = data.index(b"IDAT") + 10
    data[index] ^= 0xFF  # flips compressed bits: zlib or CRC check fails
    with pytest.raises(ImageInputError, match="corrupt or truncated"):
        load_image(bytes(data))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size and whose data is tiny: a decompression bomb's signature."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [8000, 20000, 60000])
def test_decompression_bomb_is_refused_before_decoding(side: int) -> None:
    with pytest.raises(ImageInputError, match="megapixels|decompression bomb"):
        load_image(_png_header_only(side, side))


def test_pixel_limit_is_configurable() -> None:
    data = encode(gradient_rgb(100, 100), "PNG")
    with pytest.raises(ImageInputError, match="megapixels"):
        load_image(data, max_pixels=5000)


def test_byte_limit(tmp_path: Path) -> None:
    data = encode(gradient_rgb(), "BMP")
    with pytest.raises(ImageInputError, match="limit"):
        load_image(data, max_bytes=len(data) - 1)
    path = tmp_path / "big.bmp"
    path.write_bytes(data)
    with pytest.raises(ImageInputError, match="limit"):
        load_image(path, max_bytes=100)
    with pytest.raises(ImageInputError, match="limit"):
        load_image(io.BytesIO(data), max_bytes=100)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_image_uses_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (20, 20), color) for color in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0,
                  **({"lossless": True} if fmt == "WEBP" else {}))
    image = load_image(data)
    r, g, b = np.asarray(image)[10, 10]
    assert r > 200 and g < 50 and b < 50
    assert any("first frame" in note for note in image.info["input_notes"])


def test_cmyk_is_converted() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    for fmt in ("JPEG", "TIFF"):
        image = load_image(encode(cmyk, fmt))
        r, g, b = np.asarray(image)[8, 8].astype(int)
        assert image.mode == "RGB" and r > 200 and g < 60 and b < 60, fmt
        assert any("CMYK" in note for note in image.info["input_notes"])


def test_16bit_grey_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257 * 128, 65535, 65535]], dtype=np.uint16).repeat(4, 0)
    for fmt in ("PNG", "TIFF"):
        image = load_image(encode(Image.fromarray(values), fmt))
        assert np.asarray(image)[0, :, 0].tolist() == [0, 128, 255, 255], fmt
        assert any("8 bits" in note for note in image.info["input_notes"])


def test_float_tiff_is_scaled() -> None:
    values = np.array([[0.0, 0.5, 1.0, 1.0]], dtype=np.float32).repeat(4, 0)
    image = load_image(encode(Image.fromarray(values, mode="F"), "TIFF"))
    assert np.asarray(image)[0, :, 0].tolist() == [0, 128, 255, 255]


def test_palette_and_one_bit_images() -> None:
    palette = gradient_rgb().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert load_image(encode(palette, "PNG")).mode == "RGB"
    bits = Image.fromarray((np.indices((8, 8)).sum(0) % 2 * 255).astype(np.uint8)).convert("1")
    image = load_image(encode(bits, "BMP"))
    assert image.mode == "RGB" and set(np.unique(np.asarray(image))) == {0, 255}


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_the_chosen_background(mode: str) -> None:
    array = np.zeros((10, 10, 4), dtype=np.uint8)
    array[:, :5] = (0, 0, 0, 255)       # opaque black on the left
    array[:, 5:] = (0, 0, 0, 0)         # fully transparent on the right
    rgba = Image.fromarray(array, "RGBA").convert(mode)
    white = np.asarray(load_image(encode(rgba, "PNG")))
    assert white[0, 0].tolist() == [0, 0, 0] and white[0, 9].tolist() == [255, 255, 255]
    black = np.asarray(load_image(encode(rgba, "PNG"), background="black"))
    assert black[0, 9].tolist() == [0, 0, 0]
    assert any("transparent" in n for n in load_image(encode(rgba, "PNG")).info["input_notes"])


def test_palette_with_transparency() -> None:
    image = Image.new("P", (6, 6), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.paste(1, (3, 0, 6, 6))
    out = np.asarray(load_image(encode(image, "GIF", transparency=1)))
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 5].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied() -> None:
    wide = gradient_rgb(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    image = load_image(encode(wide, "JPEG", exif=exif.tobytes()))
    assert image.size == (20, 40)
    assert any("EXIF" in note for note in image.info["input_notes"])


def test_huge_image_is_downscaled() -> None:
    image = load_image(encode(gradient_rgb(3000, 1000), "PNG"), max_side=600)
    assert image.size == (600, 200)
    assert any("downscaled" in note for note in image.info["input_notes"])


def test_huge_jpeg_uses_draft_and_still_fits() -> None:
    image = load_image(encode(gradient_rgb(2400, 1200), "JPEG"), max_side=500)
    assert max(image.size) == 500 and image.mode == "RGB"


def test_smaller_than_a_patch_is_refused_where_asked_and_upscaled_by_the_model_transform() -> None:
    tiny = encode(Image.new("RGB", (5, 40)), "PNG")
    with pytest.raises(ImageInputError, match="smaller than one 6x6 patch"):
        load_image(tiny, min_side=6)
    image = load_image(tiny)
    with pytest.raises(ImageInputError, match="patch"):
        check_min_size(image, 6)
    # What the model sees anyway: its own eval transform resizes the picture up to its input.
    prep = Preprocessing.from_mapping({"img_size": [48, 48], "in_chans": 1, "mean": [0.5], "std": [0.5]})
    assert prep.transform(image).shape == (1, 48, 48)


def test_bad_background_name() -> None:
    with pytest.raises(ValueError, match="background"):
        load_image(encode(gradient_rgb(), "PNG"), background="pink")


@pytest.fixture(scope="module")
def grey_model() -> torch.nn.Module:
    return refiner.create_model("vit_mini_patch6_48", in_chans=1)


def test_model_info_for_model_and_checkpoint(grey_model: torch.nn.Module, tmp_path: Path) -> None:
    prep = Preprocessing.from_model(grey_model)
    assert prep.img_size == (48, 48) and prep.in_chans == 1 and len(prep.mean) == 1 and len(prep.std) == 1
    saved = {"dataset": "cluttered-mnist", "img_size": [48, 48], "in_chans": 1, "mean": [0.1], "std": [0.3],
             "class_names": [str(i) for i in range(10)]}
    refiner.save_checkpoint(grey_model, tmp_path / "ck", extra={"data": saved})
    info = refiner.load_model(str(tmp_path / "ck")).info
    assert info.preprocessing.mean == (0.1,) and info.preprocessing.std == (0.3,) and info.dataset == "cluttered-mnist"
    assert info.class_names[3] == "3" and info.patch_size == (6, 6)


def test_transform_shapes_and_normalisation(grey_model: torch.nn.Module) -> None:
    prep = Preprocessing.from_mapping({"img_size": [48, 48], "in_chans": 1, "mean": [0.5], "std": [0.25]})
    white = Image.new("RGB", (100, 60), (255, 255, 255))
    x = prep.transform(white)
    assert x.shape == (1, 48, 48) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, 2.0))  # (1 - 0.5) / 0.25
    assert grey_model(x[None]).shape == (1, 10)
    rgb = Preprocessing.from_mapping({"img_size": [32, 32], "in_chans": 3, "mean": [0.0, 0.0, 0.0],
                                      "std": [1.0, 1.0, 1.0]}).transform(gradient_rgb())
    assert rgb.shape == (3, 32, 32) and 0.0 <= float(rgb.min()) and float(rgb.max()) <= 1.0


def test_whole_image_view_centre_crops_instead_of_stretching() -> None:
    # Left third black, middle white, right third black: a centre crop keeps only white.
    array = np.zeros((30, 90, 3), dtype=np.uint8)
    array[:, 30:60] = 255
    fitted = Preprocessing.from_mapping({"img_size": [30, 30], "in_chans": 3}).view(Image.fromarray(array))
    assert fitted.size == (30, 30) and np.asarray(fitted)[5:25, 5:25].min() > 240


def test_rgb_statistics_on_a_grey_model_are_averaged() -> None:
    prep = Preprocessing.from_mapping({"img_size": [8, 8], "in_chans": 1, "mean": [0.2, 0.4, 0.6],
                                       "std": [0.5, 0.5, 0.5]})
    x = prep.transform(Image.new("RGB", (8, 8), (0, 0, 0)))
    assert torch.allclose(x, torch.full_like(x, -0.8))


def test_in_chans_comes_from_the_image_side_not_the_projection_behind_a_conv_stem() -> None:
    # The official Refiner-ViT's patch_embed is a conv stem: patch_embed.proj takes 128 stem channels.
    model = refiner.create_model("refiner_vit_s")
    assert model.patch_embed.proj.in_channels == 128
    prep = Preprocessing.from_model(model)
    assert prep.in_chans == 3 and len(prep.mean) == 3
    assert prep.transform(gradient_rgb()).shape == (3, 224, 224)


def test_input_channels_prefers_the_first_conv_when_the_cfg_disagrees() -> None:
    model = refiner.create_model("vit_mini_patch6_48", in_chans=1)
    assert input_channels(model) == 1
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 48, 48))  # a stale cfg
    assert input_channels(model) == 1
    plain = torch.nn.Sequential(torch.nn.Linear(4, 4))  # no cfg, no conv: the caller's default
    assert input_channels(plain, default=5) == 5


def test_model_info_reads_the_trainers_flat_extra_layout(grey_model: torch.nn.Module, tmp_path: Path) -> None:
    # What refiner train wrote before it moved to extra["data"]: everything side by side in "extra".
    extra = {"class_names": ["zero", "one"] + [str(i) for i in range(2, 10)], "dataset": "cluttered-mnist",
             "dataset_options": {"canvas_size": 48, "max_shift": 4},
             "preprocessing": {"img_size": 48, "in_chans": 1, "mean": [0.2], "std": [0.4],
                               "range": "images in [0, 1], then (x - mean) / std"}}
    refiner.save_checkpoint(grey_model, tmp_path / "ck", extra=extra)
    info = refiner.load_model(str(tmp_path / "ck")).info
    assert info.preprocessing.mean == (0.2,) and info.preprocessing.std == (0.4,) and info.input_size == (1, 48, 48)
    assert info.class_names[:2] == ("zero", "one") and info.dataset == "cluttered-mnist"
    assert dict(info.dataset_options) == {"canvas_size": 48, "max_shift": 4}  # so samples match its canvases
    assert "range" not in info.data


def test_small_image_note_only_for_images_smaller_than_one_patch() -> None:
    from refiner.image_input import small_image_note

    note = small_image_note((1, 1), (6, 6), (48, 48))
    assert note is not None and "1 x 1 px, smaller than one 6 x 6 patch" in note and "48 x 48" in note
    assert small_image_note((6, 6), (6, 6), (48, 48)) is None  # exactly one patch is enough
    assert small_image_note((100, 5), (6, 6), (48, 48)) is not None  # one side is enough to be too small
    assert small_image_note((5, 100), (16, 8), (224, 224)) is not None  # width against pw, height against ph
    assert small_image_note((8, 16), (16, 8), (224, 224)) is None
