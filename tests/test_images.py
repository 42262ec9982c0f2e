"""captum_tokenlrp.images: what reaches the model from each kind of file, and the way back onto it.

Every image is written here with Pillow or numpy (16-bit colour PNG and TIFF, which Pillow cannot
write, by hand) and checked on the pixel values the processor hands the model.
"""

from __future__ import annotations

import struct
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image, ImageOps, features
from transformers import (
    BeitImageProcessor,
    BitImageProcessor,
    CLIPImageProcessor,
    ConvNextImageProcessor,
    DeiTImageProcessor,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp.images import (
    SUPPORTED_MODES,
    ImageGeometry,
    explain_image,
    load_image,
    map_to_original,
    processor_geometry,
)
from captum_tokenlrp.visualization import patch_grid

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------------ helpers
def round_half_up(values: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(values, dtype=np.float64) + 0.5).astype(np.uint8)


def over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    alpha = alpha.astype(np.float64)[..., None]
    return round_half_up((rgb * alpha + 255.0 * (255.0 - alpha)) / 255.0)


def grey(levels: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(levels, dtype=np.uint8)[..., None], 3, axis=-1)


def assert_reaches_model(image: Image.Image, expected: np.ndarray) -> None:
    """``image`` is 8-bit RGB equal to ``expected`` `(H, W, 3)`, and so is what the processor gives the model."""
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), expected)
    # channels_last: transformers 4.x guesses the channel axis of the (H, W, 3) array and takes a height of 1 or 3
    # for it (these test images are that small); explain_image passes the same, 5.x ignores it for PIL images
    processor = ViTImageProcessor(do_resize=False)
    pixel_values = processor(images=image, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    normalised = (torch.from_numpy(expected.astype(np.float32)).permute(2, 0, 1)[None] / 255 - 0.5) / 0.5
    torch.testing.assert_close(pixel_values, normalised, rtol=0, atol=1e-6)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png16(path: Path, array: np.ndarray) -> Path:
    """A 16-bit PNG of `(H, W, C)` uint16, C = 3 (RGB) or 4 (RGBA); Pillow cannot write these."""
    height, width, channels = array.shape
    colour_type = {3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )
    return path


def write_tiff16(path: Path, array: np.ndarray) -> Path:
    """An uncompressed little-endian 16-bit RGB(A) TIFF of `(H, W, C)` uint16; Pillow cannot write these."""
    height, width, channels = array.shape
    pixels = array.astype("<u2").tobytes()
    count = 10 + (channels == 4)
    bits_offset = 8 + 2 + 12 * count + 4
    data_offset = bits_offset + 2 * channels

    def entry(tag: int, kind: int, number: int, value: int) -> bytes:
        if kind == 3 and number == 1:
            return struct.pack("<HHIHH", tag, kind, number, value, 0)
        return struct.pack("<HHII", tag, kind, number, value)

    entries = [
        entry(256, 4, 1, width),
        entry(257, 4, 1, height),
        entry(258, 3, channels, bits_offset),
        entry(259, 3, 1, 1),
        entry(262, 3, 1, 2),
        entry(273, 4, 1, data_offset),
        entry(277, 3, 1, channels),
        entry(278, 4, 1, height),
        entry(279, 4, 1, len(pixels)),
        entry(284, 3, 1, 1),
    ] + ([entry(338, 3, 1, 2)] if channels == 4 else [])
    directory = struct.pack("<H", count) + b"".join(entries) + struct.pack("<I", 0)
    bits = struct.pack("<" + "H" * channels, *([16] * channels))
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + directory + bits + pixels)
    return path


# --------------------------------------------------------------------------------- 16 bit and float
GRADIENT16 = np.linspace(0, 65535, 6 * 40).round().astype(np.uint16).reshape(6, 40)


def test_16bit_png_is_scaled_not_saturated(tmp_path):
    path = tmp_path / "gradient.png"
    Image.fromarray(GRADIENT16).save(path)
    with Image.open(path) as naive:
        assert naive.mode == "I;16"
        assert np.asarray(naive.convert("RGB")).mean() > 250  # the bug this module exists for
    expected = grey(round_half_up(GRADIENT16 / 65535 * 255))
    assert expected.min() == 0 and expected.max() == 255 and len(np.unique(expected)) > 200
    assert_reaches_model(load_image(path), expected)


