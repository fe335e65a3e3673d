"""Encoded image bytes -> uint8 RGB tensor (3, H, W), within a pixel budget checked before decoding.

Order of work for one image:

1. read its width and height from the file header (:func:`image_size`: PNG, JPEG, GIF, BMP and WebP
   are parsed here in a few bytes; other formats through Pillow's lazy ``Image.open``, which reads the
   header only) and refuse it with :class:`ImageTooLargeError` when ``width * height`` exceeds
   ``max_pixels``, so a decompression bomb (a small file that inflates to gigabytes) never allocates;
2. decode with torchvision (libjpeg-turbo, libpng, libwebp), asking for RGB; these decoders allocate
   the size their header gives, the one checked in step 1;
3. if torchvision cannot (BMP, TIFF, animated WebP, ...), and always for GIF, decode with Pillow, which
   decodes the first frame only (torchvision decodes every frame of a GIF: a frame bomb). Pillow opens
   only :data:`PILLOW_FORMATS`, and the budget is checked again on the size Pillow found once it parsed
   the first frame, before that frame is decoded: a GIF's header (its logical screen) may say 1x1 while
   its first frame is 12000x12000, and Pillow allocates the frame's size.

A decoded image larger than the budget (a decoder that disagrees with the header parsed in step 1) is
refused too, after the fact: that last check is a tripwire, the ones before it are the guarantee.

Conversions to RGB uint8, the same whichever decoder ran:

- 16-bit samples (PNG ``I;16``/``I;16B`` grey or 16-bit RGB, Pillow's ``I;16*`` and ``I`` modes) are
  scaled ``round(v * 255 / 65535)``, never clipped (Pillow's own ``convert("RGB")`` clips them, so a
  16-bit image would come out almost white); ``I`` values outside 0..65535 are clipped to it first;
- 32-bit float (``F``) is taken as [0, 1] and scaled by 255 (NaN -> 0);
- grey (``1``, ``L``, ``I;16``) is repeated on the three channels; palette images are looked up;
- alpha (``LA``, ``RGBA``, ``PA``, palette transparency) is dropped, not composited, as libpng and
  Pillow both do when asked for RGB;
- CMYK (JPEG) goes through the decoder's CMYK -> RGB conversion (Adobe inverted CMYK handled);
- animated GIF/WebP: the first frame.

Every failure is a :class:`ValueError` (``ImageTooLargeError`` is one too) whose message says what is
wrong; the loader adds the shard and key.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode
from torchvision.io import decode_image as tv_decode_image
from torchvision.transforms.v2.functional import pil_to_tensor

from dinolite.data.budget import DEFAULT_MAX_SAMPLE_BYTES, read_file_capped

# Pillow's default Image.MAX_IMAGE_PIXELS (1024**3 / 4 / 3): images that libraries already treat as
# suspicious above this size. As uint8 RGB that is 268 MB, decoded once per sample in each data worker.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
# JPEG start-of-frame markers (they carry the size): C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# The formats Pillow may open. Each allocates the size it knows once its first frame is parsed (checked
# before decoding); formats outside this list are refused unread: some size their output only while
# decoding (ICO, ICNS: an embedded PNG larger than the directory says) and some run a program (EPS and
# PDF-like formats call Ghostscript when it is installed).
PILLOW_FORMATS = ("BMP", "DIB", "GIF", "JPEG", "PNG", "PPM", "TIFF", "WEBP")  # JPEG opens MPO too


class ImageTooLargeError(ValueError):
    """An image whose header asks for more pixels than the limit; nothing was decoded."""


def _jpeg_size(data: bytes) -> Optional[tuple[int, int]]:
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None  # not at a marker: damaged; let the decoder say so
        while i < len(data) and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= len(data):
            return None
        marker = data[i]
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[i + 4 : i + 8])
            return width, height
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers carry no length
            i += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        (length,) = struct.unpack(">H", data[i + 1 : i + 3])
        i += 1 + length
    return None


def _webp_size(data: bytes) -> Optional[tuple[int, int]]:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


def _header_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) from the header of a PNG, JPEG, GIF, BMP or WebP; None for other formats."""
    try:
        if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return width, height
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:6] in _GIF_SIGNATURES:
            width, height = struct.unpack("<HH", data[6:10])
            return width, height
        if data[:2] == b"BM":
            (header_size,) = struct.unpack("<I", data[14:18])
            if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
                width, height = struct.unpack("<HH", data[18:22])
            else:
                width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
    except (struct.error, IndexError):
        return None  # header cut short: the decoder will report it
    return None


def image_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of encoded image bytes, read from the header without decoding pixels.

    Raises :class:`ImageTooLargeError` if Pillow itself refuses the header as a decompression bomb
    (formats not parsed here, above twice ``PIL.Image.MAX_IMAGE_PIXELS``), ``ValueError`` if no
    decoder of :data:`PILLOW_FORMATS` recognises the bytes.
    """
    size = _header_size(data)
    if size is not None:
        return size
    with _pillow_open(data) as img:  # lazy: reads the header only
        return img.size


@contextmanager
def _pillow_open(data: bytes) -> Iterator[Image.Image]:
    """Pillow's lazy open of one of :data:`PILLOW_FORMATS`; its errors become ``ValueError``."""
    try:
        with warnings.catch_warnings():
            # Pillow's warning is about its own global limit; the callers check ours on the same size
            # (the size Pillow knows after parsing the first frame), and refuse above it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except Image.UnidentifiedImageError as exc:
        raise ValueError(
            f"not an image in any known format ({len(data)} bytes, starting {data[:12]!r}); "
            f"formats accepted: {', '.join(PILLOW_FORMATS)}"
        ) from exc
    except Exception as exc:  # Pillow raises many types for unknown or damaged data
        raise ValueError(f"unrecognised image data ({len(data)} bytes): {exc}") from exc
    with img:
        yield img


