"""PNG bytes <-> uint8 arrays, the image format of every reward request (lossless, deterministic).

data = encode_png(np.zeros((64, 64, 3), np.uint8))
image = decode_png(data, max_pixels=4096 * 4096)  # [64, 64, 3] uint8
header = read_png_header(data)  # size and format from the IHDR chunk, without decoding anything

Encoding and decoding use OpenCV's PNG codec (faster than Pillow's at every level, measured in
bench/pixel_service.py). What arrives from outside is checked from its header before it is decoded: a
PNG of a few hundred KB can declare (and inflate to) 100+ megapixels.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# zlib level 1: the pixels are identical at every level; level 1 encodes several times faster than the
# default at a few % larger files. Masks and files use it.
PNG_COMPRESS_LEVEL = 1
# Images on the wire (make_edit) are stored, not compressed (level 0, no PNG row filter): photo-like
# 512 px images shrink only to ~65% at level 1 while inflating them cost ~4x the CPU of the stored
# bytes (decode ~7.5 vs ~1.8 ms, encode ~25 vs ~3 ms per image, measured): on loopback or a cluster
# network, bytes are cheaper than the reward service's cores.
WIRE_IMAGE_COMPRESS_LEVEL = 0
# PNG colour types (IHDR) -> channels of the decoded array (palette: RGB, or RGBA with transparency).
_COLOR_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
_COLOR_NAMES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}


class ImageDecodeError(ValueError):
    """Bytes that are not a PNG this project can read (or that are larger than allowed)."""


@dataclass(frozen=True)
class PngHeader:
    """The IHDR chunk of a PNG: what decoding it would produce."""

    width: int
    height: int
    bit_depth: int  # 1, 2, 4, 8 or 16 bits per sample
    color_type: int  # 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def channels(self) -> int:
        """Channels of the decoded array (palette images with transparency decode to 4)."""
        return _COLOR_CHANNELS[self.color_type]

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the decoded uint8 array, at most (palette counted as RGBA)."""
        return self.pixels * (4 if self.color_type == 3 else self.channels)

    def describe(self) -> str:
        return f"{self.width}x{self.height} {self.bit_depth}-bit {_COLOR_NAMES[self.color_type]}"


def read_png_header(data: bytes) -> PngHeader:
    """The IHDR of PNG bytes (the first 33 bytes); raises ImageDecodeError, saying why, for anything else."""
    if not data:
        raise ImageDecodeError("empty bytes (no image was sent)")
    head = bytes(data[:33])
    if head[:8] != PNG_SIGNATURE:
        raise ImageDecodeError(
            f"not a PNG (first bytes {head[:8]!r}); send images encoded with rewards.images.encode_png"
        )
    if len(head) < 33 or head[12:16] != b"IHDR" or struct.unpack(">I", head[8:12])[0] != 13:
        raise ImageDecodeError(f"undecodable PNG ({len(data)} bytes): no IHDR chunk after the signature")
    width, height, bit_depth, color_type = struct.unpack(">IIBB", head[16:26])
    if not (0 < width < 2**31 and 0 < height < 2**31):
        raise ImageDecodeError(f"undecodable PNG: IHDR declares a {width}x{height} image")
    if color_type not in _COLOR_CHANNELS or bit_depth not in (1, 2, 4, 8, 16):
        raise ImageDecodeError(
            f"undecodable PNG: IHDR colour type {color_type} with bit depth {bit_depth} is not valid PNG"
        )
    return PngHeader(width, height, bit_depth, color_type)


def check_png_header(header: PngHeader, max_pixels: int | None = None) -> PngHeader:
    """`header` if this project decodes such a PNG; ImageDecodeError naming the size and the limit for
    one of more than `max_pixels` pixels, and for 16-bit samples (grey and colour alike: no silent cut)."""
    if max_pixels is not None and header.pixels > max_pixels:
        side = math.isqrt(max_pixels)
        limit = f"{side}x{side} = {max_pixels}" if side * side == max_pixels else f"{max_pixels}"
        raise ImageDecodeError(
            f"{header.width}x{header.height} (WxH) = {header.pixels} pixels is over the limit of {limit} "
            "pixels per image; send smaller images"
        )
    if header.bit_depth == 16:
        raise ImageDecodeError(
            f"{header.describe()} PNG: 16-bit samples are not accepted; send 8-bit grey or RGB"
        )
    return header


def encode_png(image: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """PNG bytes of `image`: uint8 [H, W] (grey) or [H, W, 3] (RGB). Same pixels -> same bytes.

    compress_level 0-9 (zlib); level 0 stores the rows unfiltered (the fastest to encode and decode).
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"encode_png expects a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(
            f"encode_png expects uint8 pixels, got {image.dtype}; convert floats in [0, 1] with "
            "(x * 255).round().clip(0, 255).astype(np.uint8)"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(
            f"encode_png expects [H, W] or [H, W, 3], got shape {tuple(image.shape)}"
            + (
                "; channels-first tensors need .permute(1, 2, 0)"
                if image.ndim == 3 and image.shape[0] == 3
                else ""
            )
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"encode_png got an empty image of shape {tuple(image.shape)}")
    if not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level={compress_level} must be a zlib level in 0..9")
    import cv2

    if image.ndim == 3:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)  # OpenCV writes BGR
    params = [cv2.IMWRITE_PNG_COMPRESSION, compress_level]
    if compress_level == 0:
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} uint8 image as PNG")
    return buf.tobytes()


def decode_png(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """uint8 pixels of a PNG: [H, W] for grey, [H, W, C] for C in (2, 3, 4) (grey+alpha, RGB, RGBA).

    Bilevel and palette PNGs are expanded to grey / RGB(A). The header is read first: an image of more
    than `max_pixels` pixels and 16-bit PNGs (grey or colour) are refused before anything is decoded.
    Raises ImageDecodeError, saying why, for those and for empty bytes, non-PNG data and broken files.
    """
    header = check_png_header(read_png_header(data), max_pixels)
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != np.uint8 or image.shape[:2] != (header.height, header.width):
        raise ImageDecodeError(f"undecodable PNG ({len(data)} bytes, IHDR {header.describe()})")
    if image.ndim == 2:
        return image
    if header.color_type in (0, 4):  # grey(+alpha) that OpenCV expanded to BGR(A): B = G = R
        return image[:, :, 0].copy() if image.shape[2] == 3 else np.ascontiguousarray(image[:, :, [0, 3]])
    if header.color_type == 2 and image.shape[2] == 4:  # a tRNS chunk made OpenCV add alpha: RGB stays RGB
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    code = cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
    return cv2.cvtColor(image, code, dst=image)