@pytest.mark.parametrize(
    ("mode", "suffix"), [("I;16", ".tif"), ("I;16B", ".tif"), ("I;16B", ".png"), ("I;16L", ".tif"), ("I;16N", None)]
)
def test_16bit_modes(tmp_path, mode, suffix):
    byte_order = ">u2" if mode == "I;16B" else "<u2"
    image = Image.frombytes(mode, GRADIENT16.shape[::-1], GRADIENT16.astype(byte_order).tobytes())
    source = image
    if suffix is not None:
        source = tmp_path / f"gradient{suffix}"
        image.save(source)
    assert_reaches_model(load_image(source), grey(round_half_up(GRADIENT16 / 65535 * 255)))


def test_16bit_grey_with_transparent_value(tmp_path):
    values = np.array([[0, 7, 65535], [7, 32768, 1000]], dtype=np.uint16)
    image = Image.fromarray(values)
    image.info["transparency"] = 7
    expected = grey(round_half_up(values / 65535 * 255))
    expected[values == 7] = 255
    assert_reaches_model(load_image(image), expected)


def test_mode_i_in_16bit_range_is_16bit(tmp_path):
    values = GRADIENT16.astype(np.int32)
    path = tmp_path / "int32.tif"
    Image.fromarray(values).save(path)
    with Image.open(path) as opened:
        assert opened.mode == "I"
    assert_reaches_model(load_image(path), grey(round_half_up(values / 65535 * 255)))


def test_mode_i_with_negative_values_is_stretched_with_warning():
    values = np.array([[-1000, 0], [1000, 99000]], dtype=np.int32)
    with pytest.warns(UserWarning, match=r"mode I.*-1000.*99000.*stretched"):
        image = load_image(Image.fromarray(values))
    assert_reaches_model(image, grey(round_half_up((values + 1000) / 100000 * 255)))