def check_pixel_limit(data: bytes, max_pixels: int) -> tuple[int, int]:
    """The image's ``(width, height)`` from its header; :class:`ImageTooLargeError` above ``max_pixels``."""
    width, height = image_size(data)
    _check_pixels(width, height, max_pixels, f"image of {width}x{height}", len(data))
    return width, height


def _check_pixels(width: int, height: int, max_pixels: int, what: str, encoded: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{what} = {width * height:,} pixels ({encoded:,} bytes encoded) exceeds the limit of "
            f"{max_pixels:,} pixels (data.max_image_pixels); not decoded"
        )


@contextmanager
def open_checked(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Iterator[Image.Image]:
    """A lazily opened Pillow image (first frame, one of :data:`PILLOW_FORMATS`) whose real size, known
    once Pillow parsed that frame, is within ``max_pixels``; nothing is decoded before that check."""
    header = _header_size(data)
    if header is not None:  # refused from the header before Pillow parses anything
        _check_pixels(header[0], header[1], max_pixels, f"image of {header[0]}x{header[1]}", len(data))
    with _pillow_open(data) as img:
        said = f" (its header says {header[0]}x{header[1]})" if header and header != img.size else ""
        _check_pixels(img.width, img.height, max_pixels, f"first frame of {img.width}x{img.height}{said}", len(data))
        yield img


@contextmanager
def open_image_file(
    path: str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_bytes: int = DEFAULT_MAX_SAMPLE_BYTES,
) -> Iterator[Image.Image]:
    """:func:`open_checked` on a file read within ``max_bytes``; errors name the file.

    For readers outside the data loader that want a Pillow image (evaluation CLIs): the same format
    list, pixel and byte budgets as training data.
    """
    try:
        data = read_file_capped(path, max_bytes, "data.max_sample_bytes")
        with open_checked(data, max_pixels) as img:
            yield img
    except ValueError as exc:
        raise ValueError(f"{os.fspath(path)}: {exc}") from exc


def scale_16_to_8(values: torch.Tensor) -> torch.Tensor:
    """0..65535 -> 0..255 as ``round(v * 255 / 65535)`` (uint8); the full range maps onto the full range."""
    wide = values.to(torch.int64).clamp_(0, 65535)
    return ((wide * 255 + 32767) // 65535).to(torch.uint8)


def _rgb_from_decoded(image: torch.Tensor) -> torch.Tensor:
    """torchvision's output (C,H,W) or (frames,C,H,W), uint8 or uint16 -> uint8 (3,H,W)."""
    if image.ndim == 4:
        image = image[0]
    if image.dtype == torch.uint16:
        image = scale_16_to_8(image)
    elif image.dtype != torch.uint8:
        raise ValueError(f"decoder returned {image.dtype}, expected uint8 or uint16")
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"decoder returned shape {tuple(image.shape)}, expected (3, H, W)")
    return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image


def pil_to_rgb_uint8(img: Image.Image) -> torch.Tensor:
    """A Pillow image of any mode -> uint8 RGB (3, H, W); high bit depths are scaled, not clipped."""
    if img.mode in _SIXTEEN_BIT_MODES:
        grey = scale_16_to_8(torch.from_numpy(np.asarray(img).astype(np.int64)))
        return grey.unsqueeze(0).expand(3, -1, -1).contiguous()
    if img.mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        grey = torch.from_numpy(np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8))
        return grey.unsqueeze(0).expand(3, -1, -1).contiguous()
    return pil_to_tensor(img.convert("RGB"))


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Encoded image bytes -> uint8 RGB tensor (3, H, W).

    Raises ``ValueError`` when the bytes are empty or undecodable, :class:`ImageTooLargeError` (before
    any pixel is decoded) when the header's, or the first frame's, ``width * height`` exceeds ``max_pixels``.
    """
    if not data:
        raise ValueError("empty image data")
    width, height = check_pixel_limit(data, max_pixels)
    if data[:6] in _GIF_SIGNATURES:
        # torchvision decodes every frame of a GIF at once: a few KB of near-identical 1000x1000 frames
        # would allocate gigabytes under a per-frame pixel limit. Pillow decodes the first frame only.
        image = _decode_with_pillow(data, "", max_pixels)
    else:
        try:
            decoded = tv_decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError as tv_error:
            # torchvision has no BMP or TIFF decoder, nor animated WebP (and may lack others depending on
            # its build): try Pillow.
            image = _decode_with_pillow(data, f"{tv_error}; ", max_pixels)
        else:
            image = _rgb_from_decoded(decoded)
    decoded_height, decoded_width = image.shape[-2:]
    if decoded_width * decoded_height > max_pixels:  # the tripwire: a decoder read another size than we did
        raise ImageTooLargeError(
            f"image decoded to {decoded_width}x{decoded_height} pixels although its header says {width}x{height}: "
            f"exceeds the limit of {max_pixels:,} pixels (data.max_image_pixels)"
        )
    return image


def _decode_with_pillow(data: bytes, earlier_error: str, max_pixels: int) -> torch.Tensor:
    try:
        with open_checked(data, max_pixels) as img:
            return pil_to_rgb_uint8(img)  # first frame of a multi-frame file
    except ImageTooLargeError:
        raise
    except Exception as pil_error:  # Pillow raises many types for bad data
        raise ValueError(f"undecodable image: {earlier_error}PIL: {pil_error}") from pil_error
