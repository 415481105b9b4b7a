"""Hostile and unusual image files, made here from scratch (Pillow, numpy, or byte by byte where
Pillow refuses to write such a thing): bombs by header and by real pixels, extreme shapes, odd
modes, broken metadata, polyglots. Each builder is deterministic and small to send."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageCms

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def photo(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    """A smooth colour image with some texture (compresses like a photo, not like a bomb)."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    rgb = np.stack(
        [(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)), (x + y) % 256], axis=-1
    ).astype(np.int16) + rng.integers(-12, 12, (height, width, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def ramp16(side: int = 64) -> np.ndarray:
    """A 16-bit grey ramp using the whole 0-65535 range."""
    return (
        (np.arange(side * side, dtype=np.uint32) * 65535 // (side * side - 1))
        .astype(np.uint16)
        .reshape(side, side)
    )


def blocks(width: int, height: int, seed: int = 0) -> bytes:
    """A large PNG of 100-px colour blocks: many pixels, few bytes, quick to make."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 100 + 1, width // 100 + 1, 3), dtype=np.uint8)
    big = np.repeat(np.repeat(small, 100, axis=0), 100, axis=1)[:height, :width]
    return encode(Image.fromarray(np.ascontiguousarray(big)), "PNG", compress_level=1)


# --- PNG made byte by byte -----------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", crc or zlib.crc32(body))


def ihdr(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    return png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    )


def png_header_bomb(width: int, height: int) -> bytes:
    """A valid signature and IHDR claiming width x height, then one tiny IDAT."""
    idat = png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
    return PNG_SIGNATURE + ihdr(width, height) + idat + png_chunk(b"IEND", b"")


def _zero_rows(rows: int, row_bytes: int) -> Iterator[bytes]:
    row = b"\0" * (row_bytes + 1)  # filter byte 0, then zero samples
    batch = max(1, (1 << 20) // len(row))
    for start in range(0, rows, batch):
        yield row * min(batch, rows - start)


def png_real_pixels(width: int, height: int, colour_type: int = 2, bit_depth: int = 8) -> bytes:
    """A complete, valid PNG of zeros: every pixel really there, compressed ~1000:1."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    row_bytes = (width * channels * bit_depth + 7) // 8
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(chunk) for chunk in _zero_rows(height, row_bytes))
    data += compressor.flush()
    extra = png_chunk(b"PLTE", b"\xff\0\0\0\0\xff") if colour_type == 3 else b""
    return (
        PNG_SIGNATURE
        + ihdr(width, height, bit_depth, colour_type)
        + extra
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def png_rgb16(width: int = 64, height: int = 48) -> bytes:
    """48-bit RGB (16 bits per channel), which Pillow reads but cannot write."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 65536, (height, width, 3), dtype=np.uint16).astype(">u2")
    raw = b"".join(b"\0" + pixels[r].tobytes() for r in range(height))
    return (
        PNG_SIGNATURE
        + ihdr(width, height, 16, 2)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def png_with_chunk_before_iend(png: bytes, chunk: bytes) -> bytes:
    end = png.rindex(b"IEND") - 4
    return png[:end] + chunk + png[end:]


def png_bad_crc(png: bytes) -> bytes:
    """The IHDR's CRC flipped."""
    data = bytearray(png)
    data[29] ^= 0xFF  # signature (8) + length (4) + type (4) + IHDR data (13) = CRC at 29
    return bytes(data)


# --- other formats -------------------------------------------------------------------------------


def gif_header_bomb(width: int = 65535, height: int = 65535) -> bytes:
    """A GIF whose logical screen and only frame claim width x height, with 1 byte of LZW."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x4c\x01\x00"
    return header + frame + b"\x3b"


def jpeg_header_bomb(width: int = 65500, height: int = 65500) -> bytes:
    """A real JPEG with its SOF0 frame size rewritten to width x height."""
    data = bytearray(encode(photo(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_header_bomb(width: int = 30000, height: int = 30000) -> bytes:
    data = bytearray(encode(photo(4, 4), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def webp_header_bomb() -> bytes:
    """VP8X extended header with a 16384 x 16384 canvas around a tiny real frame."""
    small = encode(photo(16, 16), "WEBP", lossless=True)
    vp8l = small[12:]  # the VP8L chunk of a simple lossless WebP
    side = 16384 - 1
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + side.to_bytes(3, "little") * 2
    body = b"WEBP" + vp8x + vp8l
    return b"RIFF" + struct.pack("<I", len(body)) + body


def palette_bomb(side: int = 6300) -> bytes:
    """A 2-colour palette PNG of side x side real pixels: a few KiB that decode to side² pixels."""
    return png_real_pixels(side, side, colour_type=3, bit_depth=1)


def many_frame_gif(frames: int = 1000, side: int = 64) -> bytes:
    images = []
    for i in range(frames):  # each frame differs, so the encoder cannot merge them
        frame = Image.new("P", (side, side), 0)
        frame.putpixel((i % side, (i // side) % side), 1 + i % 255)
        images.append(frame)
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=10)


def many_frame_webp(frames: int = 200, side: int = 64) -> bytes:
    images = [photo(side, side, seed=i) for i in range(frames)]
    return encode(images[0], "WEBP", save_all=True, append_images=images[1:], lossless=False)


def with_exif_orientation(upright: Image.Image, orientation: int) -> bytes:
    """A JPEG whose stored pixels are `upright` transformed so that a viewer applying the EXIF
    orientation (TIFF/EXIF spec semantics, implemented here with numpy, not with Pillow's own
    table) shows `upright` again."""
    a = np.asarray(upright)
    stored = {
        1: lambda x: x,
        2: np.fliplr,  # mirrored horizontally
        3: lambda x: np.rot90(x, 2),
        4: np.flipud,
        5: lambda x: x.transpose(1, 0, 2),  # row 0 = visual left side, column 0 = visual top
        6: lambda x: np.rot90(x, 1),  # row 0 = visual right side: viewer rotates 90° clockwise
        7: lambda x: np.rot90(x, 2).transpose(1, 0, 2),  # row 0 = right side, col 0 = bottom
        8: lambda x: np.rot90(x, -1),  # row 0 = visual left side, column 0 = visual bottom
    }[orientation](a)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(np.ascontiguousarray(stored)), "JPEG", quality=95, exif=exif)


def quadrant_image(width: int = 96, height: int = 64) -> Image.Image:
    """Grey, with the top-left quadrant pure red: which way up it is can be seen from any crop."""
    a = np.full((height, width, 3), 128, dtype=np.uint8)
    a[: height // 2, : width // 2] = (255, 0, 0)
    return Image.fromarray(a, "RGB")


def jpeg_with_app1(payload: bytes) -> bytes:
    """A JPEG with an APP1 segment carrying payload (for broken EXIF)."""
    data = encode(photo(), "JPEG")
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + segment + data[2:]


def corrupt_exif() -> bytes:
    """'Exif' + a TIFF header whose first IFD offset points far outside the block."""
    return jpeg_with_app1(b"Exif\0\0II*\0" + struct.pack("<I", 0x7FFFFFF0) + b"\0" * 32)


def exif_huge_ifd() -> bytes:
    """An IFD claiming 65535 entries in a 40-byte block."""
    return jpeg_with_app1(b"Exif\0\0II*\0\x08\0\0\0" + b"\xff\xff" + b"\0" * 24)


def exif_bad_orientation(value: int = 9) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return encode(photo(), "JPEG", exif=exif)


def srgb_icc_jpeg() -> bytes:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return encode(photo(), "JPEG", icc_profile=icc)


def garbage_icc_png() -> bytes:
    return encode(photo(), "PNG", icc_profile=b"\x00garbage-icc" * 64)


def png_text_bomb() -> bytes:
    """A zTXt chunk that inflates to 64 MiB of text."""
    text = zlib.compress(b"A" * (64 << 20), 9)
    chunk = png_chunk(b"zTXt", b"Comment\0\0" + text)
    return png_with_chunk_before_iend(encode(photo(), "PNG"), chunk)


def png_rgb_trns() -> bytes:
    """RGB PNG whose tRNS makes pure green transparent (left half green)."""
    a = np.asarray(photo()).copy()
    a[:, : a.shape[1] // 2] = (0, 255, 0)
    return encode(Image.fromarray(a), "PNG", transparency=(0, 255, 0))


def png_i16_trns() -> bytes:
    a = np.zeros((48, 64), dtype=np.uint16)
    a[:, 32:] = 40000
    return encode(Image.fromarray(a), "PNG", transparency=0)