def test_mode_f_rules(tmp_path):
    unit = RNG.random((5, 7)).astype(np.float32)
    path = tmp_path / "unit.tif"
    Image.fromarray(unit).save(path)
    assert_reaches_model(load_image(path), grey(round_half_up(unit.astype(np.float64) * 255)))

    levels = (unit * 200 + 3).astype(np.float32)  # in [3, 203]: 8-bit levels
    assert_reaches_model(load_image(Image.fromarray(levels)), grey(round_half_up(levels)))

    wide = np.array([[-2.0, 0.5], [1.0, 3.0]], dtype=np.float32)
    with pytest.warns(UserWarning, match="mode F"):
        image = load_image(Image.fromarray(wide))
    assert_reaches_model(image, grey(round_half_up((wide + 2) / 5 * 255)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_mode_f_non_finite_is_an_error(bad):
    values = np.array([[0.1, bad]], dtype=np.float32)
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_image(Image.fromarray(values))


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("writer", [write_png16, write_tiff16])
def test_16bit_colour_files_keep_pillows_high_byte(tmp_path, writer, channels):
    """Pillow decodes 16-bit colour itself, keeping v // 256 (one level at most below rounding)."""
    values = RNG.integers(0, 65536, (5, 7, channels), dtype=np.uint16)
    values[0, 0, :3] = 65535
    if channels == 4:
        values[..., 3] = RNG.choice(np.array([0, 20000, 65535], dtype=np.uint16), (5, 7))
    path = writer(tmp_path / f"colour16.{'png' if writer is write_png16 else 'tif'}", values)
    high = (values >> 8).astype(np.uint8)
    expected = high[..., :3] if channels == 3 else over_white(high[..., :3], high[..., 3])
    assert_reaches_model(load_image(path), expected)
    if channels == 3:
        assert np.abs(high.astype(int) - round_half_up(values / 65535 * 255)).max() == 1


# ------------------------------------------------------------------------------------------ alpha
COLOURS = np.array([[[10, 20, 30], [200, 100, 50], [0, 0, 0]], [[255, 0, 0], [0, 255, 0], [90, 90, 90]]], np.uint8)
ALPHA = np.array([[0, 51, 255], [128, 0, 255]], dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_rgba_is_composited_over_white(tmp_path, suffix):
    path = tmp_path / f"rgba{suffix}"
    Image.fromarray(np.dstack([COLOURS, ALPHA]), "RGBA").save(path)
    expected = over_white(COLOURS, ALPHA)
    assert expected[0, 0].tolist() == [255, 255, 255]  # convert("RGB") would show (10, 20, 30)
    assert expected[0, 1].tolist() == [244, 224, 214]  # 0.2 * c + 0.8 * 255
    assert_reaches_model(load_image(path), expected)


def test_la_is_composited_over_white(tmp_path):
    path = tmp_path / "la.png"
    levels = COLOURS[..., 0]
    Image.fromarray(np.dstack([levels, ALPHA]), "LA").save(path)
    assert_reaches_model(load_image(path), grey(over_white(grey(levels), ALPHA)[..., 0]))


def palette_image() -> Image.Image:
    image = Image.fromarray(np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8), "P")
    image.putpalette([10, 20, 30, 200, 100, 50, 0, 0, 255])
    return image


def test_palette_without_and_with_transparency(tmp_path):
    opaque, transparent = tmp_path / "p.png", tmp_path / "p-transparent.png"
    palette_image().save(opaque)
    palette_image().save(transparent, transparency=0)
    colours = np.array([[10, 20, 30], [200, 100, 50], [0, 0, 255]], dtype=np.uint8)
    index = np.array([[0, 1, 2], [2, 1, 0]])
    assert_reaches_model(load_image(opaque), colours[index])
    with Image.open(transparent) as opened:
        assert opened.mode == "P" and opened.info["transparency"] == 0
    expected = colours[index]
    expected[index == 0] = 255
    assert_reaches_model(load_image(transparent), expected)


def test_pa_is_composited_over_white(tmp_path):
    image = palette_image().convert("PA")
    image.putalpha(Image.fromarray(ALPHA))
    path = tmp_path / "pa.tif"
    image.save(path)
    colours = np.array([[10, 20, 30], [200, 100, 50], [0, 0, 255]], dtype=np.uint8)
    index = np.array([[0, 1, 2], [2, 1, 0]])
    assert_reaches_model(load_image(path), over_white(colours[index], ALPHA))


def test_premultiplied_modes_are_composited_over_white():
    # premultiplied 20 at alpha 51 is colour 100: over white 100 * 0.2 + 255 * 0.8 = 224
    rgba = Image.fromarray(np.array([[[20, 40, 0, 51], [7, 9, 3, 0], [1, 2, 3, 255]]], np.uint8), "RGBA")
    premultiplied = Image.frombytes("RGBa", (3, 1), rgba.tobytes())
    assert_reaches_model(load_image(premultiplied), np.array([[[224, 244, 204], [255, 255, 255], [1, 2, 3]]]))
    la = Image.frombytes("La", (2, 1), bytes([20, 51, 5, 0]))
    assert_reaches_model(load_image(la), grey(np.array([[224, 255]])))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_transparent_colour_of_opaque_modes(tmp_path, mode):
    levels = np.array([[0, 7, 255]], dtype=np.uint8)
    image = Image.fromarray(levels) if mode == "L" else Image.fromarray(grey(levels), "RGB")
    path = tmp_path / f"{mode}.png"
    image.save(path, transparency=7 if mode == "L" else (7, 7, 7))
    assert_reaches_model(load_image(path), grey(np.array([[0, 255, 255]])))


# ---------------------------------------------------------------------------------- other colour modes
def test_bilevel_and_grey(tmp_path):
    bits = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    Image.fromarray(bits).save(tmp_path / "bits.png")
    assert_reaches_model(load_image(tmp_path / "bits.png"), grey(bits * 255))
    levels = np.array([[0, 17, 255], [128, 3, 99]], dtype=np.uint8)
    Image.fromarray(levels).save(tmp_path / "grey.png")
    assert_reaches_model(load_image(tmp_path / "grey.png"), grey(levels))


def test_cmyk(tmp_path):
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 255, 0, 0], [0, 0, 0, 255]]], dtype=np.uint8)
    path = tmp_path / "cmyk.tif"
    Image.fromarray(cmyk, "CMYK").save(path)
    expected = np.array([[[255, 255, 255], [0, 255, 255], [255, 0, 255], [0, 0, 0]]], dtype=np.uint8)
    assert_reaches_model(load_image(path), expected)


