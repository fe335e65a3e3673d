"""Decoding: every PIL mode and bit depth to RGB uint8 (16-bit scaled, not clipped), and the pixel limit
read from the header before any pixel is decoded (issue 16, items 4 and 7)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from dinolite.data import decode as decode_module
from dinolite.data.decode import (
    ImageTooLargeError,
    decode_image,
    image_size,
    scale_16_to_8,
)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def reference_16_to_8(values: np.ndarray) -> np.ndarray:
    """round(v * 255 / 65535), written independently of the code under test."""
    return np.floor(values.astype(np.float64) * 255.0 / 65535.0 + 0.5).astype(np.uint8)


GREY16 = np.array([[0, 1, 128, 129], [257, 32767, 32768, 40000], [60000, 65277, 65278, 65535]], dtype=np.uint16)


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, rows: list[bytes]) -> bytes:
    """A PNG written chunk by chunk (Pillow cannot write 16-bit RGB, nor a 20000x20000 image cheaply)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(b"\x00" + row) for row in rows) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_scale_16_to_8_matches_rounding_reference():
    values = np.arange(65536, dtype=np.int64)
    expected = reference_16_to_8(values)
    assert torch.equal(scale_16_to_8(torch.from_numpy(values)), torch.from_numpy(expected))
    assert expected[0] == 0 and expected[-1] == 255 and expected[257] == 1


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16_bit_grey_png_is_scaled_not_clipped(mode):
    """The issue's failure: a valid 16-bit PNG came out as torch.uint16 and broke augmentation."""
    img = Image.frombytes(mode, (4, 3), GREY16.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = decode_image(data)
    assert out.dtype == torch.uint8 and out.shape == (3, 3, 4)
    for channel in out:
        assert np.array_equal(channel.numpy(), reference_16_to_8(GREY16))


def test_16_bit_rgb_png_is_scaled():
    rgb = np.stack([GREY16, GREY16[::-1], 65535 - GREY16], axis=-1)  # (3, 4, 3)
    rows = [row.astype(">u2").tobytes() for row in rgb]
    out = decode_image(png_bytes(4, 3, 16, 2, rows))
    assert out.dtype == torch.uint8
    assert np.array_equal(out.permute(1, 2, 0).numpy(), reference_16_to_8(rgb))


def test_16_and_32_bit_tiff_take_the_pillow_path_and_are_scaled():
    """TIFF has no torchvision decoder: Pillow's I;16 / I / F modes are converted here (Pillow's own
    convert('RGB') would clip them to 255)."""
    i16 = decode_image(encode(Image.fromarray(GREY16), "TIFF"))
    assert np.array_equal(i16[0].numpy(), reference_16_to_8(GREY16))
    i32 = decode_image(encode(Image.fromarray(GREY16.astype(np.int32)), "TIFF"))
    assert Image.open(io.BytesIO(encode(Image.fromarray(GREY16.astype(np.int32)), "TIFF"))).mode == "I"
    assert np.array_equal(i32[1].numpy(), reference_16_to_8(GREY16))
    floats = (GREY16 / 65535.0).astype(np.float32)
    f32 = decode_image(encode(Image.fromarray(floats), "TIFF"))
    assert np.array_equal(f32[2].numpy(), np.floor(floats.astype(np.float64) * 255 + 0.5).astype(np.uint8))


@pytest.mark.parametrize(
    "mode,fmt",
    [
        ("P", "PNG"),
        ("LA", "PNG"),
        ("RGBA", "PNG"),
        ("1", "PNG"),
        ("L", "PNG"),
        ("RGBA", "WEBP"),
        ("P", "GIF"),
        ("RGB", "BMP"),
        ("L", "BMP"),
    ],
)
def test_8_bit_modes_match_pillow_rgb_conversion(mode, fmt):
    """Lossless formats: the pixels must equal Pillow's own RGB conversion (alpha dropped, palette looked up,
    grey repeated), whichever decoder ran."""
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, size=(5, 6, 4), dtype=np.uint8), "RGBA")
    img = base.convert(mode) if mode != "P" else base.convert("RGB").quantize(16)
    data = encode(img, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    out = decode_image(data)
    assert out.dtype == torch.uint8 and out.shape == (3, 5, 6)
    assert np.array_equal(out.permute(1, 2, 0).numpy(), expected)


def test_cmyk_jpeg_is_converted_to_rgb():
    img = Image.new("CMYK", (8, 8), (10, 200, 30, 40))
    data = encode(img, "JPEG", quality=100)
    out = decode_image(data).permute(1, 2, 0).numpy().astype(int)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert np.abs(out - expected).max() <= 2  # two JPEG decoders; colour clearly not grey
    assert out[..., 1].mean() < out[..., 0].mean() - 100


def test_header_sizes_match_pillow_for_every_format():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8))
    rgba = img.convert("RGBA")
    cases = {
        "png": encode(img, "PNG"),
        "jpeg": encode(img, "JPEG"),
        "progressive jpeg": encode(img, "JPEG", progressive=True),
        "jpeg with exif": encode(img, "JPEG", exif=Image.Exif()),
        "gif": encode(img.convert("P"), "GIF"),
        "bmp": encode(img, "BMP"),
        "webp lossy": encode(img, "WEBP"),
        "webp lossless": encode(img, "WEBP", lossless=True),
        "webp extended": encode(rgba, "WEBP", exif=b"Exif\x00\x00"),
        "tiff (Pillow)": encode(img, "TIFF"),
    }
    for name, data in cases.items():
        assert image_size(data) == (53, 37), name
        assert decode_module._header_size(data) in ((53, 37), None), name
    assert decode_module._header_size(cases["webp extended"]) == (53, 37)  # VP8X really parsed
    with pytest.raises(ValueError, match=r"not an image in any known format \(19 bytes, starting b'not an image'\)"):
        image_size(b"not an image at all")


