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


# ------------------------------------------------------------------------------ hostile images (issue 13)
def _tiff_with_a_damaged_second_page() -> bytes:
    data = bytearray(encode(Image.new("RGB", (32, 32), (10, 200, 30)), "TIFF", save_all=True,
                            append_images=[Image.new("RGB", (32, 32), (200, 0, 0))]))
    first = struct.unpack("<I", data[4:8])[0]
    count = struct.unpack("<H", data[first:first + 2])[0]
    second = struct.unpack("<I", data[first + 2 + 12 * count:first + 6 + 12 * count])[0]
    for index in range(struct.unpack("<H", data[second:second + 2])[0]):
        entry = second + 2 + 12 * index
        if struct.unpack("<H", data[entry:entry + 2])[0] in (256, 257):  # ImageWidth, ImageLength
            data[entry:entry + 2] = struct.pack("<H", 65000 + index)    # the page loses its size
    return bytes(data)


def test_a_multi_page_tiff_with_a_damaged_later_page_gives_its_first_page() -> None:
    image = load_image(_tiff_with_a_damaged_second_page())  # was TypeError: Missing dimensions
    assert image.size == (32, 32) and np.asarray(image)[5, 5].tolist() == [10, 200, 30]
    assert any("later one of its pages cannot be read" in note for note in image.info["input_notes"])
    two_pages = encode(Image.new("RGB", (8, 8)), "TIFF", save_all=True, append_images=[Image.new("RGB", (8, 8))])
    assert load_image(two_pages).info["input_notes"] == ["multi-page image with 2 pages: using the first page"]


def _progressive_jpeg_with_repeated_scans(repeats: int, side: int = 2048) -> bytes:
    """A progressive JPEG whose smallest refinement scan is repeated: a tiny file that decodes for minutes."""
    data = encode(Image.new("RGB", (side, side), (120, 130, 140)), "JPEG", progressive=True, quality=90)
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xDA]
    end = data.rindex(b"\xff\xd9")
    scans = [data[a:b] for a, b in zip(starts, starts[1:] + [end])]
    return data[:end] + min(scans[1:], key=len) * repeats + b"\xff\xd9"


def test_a_progressive_jpeg_with_thousands_of_scans_is_refused_before_decoding(monkeypatch) -> None:
    from PIL import ImageFile

    from refiner.image_input import jpeg_scan_count

    bomb = _progressive_jpeg_with_repeated_scans(3000)  # 73 KB; decoding took 35 s here
    assert len(bomb) < 100_000 and jpeg_scan_count(bomb) > 3000
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or Image.Image.load(self))
    with pytest.raises(ImageInputError, match=r"progressive JPEG with \d+ scans; at its size the limit is 100"):
        load_image(bomb)
    assert not decoded
    monkeypatch.undo()
    # Ordinary JPEGs: baseline has one scan, Pillow's progressive ones a handful, and an EXIF thumbnail
    # (a JPEG inside APP1) is not counted.
    photo = gradient_rgb(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 1
    assert jpeg_scan_count(encode(photo, "JPEG")) == 1
    assert 2 <= jpeg_scan_count(encode(photo, "JPEG", progressive=True)) <= 12
    assert load_image(encode(photo, "JPEG", progressive=True)).size == (64, 48)
    assert load_image(_progressive_jpeg_with_repeated_scans(20, side=256)).size == (256, 256)


def _peak_rss_mb_during(call) -> float:
    """Peak resident memory (MB) while ``call`` runs, above what the process held before (Linux)."""
    def high_water() -> int:
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) // 1024

    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets the high-water mark to the current resident size
    except OSError:
        pytest.skip("the kernel does not let this process reset its peak memory")
    start = high_water()
    call()
    return high_water() - start