def test_ycbcr_lab_hsv(tmp_path):
    # An image in memory: Pillow 12.3 cannot read back the YCbCr TIFFs it writes ("image file is truncated").
    ycbcr = Image.fromarray(np.array([[[30, 128, 128], [200, 128, 128]]], np.uint8), "YCbCr")
    assert_reaches_model(load_image(ycbcr), grey(np.array([[30, 200]])))

    lab = tmp_path / "lab.tif"  # Pillow's 8-bit LAB: L 0..255 for 0..100, a and b signed bytes
    Image.fromarray(np.array([[[0, 0, 0], [128, 0, 0], [136, 64, 30], [128, 192, 0]]], np.uint8), "LAB").save(lab)
    loaded = np.asarray(load_image(lab)).astype(int)
    with Image.open(lab) as opened:
        assert opened.mode == "LAB"
        np.testing.assert_array_equal(loaded, np.asarray(opened.convert("RGB")))
    assert loaded[0, 0].max() <= 1  # black
    assert np.ptp(loaded[0, 1]) == 0 and 110 < loaded[0, 1, 0] < 130  # L = 50: mid grey
    assert loaded[0, 2, 0] > loaded[0, 2, 1] + 100  # a = +64: red over green
    assert loaded[0, 3, 1] > loaded[0, 3, 0] + 100  # a = -64: green over red

    hsv = Image.fromarray(np.array([[[0, 255, 255], [0, 0, 255], [120, 255, 0]]], np.uint8), "HSV")
    assert_reaches_model(load_image(hsv), np.array([[[255, 0, 0], [255, 255, 255], [0, 0, 0]]], np.uint8))


def test_rgbx_and_rgb(tmp_path):
    colours = COLOURS.copy()
    rgbx = Image.fromarray(np.dstack([colours, np.full(colours.shape[:2], 9, np.uint8)]), "RGBX")
    assert_reaches_model(load_image(rgbx), colours)
    original = Image.fromarray(colours, "RGB")
    loaded = load_image(original)
    assert loaded is not original
    assert_reaches_model(loaded, colours)


# -------------------------------------------------------------------------------- orientation, frames
def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((10, 20, 3), dtype=np.uint8)
    stored[:, :10] = (255, 0, 0)  # left half red
    stored[:, 10:] = (0, 0, 255)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: the stored left edge becomes the top
    path = tmp_path / "rotated.png"
    image.save(path, exif=exif)
    loaded = load_image(path)
    assert loaded.size == (10, 20)
    expected = np.zeros((20, 10, 3), dtype=np.uint8)
    expected[:10] = (255, 0, 0)
    expected[10:] = (0, 0, 255)
    assert_reaches_model(loaded, expected)


def frames() -> list[Image.Image]:
    return [Image.new("RGB", (6, 4), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]


@pytest.mark.parametrize("suffix", [".gif", ".tif", ".webp"])
def test_multi_frame_files_give_the_first_frame(tmp_path, suffix):
    if suffix == ".webp" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    path = tmp_path / f"animated{suffix}"
    first, *rest = frames()
    options = {"lossless": True} if suffix == ".webp" else {}
    first.save(path, save_all=True, append_images=rest, **options)
    with Image.open(path) as opened:
        assert opened.n_frames == 3
        opened.seek(2)
        from_open = load_image(opened)
        assert opened.tell() == 2  # the caller's frame position is restored
    expected = np.tile(np.array([255, 0, 0], np.uint8), (4, 6, 1))
    assert_reaches_model(load_image(path), expected)
    assert_reaches_model(from_open, expected)


# ---------------------------------------------------------------------------------------------- errors
def test_unreadable_files_are_value_errors(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"Cannot read an image from .*notes\.png"):
        load_image(text)
    with pytest.raises(ValueError, match=r"Cannot read an image from .*missing\.png"):
        load_image(tmp_path / "missing.png")
    truncated = tmp_path / "truncated.png"
    Image.fromarray(RNG.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated"):
        load_image(truncated)


def test_wrong_source_type_and_unknown_mode(monkeypatch):
    with pytest.raises(TypeError, match=r"got ndarray.*Image\.fromarray"):
        load_image(np.zeros((4, 4, 3), np.uint8))
    # Pillow 13 has no mode load_image leaves out; older ones had e.g. BGR;15. Fake one (a copy would reset it).
    monkeypatch.setattr(ImageOps, "exif_transpose", lambda image: image)
    image = Image.new("L", (2, 2))
    image._mode = "BGR;15"
    with pytest.raises(ValueError, match=r"'BGR;15'.*Supported modes: RGB, 1, L, P"):
        load_image(image)
    assert {"I;16", "F", "CMYK", "PA"} <= set(SUPPORTED_MODES)


# --------------------------------------------------------------------------------------------- geometry
SIZES = [(50, 80), (80, 50), (97, 61), (33, 100), (64, 64), (7, 300)]

PROCESSORS = {
    "vit": lambda: ViTImageProcessor(size={"height": 32, "width": 32}),
    "vit-shortest-longest": lambda: ViTImageProcessor(size={"shortest_edge": 24, "longest_edge": 40}),
    "vit-max": lambda: ViTImageProcessor(size={"max_height": 30, "max_width": 40}),
    "deit": lambda: DeiTImageProcessor(size={"height": 40, "width": 36}, crop_size={"height": 32, "width": 32}),
    "convnext-crop-pct": lambda: ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875),
    "convnext-384": lambda: ConvNextImageProcessor(size={"shortest_edge": 384}),
    "dinov2-bit": lambda: BitImageProcessor(
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True
    ),
    "clip": lambda: CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    "clip-int-size": lambda: CLIPImageProcessor(size=33, crop_size=30),
    "clip-pads": lambda: CLIPImageProcessor(size={"shortest_edge": 20}, crop_size={"height": 40, "width": 24}),
    "beit-crop": lambda: BeitImageProcessor(
        size={"height": 48, "width": 40}, do_center_crop=True, crop_size={"height": 32, "width": 32}
    ),
}


def random_image(height: int, width: int) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8))


