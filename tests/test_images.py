"""Input images: formats, orientation, and the caps that keep hostile files from exhausting memory."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from generation import images
from generation.errors import UserInputError


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": phones store portraits this way
    image.save(tmp_path / "phone.jpg", exif=exif)
    assert images.load_image(tmp_path / "phone.jpg").size == (20, 40)


def test_modes_are_converted_to_rgb(tmp_path):
    Image.new("RGBA", (8, 8), (1, 2, 3, 0)).save(tmp_path / "alpha.png")
    Image.new("L", (8, 8), 7).save(tmp_path / "gray.webp")
    assert images.load_image(tmp_path / "alpha.png").mode == "RGB"
    assert images.load_image(tmp_path / "gray.webp").mode == "RGB"


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    # A one-color PNG compresses to almost nothing yet decodes to width x height pixels; with the cap
    # lowered, a 200x200 one stands in for a real bomb (the check reads only the header).
    monkeypatch.setattr(images, "MAX_INPUT_PIXELS", 10_000)
    Image.new("L", (200, 200)).save(tmp_path / "bomb.png")
    with pytest.raises(UserInputError, match=r"200x200 \(0 MP\); the limit is 0 MP"):
        images.load_image(tmp_path / "bomb.png")


def test_oversized_files_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_INPUT_BYTES", 100)
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png", compress_level=0)
    with pytest.raises(UserInputError, match="the limit is 0 MB"):
        images.load_image(tmp_path / "big.png")


@pytest.mark.parametrize("content", [b"", b"<!DOCTYPE html><html>404</html>", b"\x89PNG\r\n\x1a\ntruncated"])
def test_unreadable_files_get_one_clear_message(tmp_path, content):
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(UserInputError, match="could not be read as an image"):
        images.load_image(tmp_path / "bad.png", what="image")


def test_mask_is_grayscale_at_the_output_size_with_hard_edges(tmp_path):
    mask = Image.new("RGB", (4, 2), (0, 0, 0))
    mask.paste((255, 255, 255), (2, 0, 4, 2))
    mask.save(tmp_path / "mask.png")
    loaded = images.load_mask(tmp_path / "mask.png", (64, 32))
    assert loaded.mode == "L" and loaded.size == (64, 32)
    assert set(loaded.getdata()) == {0, 255}


@pytest.mark.parametrize(
    ("mask_size", "image_size"),
    [((64, 32), (64, 32)), ((32, 16), (640, 320)), ((33, 50), (100, 150)), ((1000, 667), (1500, 1000))],
)
def test_a_mask_of_the_image_aspect_is_resized_whatever_its_size(tmp_path, mask_size, image_size):
    Image.new("L", mask_size, 255).save(tmp_path / "mask.png")
    assert images.load_mask(tmp_path / "mask.png", (48, 32), image_size).size == (48, 32)


@pytest.mark.parametrize(
    ("mask_size", "image_size"), [((64, 32), (64, 64)), ((300, 200), (200, 300)), ((104, 100), (100, 100))]
)
def test_a_mask_of_another_aspect_is_refused_not_stretched(tmp_path, mask_size, image_size):
    Image.new("L", mask_size, 255).save(tmp_path / "mask.png")
    with pytest.raises(UserInputError, match=rf"The mask is {mask_size[0]}x{mask_size[1]} but the image is .*aspect"):
        images.load_mask(tmp_path / "mask.png", (64, 64), image_size)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_an_image_over_pils_own_limit_gets_our_message(tmp_path):
    # 240 MP: over PIL's default refusal point (179 MP) and our 200 MP cap. One bit per pixel keeps it small.
    Image.new("1", (20_000, 12_000)).save(tmp_path / "huge.png")
    with pytest.raises(UserInputError, match=r"is 20000x12000 \(240 MP\); the limit is 200 MP"):
        images.load_image(tmp_path / "huge.png")


def _pa_image() -> Image.Image:
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([102, 102, 102] * 256)
    return palette.convert("PA")  # no format writes PA; Pillow makes it from palette PNGs with alpha


# Every mode users send, stored the way files carry it, at 40% grey (102 of 255) or white for 1-bit images.
MODES = {
    "I;16 (16-bit grey PNG)": (lambda: Image.fromarray(np.full((8, 8), 26214, np.uint16)), "png", 102),
    "I (32-bit TIFF, 16-bit values)": (lambda: Image.new("I", (8, 8), 26214), "tiff", 102),
    "I (32-bit TIFF, 8-bit values)": (lambda: Image.new("I", (8, 8), 102), "tiff", 102),
    "F (float TIFF, 0..1)": (lambda: Image.new("F", (8, 8), 0.4), "tiff", 102),
    "LA": (lambda: Image.new("LA", (8, 8), (102, 255)), "png", 102),
    "PA": (_pa_image, None, 102),
    "CMYK (JPEG)": (lambda: Image.new("CMYK", (8, 8), (0, 0, 0, 153)), "jpeg", 102),
    "1 (1-bit PNG)": (lambda: Image.new("1", (8, 8), 1), "png", 255),
}


@pytest.mark.parametrize("name", MODES)
def test_every_mode_converts_with_its_real_tones(tmp_path, name):
    make, file_format, grey = MODES[name]
    image = make()
    if file_format is None:
        converted = images.to_rgb(image)
    else:
        path = tmp_path / f"in.{file_format}"
        image.save(path, format=file_format.upper())
        converted = images.load_image(path)
    assert converted.mode == "RGB"
    assert abs(np.asarray(converted, dtype=float).mean() - grey) <= 1, name


def _tiff_with_image_length_as_double() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 100).save(buffer, format="TIFF")
    data = bytearray(buffer.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for index in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * index
        if struct.unpack("<H", data[entry : entry + 2])[0] == 257:  # ImageLength
            data[entry + 2 : entry + 4] = struct.pack("<H", 12)  # type DOUBLE: a height is an integer
    return bytes(data)


@pytest.mark.parametrize(
    "content",
    [b"P6\n8 x8\n255\n" + bytes(192), _tiff_with_image_length_as_double(), b"GIF89a\x08\x00", b"\x89PNG\r\n\x1a\n"],
    ids=["malformed PPM header", "TIFF ImageLength of type DOUBLE", "truncated GIF", "PNG signature only"],
)
def test_malformed_files_are_one_clear_error(tmp_path, content):
    (tmp_path / "bad").write_bytes(content)
    with pytest.raises(UserInputError, match=r"^The image could not be read as an image \(\w+\)\. Send a PNG"):
        images.load_image(tmp_path / "bad")