@pytest.mark.parametrize("dtype, mode", [(np.uint16, "I;16"), (np.int32, "I"), (np.float32, "F")])
def test_high_bit_depth_images_are_converted_after_downscaling(tmp_path: Path, dtype, mode: str) -> None:
    side = 5000  # 25 megapixels; the audit's 7000 x 7000 files cost 1.1-1.5 GB, mostly float64 copies
    array = np.zeros((side, side), dtype=dtype)
    array[:, side // 2:] = 255 if mode != "F" else 1.0  # half black, half the top value
    path = tmp_path / ("big.png" if mode == "I;16" else "big.tif")
    Image.fromarray(array).save(path, **({} if mode == "I;16" else {"compression": "tiff_adobe_deflate"}))
    del array
    assert Image.open(path).mode == mode
    images = []
    peak = _peak_rss_mb_during(lambda: images.append(load_image(path)))
    frame_mb = side * side * (2 if mode == "I;16" else 4) / 2 ** 20  # the decoded frame itself: 48 or 95 MB
    assert peak < frame_mb + 80, f"{peak:.0f} MB for a {frame_mb:.0f} MB frame"
    out = np.asarray(images[0])
    assert images[0].size == (2048, 2048)
    # The scale is decided on the full frame: resampling rings above 255 must not turn 8-bit values into
    # 16-bit ones (255 / 257 would be black).
    expected = 255 if mode in ("I", "F") else round(255 / 257)
    assert np.abs(out[1000, 2000].astype(int) - expected).max() <= 1 and out[1000, 10].max() == 0


def test_a_corrupt_jpeg_and_an_empty_png_are_named_for_what_they_are() -> None:
    data = bytearray(encode(gradient_rgb(64, 64), "JPEG"))
    data[2:20] = b"\xff\x01" + b"\x00" * 16  # the header segments are destroyed
    with pytest.raises(ImageInputError, match="corrupt or truncated JPEG file"):
        load_image(bytes(data))
    with pytest.raises(ImageInputError, match=r"has no pixels: its header says 0x0"):
        load_image(_png_header_only(0, 0))
    with pytest.raises(ImageInputError, match="not an image in a supported format"):
        load_image(b"plain text that no format starts with")


def test_an_invalid_exif_orientation_is_not_called_turned_upright() -> None:
    exif = Image.Exif()
    exif[0x0112] = 9
    image = load_image(encode(gradient_rgb(40, 30), "JPEG", exif=exif.tobytes()))
    assert image.size == (40, 30)
    assert not any("turned upright" in note for note in image.info["input_notes"])
    assert any("orientation 9 is not a valid value" in note for note in image.info["input_notes"])


def test_the_bomb_message_quotes_our_limit_not_pillows() -> None:
    with pytest.raises(ImageInputError) as caught:
        load_image(_png_header_only(20000, 10000))  # 200 MP: Pillow's own check fires before ours
    assert "the limit is 50 megapixels" in str(caught.value) and "178956970" not in str(caught.value)


# ----------------------------------------------------------------------------------------------- fuzzing
def _fuzz_seeds() -> list:
    """Tiny images of every accepted format and its common variants."""
    rgb = gradient_rgb(24, 16)
    frames = [Image.new("RGB", (12, 12), c) for c in [(255, 0, 0), (0, 0, 255)]]
    grey16 = Image.fromarray((np.arange(24 * 16, dtype=np.uint16).reshape(16, 24) * 97))
    exif = Image.Exif()
    exif[0x0112] = 6
    return [encode(rgb, "JPEG"), encode(rgb, "JPEG", progressive=True), encode(rgb, "JPEG", exif=exif.tobytes()),
            encode(rgb, "PNG"), encode(rgb.convert("RGBA"), "PNG"), encode(rgb.convert("P"), "PNG"),
            encode(grey16, "PNG"), encode(rgb, "WEBP"), encode(rgb, "WEBP", lossless=True),
            encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True),
            encode(rgb, "BMP"), encode(rgb.convert("P"), "GIF"),
            encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50),
            encode(rgb, "TIFF"), encode(rgb, "TIFF", compression="tiff_lzw"),
            encode(rgb.convert("CMYK"), "TIFF", compression="tiff_adobe_deflate"),
            encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])]


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(0, 6))
        at = int(rng.integers(0, len(out)))
        if kind == 0:    # flip bits in one byte
            out[at] ^= int(rng.integers(1, 256))
        elif kind == 1:  # overwrite a run with random bytes (sizes, offsets, counts in headers)
            out[at:at + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        elif kind == 2:  # an extreme value: 0 or all ones
            out[at:at + 2] = bytes([0, 0]) if rng.random() < 0.5 else bytes([0xFF, 0xFF])
        elif kind == 3:  # truncate
            out = out[:max(at, 8)]
        elif kind == 4:  # duplicate a slice (repeated chunks, scans, pages)
            end = min(len(out), at + int(rng.integers(1, 64)))
            out[at:at] = out[at:end] * int(rng.integers(1, 20))
        else:            # delete a slice
            del out[at:at + int(rng.integers(1, 16))]
    return bytes(out)


def test_fuzzed_images_give_an_image_or_image_input_error_within_time_and_memory() -> None:
    import time

    rng = np.random.default_rng(13)
    seeds = _fuzz_seeds()
    outcomes = {"image": 0, "refused": 0}
    started = time.perf_counter()
    for index in range(800):
        data = _mutate(seeds[index % len(seeds)], rng)
        result: list = []

        def call() -> None:
            call_started = time.perf_counter()
            try:
                image = load_image(data)
            except ImageInputError:
                result.append("refused")
            else:
                assert image.mode == "RGB" and min(image.size) >= 1
                result.append("image")
            result.append(time.perf_counter() - call_started)

        peak = _peak_rss_mb_during(call)
        outcomes[result[0]] += 1
        # The bounds load_image promises: one decoded frame of at most MAX_PIXELS at 4 bytes per pixel (a
        # mutated header may claim that much), and no decode that runs for seconds.
        assert peak < 4 * 50_000_000 / 2 ** 20 + 100, (index, peak)
        assert result[1] < 5.0, (index, result[1])
    assert outcomes["image"] > 80 and outcomes["refused"] > 80, outcomes  # the mutations reach both outcomes
    assert time.perf_counter() - started < 60