def make_processor(name: str):
    """``PROCESSORS[name]()``, skipped where this transformers' processor class does not take that size form."""
    processor = PROCESSORS[name]()
    try:
        processor(images=random_image(64, 64), return_tensors="pt")
    except ValueError as error:  # transformers 4.x: ViTImageProcessor resizes only to {"height", "width"}
        if "must contain the keys `height` and `width`" not in str(error):
            raise
        pytest.skip(f"transformers {transformers.__version__}: {type(processor).__name__} does not take {name}'s size")
    return processor


@pytest.mark.parametrize("name", sorted(PROCESSORS))
def test_geometry_predicts_the_processors_output_size(name):
    processor = make_processor(name)
    for height, width in SIZES:
        image = random_image(height, width)
        try:
            pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        except ValueError:  # 7 x 300 into 30 x 40 is 0 pixels high
            assert name == "vit-max" and (height, width) == (7, 300)
            with pytest.raises(ValueError, match="to 0x40 pixels, an empty image"):
                processor_geometry(processor, image)
            continue
        geometry = processor_geometry(processor, image)
        assert geometry.original == (height, width)
        assert geometry.input == tuple(pixel_values.shape[-2:]), (name, height, width)


@pytest.mark.parametrize("name", ["vit-shortest-longest", "vit-max", "convnext-crop-pct", "dinov2-bit", "clip"])
def test_geometry_predicts_the_resize_itself(name):
    """With the crop switched off the output is the resized image: checks the rounding of each size rule."""
    processor = make_processor(name)
    processor.do_center_crop = False
    expected = {
        ("dinov2-bit", 50, 80): (256, 409),
        ("clip", 97, 61): (50, 32),
        ("convnext-crop-pct", 50, 80): (36, 57),
    }
    for height, width in SIZES[:-1] if name == "vit-max" else SIZES:
        geometry = processor_geometry(processor, (height, width))
        if name.startswith("convnext"):  # its crop lives inside resize: only the predicted sizes are checked
            assert geometry.resized == _shortest((height, width), 36)
        else:
            image = random_image(height, width)
            assert geometry.resized == tuple(processor(images=image, return_tensors="pt")["pixel_values"].shape[-2:])
        if (name, height, width) in expected:
            assert geometry.resized == expected[name, height, width]


def _shortest(original, edge):
    short, long = sorted(original)
    new_long = int(edge * long / short)
    return (new_long, edge) if original[1] <= original[0] else (edge, new_long)


def coordinate_image(height: int, width: int) -> Image.Image:
    """Red = row + 1, green = column + 1 (0 is the processor's padding)."""
    rows, cols = np.meshgrid(np.arange(height) + 1, np.arange(width) + 1, indexing="ij")
    return Image.fromarray(np.dstack([rows, cols, np.zeros_like(rows)]).astype(np.uint8))