def bomb_png(side: int = 20000) -> bytes:
    """A real decompression bomb: 1-bit grey, side x side pixels of zeros, a few hundred KB on disk."""
    row = bytes((side + 7) // 8)
    return png_bytes(side, side, 1, 0, [row] * side)


def test_decompression_bomb_is_refused_from_its_header_without_decoding(monkeypatch):
    """The issue's failure: a 20000x20000 PNG of a few hundred KB decoded to 1.1 GiB without a word."""
    data = bomb_png()
    assert len(data) < 1_000_000

    def must_not_decode(*args, **kwargs):
        raise AssertionError("a decoder was called on an image above the pixel limit")

    monkeypatch.setattr(decode_module, "tv_decode_image", must_not_decode)
    monkeypatch.setattr(decode_module.Image, "open", must_not_decode)
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(data)
    message = str(info.value)
    assert "20000x20000" in message and "400,000,000 pixels" in message and "89,478,485" in message
    assert "data.max_image_pixels" in message and f"{len(data):,} bytes" in message


def test_pixel_limit_boundary_is_inclusive():
    img = encode(Image.new("RGB", (10, 7), (1, 2, 3)), "PNG")
    assert decode_image(img, max_pixels=70).shape == (3, 7, 10)
    with pytest.raises(ImageTooLargeError, match="10x7 = 70 pixels"):
        decode_image(img, max_pixels=69)
    bmp = encode(Image.new("RGB", (10, 7), (1, 2, 3)), "BMP")  # the Pillow decoding path is guarded too
    with pytest.raises(ImageTooLargeError):
        decode_image(bmp, max_pixels=69)


def test_damaged_and_empty_bytes_raise_value_error():
    with pytest.raises(ValueError, match="empty"):
        decode_image(b"")
    png = encode(Image.new("RGB", (10, 7)), "PNG")
    with pytest.raises(ValueError):
        decode_image(png[:40])
    with pytest.raises(ValueError):
        decode_image(b"\xff\xd8garbage")


def test_animated_gif_decodes_its_first_frame_only(monkeypatch):
    """A 6 KB GIF of 200 near-identical 1000x1000 frames: torchvision would decode all of them (600 MB)
    under a per-frame pixel limit; only the first frame may be decoded."""
    frames = [Image.new("P", (1000, 1000), 0) for _ in range(200)]
    for i, frame in enumerate(frames):
        frame.putpixel((i, i), i % 250 + 1)
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], optimize=False)
    data = buf.getvalue()
    assert len(data) < 10_000 and Image.open(io.BytesIO(data)).n_frames == 200
    first = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def must_not_decode_all_frames(*args, **kwargs):
        raise AssertionError("torchvision decodes every frame of a GIF")

    monkeypatch.setattr(decode_module, "tv_decode_image", must_not_decode_all_frames)
    out = decode_image(data)
    assert out.shape == (3, 1000, 1000)
    assert np.array_equal(out.permute(1, 2, 0).numpy(), first)


def test_animated_webp_decodes_its_first_frame():
    frames = [Image.new("RGB", (30, 20), (10 * i, 0, 0)) for i in range(5)]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    out = decode_image(buf.getvalue())
    assert out.shape == (3, 20, 30) and int(out[0, 0, 0]) == 0