def decoded_coordinates(processor, pixel_values: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(processor.image_mean)[:, None, None]
    std = torch.tensor(processor.image_std)[:, None, None]
    return ((pixel_values[0] * std + mean) * 255).round().to(torch.int64).numpy()


@pytest.mark.parametrize(("crop", "box"), [((32, 32), (6, 9)), ((40, 60), (2, -5)), ((51, 49), (-3, 0))])
def test_crop_box_is_where_the_processor_cuts(crop, box):
    """No resize: the crop box's (top, left) is where the processor's output starts, padding included."""
    processor = CLIPImageProcessor(do_resize=False, crop_size={"height": crop[0], "width": crop[1]})
    geometry = processor_geometry(processor, (45, 50))
    assert geometry.resized == (45, 50)
    assert geometry.crop == (*box, *crop)
    coordinates = decoded_coordinates(
        processor, processor(images=coordinate_image(45, 50), return_tensors="pt")["pixel_values"]
    )
    top, left = box
    rows = np.arange(crop[0])[:, None] + top
    cols = np.arange(crop[1])[None, :] + left
    inside = (rows >= 0) & (rows < 45) & (cols >= 0) & (cols < 50)
    np.testing.assert_array_equal(coordinates[0], np.where(inside, rows + 1, 0))
    np.testing.assert_array_equal(coordinates[1], np.where(inside, cols + 1, 0))


def test_legacy_size_forms_on_any_object():
    def fake(**attributes):
        return types.SimpleNamespace(do_resize=True, **attributes)

    assert processor_geometry(fake(size=32, default_to_square=False), (50, 80)).resized == (32, 51)
    assert processor_geometry(fake(size=32), (50, 80)).resized == (32, 32)
    assert processor_geometry(fake(size=(20, 30)), (50, 80)).resized == (20, 30)
    assert processor_geometry(fake(size=[24]), (50, 80)).resized == (24, 24)
    cropped = processor_geometry(fake(size=32, default_to_square=False, do_center_crop=True, crop_size=30), (80, 50))
    assert (cropped.resized, cropped.crop, cropped.input) == ((51, 32), (10, 1, 30, 30), (30, 30))
    assert processor_geometry(types.SimpleNamespace(do_resize=False), (5, 7)).crop == (0, 0, 5, 7)


def test_geometry_errors():
    with pytest.raises(ValueError, match="size"):
        processor_geometry(types.SimpleNamespace(do_resize=True, size={"longest_edge": 30}), (50, 80))
    with pytest.raises(TypeError, match=r"\(height, width\)"):
        processor_geometry(ViTImageProcessor(), 50)
    with pytest.raises(ValueError, match="positive"):
        processor_geometry(ViTImageProcessor(), (0, 80))

    class OddImageProcessor(type(ViTImageProcessor())):
        def resize(self, image, size, **kwargs):
            return image

    with pytest.raises(ValueError, match=r"OddImageProcessor defines its own resize.*Build an ImageGeometry"):
        processor_geometry(OddImageProcessor(), (50, 80))
    with pytest.raises(ValueError, match="input size"):
        ImageGeometry(original=(5, 5), resized=(5, 5), crop=(0, 0, 4, 4), input=(5, 5))


# ------------------------------------------------------------------------------------------ map back
def test_resize_only_map_holds_each_patch_value_over_its_area():
    geometry = processor_geometry(ViTImageProcessor(size={"height": 32, "width": 32}), (50, 80))
    grid = torch.arange(1.0, 17.0).reshape(4, 4)
    mapped = map_to_original(grid, geometry)
    assert mapped.shape == (50, 80) and mapped.dtype == torch.float32
    area = (50 / 4) * (80 / 4)  # each patch covers 12.5 x 20 original pixels
    torch.testing.assert_close(mapped[:12, :20], torch.full((12, 20), 1 / area))
    torch.testing.assert_close(mapped[38:, 60:], torch.full((12, 20), 16 / area))
    torch.testing.assert_close(mapped[12, 0], torch.tensor((1 + 5) / 2 / area))  # row 12 is half patch 0, half 4
    torch.testing.assert_close(mapped.sum(), grid.sum(), rtol=1e-5, atol=0)
    assert bool(geometry.covered_mask().all())


def test_crop_map_is_zero_outside_the_crop_and_keeps_the_mass():
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    geometry = processor_geometry(processor, (50, 80))
    assert (geometry.resized, geometry.crop) == ((32, 51), (0, 9, 32, 32))
    grid = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mapped = map_to_original(grid, geometry)
    assert mapped.shape == (3, 50, 80) and mapped.dtype == torch.float64
    covered = geometry.covered_mask()
    # resized columns 9..40 span original [9 * 80 / 51, 41 * 80 / 51) = [14.1, 64.3)
    expected_columns = torch.zeros(80, dtype=torch.bool)
    expected_columns[14:65] = True
    torch.testing.assert_close(covered, expected_columns.expand(50, 80))
    assert bool((mapped[:, :, ~expected_columns] == 0).all())
    assert bool((mapped[:, :, expected_columns] > 0).all())
    torch.testing.assert_close(mapped.sum(dim=(1, 2)), grid.sum(dim=(1, 2)), rtol=1e-12, atol=0)
    # a pixel map gives the same result as its patch grid
    pixels = grid.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2) / 64
    torch.testing.assert_close(map_to_original(pixels, geometry), mapped)


def test_relevance_on_padding_is_dropped():
    processor = CLIPImageProcessor(do_resize=False, crop_size={"height": 40, "width": 60})
    geometry = processor_geometry(processor, (45, 50))  # columns 0..4 and 55..59 of the input are padding
    pixels = torch.ones(40, 60)
    mapped = map_to_original(pixels, geometry)
    assert float(mapped.sum()) == pytest.approx(40 * 50)
    assert bool((mapped[2:42] == 1).all()) and float(mapped[:2].abs().sum()) == 0


def test_grid_with_a_border_needs_the_patch_size():
    geometry = ImageGeometry(original=(37, 37), resized=(37, 37), crop=(0, 0, 37, 37), input=(37, 37))
    grid = torch.ones(4, 4)
    with pytest.raises(ValueError, match="patch_size"):
        map_to_original(grid, geometry)
    mapped = map_to_original(grid, geometry, patch_size=8)
    assert float(mapped.sum()) == pytest.approx(16)
    assert float(mapped[32:].abs().sum()) == 0 and float(mapped[:, 32:].abs().sum()) == 0
    assert float(mapped[:32, :32].min()) == pytest.approx(1 / 64)
    with pytest.raises(ValueError, match="does not fit"):
        map_to_original(grid, geometry, patch_size=10)
    with pytest.raises(ValueError, match="shape"):
        map_to_original(torch.ones(37), geometry)


def test_a_patch_maps_back_onto_the_marker_the_processor_put_in_it():
    """Draw a marker where the geometry says patch (1, 2) comes from; the processor must put it there, and
    the patch's relevance must come back onto it."""
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    height, width = 100, 160
    geometry = processor_geometry(processor, (height, width))
    (resized_h, resized_w), (top, left) = geometry.resized, geometry.crop[:2]
    row, col, patch = 1, 2, 8
    y0, y1 = (top + row * patch) * height / resized_h, (top + (row + 1) * patch) * height / resized_h
    x0, x1 = (left + col * patch) * width / resized_w, (left + (col + 1) * patch) * width / resized_w
    margin = 8  # more than the bicubic filter's reach when shrinking by 3.1
    marker = (slice(int(np.ceil(y0)) + margin, int(y1) - margin), slice(int(np.ceil(x0)) + margin, int(x1) - margin))
    drawn = np.full((height, width, 3), 255, np.uint8)
    drawn[marker] = (255, 0, 0)
    pixel_values = processor(images=Image.fromarray(drawn), return_tensors="pt")["pixel_values"]
    red = (pixel_values[0, 0] > 1.0) & (pixel_values[0, 1] < -1.0)
    red_patches = red.reshape(4, patch, 4, patch).sum(dim=(1, 3))
    assert red_patches[row, col] > 0 and int(red_patches.sum()) == int(red_patches[row, col])

    grid = torch.zeros(4, 4)
    grid[row, col] = 1.0
    mapped = map_to_original(grid, geometry)
    assert bool((mapped[marker] > 0).all())
    support = mapped > 0
    rows, cols = support.any(dim=1).nonzero()[:, 0], support.any(dim=0).nonzero()[:, 0]
    assert (int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])) == (
        int(y0),
        int(np.ceil(y1)) - 1,
        int(x0),
        int(np.ceil(x1)) - 1,
    )
    torch.testing.assert_close(mapped.sum(), torch.tensor(1.0))


# ------------------------------------------------------------------------------------------ one call
@pytest.fixture(scope="module")
def lrp() -> TokenRelevanceLRP:
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        patch_size=8,
        image_size=32,
        qkv_bias=True,
        initializer_range=0.3,
    )
    return TokenRelevanceLRP(ViTModel(config, add_pooling_layer=False).eval())


def test_explain_image_resize_only(tmp_path, lrp):
    path = tmp_path / "photo.png"
    random_image(50, 80).save(path)
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    explanation = explain_image(lrp, path, processor)
    pixel_values = processor(images=Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(explanation.pixel_values, pixel_values)
    direct = lrp.token_relevance(pixel_values)[0]
    torch.testing.assert_close(explanation.token_relevance, direct)
    grid = patch_grid(direct, explanation.layout)
    torch.testing.assert_close(explanation.patch_grid, grid)
    assert explanation.image.size == (80, 50) and explanation.original_map.shape == (50, 80)
    assert float(grid.std()) > 0
    torch.testing.assert_close(explanation.original_map.sum(), grid.sum(), rtol=1e-4, atol=0)
    torch.testing.assert_close(explanation.original_map[:12, 60:], torch.full((12, 20), float(grid[0, 3]) / 250))
    assert bool(explanation.covered.all()) and explanation.head_maps is None


def test_explain_image_per_head_and_model_dtype(lrp):
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    image = random_image(40, 24)
    explanation = explain_image(lrp, image, processor, head_fusion=None)
    assert explanation.head_relevance.shape == (4, 17) and explanation.head_maps.shape == (4, 40, 24)
    torch.testing.assert_close(explanation.head_maps.mean(dim=0), explanation.original_map)
    torch.testing.assert_close(explanation.head_maps.sum(dim=(1, 2)), explanation.head_relevance[:, 1:].sum(dim=1))
    assert not torch.allclose(explanation.head_maps[0], explanation.head_maps[1])

    double = TokenRelevanceLRP(ViTModel(lrp.model.config, add_pooling_layer=False).double().eval())
    explained = explain_image(double, image, processor)
    assert explained.pixel_values.dtype == torch.float64
    assert explained.original_map.dtype == explained.token_relevance.dtype


class MarkerRelevance:
    """An attribution whose token relevance is the number of red pixels in each patch it is shown."""

    def __init__(self, lrp: TokenRelevanceLRP) -> None:
        self.lrp, self.model = lrp, lrp.model

    def token_layout(self, pixel_values, additional_forward_args=None):
        return self.lrp.token_layout(pixel_values, additional_forward_args)

    def token_relevance(self, pixel_values, target=None, additional_forward_args=None):
        layout = self.token_layout(pixel_values)
        (rows, cols), (patch_h, patch_w) = layout.grid, layout.patch_size
        red = ((pixel_values[:, 0] > 1.0) & (pixel_values[:, 1] < -1.0)).to(pixel_values.dtype)
        counts = red.reshape(-1, rows, patch_h, cols, patch_w).sum(dim=(2, 4)).reshape(-1, rows * cols)
        return torch.cat([counts.new_zeros(counts.shape[0], layout.num_special_tokens), counts], dim=1)


def test_explain_image_puts_relevance_back_on_the_marker(tmp_path, lrp):
    """End to end with a crop: relevance found where the model saw a marker lands on the marker."""
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    drawn = np.full((100, 160, 3), 255, np.uint8)
    drawn[60:75, 50:70] = (255, 0, 0)
    drawn[10:20, 2:12] = (255, 0, 0)  # outside the crop: the model never sees it
    path = tmp_path / "marker.png"
    Image.fromarray(drawn).save(path)
    explanation = explain_image(MarkerRelevance(lrp), path, processor)
    mapped, covered = explanation.original_map, explanation.covered
    assert explanation.geometry.crop == (0, 9, 32, 32)
    # resized columns 9..40 of 51 span original [9 * 160 / 51, 41 * 160 / 51) = [28.2, 128.6)
    assert not bool(covered[:, :28].any()) and bool(covered[:, 28:129].all()) and not bool(covered[:, 129:].any())
    assert float(mapped[:, :28].abs().sum()) == 0 and float(mapped[~covered].abs().sum()) == 0
    assert bool((mapped[60:75, 50:70] > 0).all())
    footprint = torch.zeros(100, 160, dtype=torch.bool)  # the marker grown by one patch (25 px) each way
    footprint[35:100, 25:95] = True
    assert float(mapped[~footprint].sum()) == 0
    torch.testing.assert_close(mapped.sum(), explanation.patch_grid.sum(), rtol=1e-4, atol=0)


@pytest.mark.parametrize(("height", "width"), [(1, 40), (3, 50), (3, 3)])
def test_explain_image_reads_images_one_or_three_pixels_high(lrp, height, width):
    """transformers 4.x takes such an image's height for its channel axis unless told the layout."""
    image = random_image(height, width)
    explanation = explain_image(lrp, image, ViTImageProcessor(size={"height": 32, "width": 32}))
    expected = torch.from_numpy(np.asarray(image.resize((32, 32), Image.Resampling.BILINEAR), np.float32))
    expected = (expected.permute(2, 0, 1) / 255 - 0.5) / 0.5  # PIL's resize; a torchvision one is a level or two off
    torch.testing.assert_close(explanation.pixel_values[0], expected, rtol=0, atol=0.05)
    assert explanation.original_map.shape == (height, width)


def test_explain_image_rejects_a_non_attribution():
    with pytest.raises(TypeError, match="token_relevance"):
        explain_image(object(), random_image(8, 8), ViTImageProcessor())
