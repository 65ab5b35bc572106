"""An image's width and height from its header, so a decompression bomb is refused before decoding.

OpenCV allocates the whole picture from the header's size before it reads a pixel: a 1 MB PNG
that declares 30000 x 30000 costs 2.7 GB. :func:`check_image_size` reads only the header of
every format OpenCV decodes here (PNG, JPEG, BMP, TIFF/BigTIFF, WebP, PNM/PAM/PFM, Sun raster,
GIF, Radiance HDR, JPEG 2000, AVIF) and refuses a picture above ``max_pixels``; a file of an unknown format is
refused too, since its size cannot be checked.
"""
from __future__ import annotations

import re
import struct
from typing import Callable

#: Default pixel limit: 100 megapixels, ~3x an 8K video frame (33 MP).
DEFAULT_MAX_PIXELS = 100_000_000

_Reader = Callable[[bytes], "tuple[int, int] | None"]


class ImageSizeError(ValueError):
    """The header is unreadable, of an unknown format, or declares too many pixels."""


def _png(head: bytes) -> tuple[int, int] | None:
    if head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def _jpeg(head: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 9 <= len(head):
        if head[pos] != 0xFF:   # stray bytes before a marker: libjpeg skips them too
            pos = head.find(b"\xff", pos)
            if pos < 0:
                return None
            continue
        marker = head[pos + 1]
        if marker == 0xFF:          # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:   # no length field
            pos += 2
            continue
        # Start-of-frame markers (not DHT C4, JPG C8, DAC CC) carry height then width.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", head[pos + 5:pos + 9])
            return width, height
        pos += 2 + struct.unpack(">H", head[pos + 2:pos + 4])[0]
    return None


def _bmp(head: bytes) -> tuple[int, int] | None:
    if struct.unpack("<I", head[14:18])[0] == 12:   # OS/2 core header: 16-bit sizes
        return struct.unpack("<HH", head[18:22])
    width, height = struct.unpack("<ii", head[18:26])
    return abs(width), abs(height)   # a negative height means top-down rows


def _tiff(head: bytes) -> tuple[int, int] | None:
    end = "<" if head[:2] == b"II" else ">"
    big = struct.unpack(end + "H", head[2:4])[0] == 43
    entry, count_fmt, off_fmt = (20, "Q", "Q") if big else (12, "H", "I")
    offset = struct.unpack(end + off_fmt, head[8:16] if big else head[4:8])[0]
    count_size = struct.calcsize(count_fmt)
    if offset + count_size > len(head):
        return None
    count = struct.unpack(end + count_fmt, head[offset:offset + count_size])[0]
    sizes: dict[int, int] = {}
    for i in range(min(count, 4096)):
        at = offset + count_size + i * entry
        if at + entry > len(head):
            break
        tag, kind = struct.unpack(end + "HH", head[at:at + 4])
        value_at = at + (12 if big else 8)
        if tag in (256, 257):   # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            fmt = "H" if kind == 3 else ("Q" if kind == 16 else "I")
            sizes[tag] = struct.unpack(end + fmt, head[value_at:value_at + struct.calcsize(fmt)])[0]
    return (sizes[256], sizes[257]) if len(sizes) == 2 else None


def _webp(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X":
        w, h = int.from_bytes(head[24:27], "little"), int.from_bytes(head[27:30], "little")
        return w + 1, h + 1
    if chunk == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


def _pnm(head: bytes) -> tuple[int, int] | None:
    text = re.sub(rb"#[^\n]*", b" ", head[2:4096])
    if head[:2] == b"P7":   # PAM: WIDTH and HEIGHT lines
        w, h = re.search(rb"WIDTH\s+(\d+)", text), re.search(rb"HEIGHT\s+(\d+)", text)
        return (int(w.group(1)), int(h.group(1))) if w and h else None
    numbers = re.match(rb"\s*(\d+)\s+(\d+)", text)
    return (int(numbers.group(1)), int(numbers.group(2))) if numbers else None


def _sun(head: bytes) -> tuple[int, int] | None:
    return struct.unpack(">II", head[4:12])


def _gif(head: bytes) -> tuple[int, int] | None:
    return struct.unpack("<HH", head[6:10])


def _hdr(head: bytes) -> tuple[int, int] | None:
    found = re.search(rb"\n[-+]Y (\d+) [-+]X (\d+)", head[:65536])
    return (int(found.group(2)), int(found.group(1))) if found else None


def _jpeg2000(head: bytes) -> tuple[int, int] | None:
    if head[:4] == b"\xff\x4f\xff\x51":   # bare codestream: SIZ marker, grid minus offsets
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", head[8:24])
        return xsiz - xo, ysiz - yo
    at = head.find(b"ihdr", 0, 65536)
    if at < 0:
        return None
    height, width = struct.unpack(">II", head[at + 4:at + 12])
    return width, height


def _avif(head: bytes) -> tuple[int, int] | None:
    at = head.find(b"ispe", 0, 65536)   # image spatial extents: version/flags, width, height
    return struct.unpack(">II", head[at + 8:at + 16]) if at >= 0 else None


_FORMATS: list[tuple[str, Callable[[bytes], bool], _Reader]] = [
    ("PNG", lambda h: h[:8] == b"\x89PNG\r\n\x1a\n", _png),
    ("JPEG", lambda h: h[:2] == b"\xff\xd8", _jpeg),
    ("BMP", lambda h: h[:2] == b"BM", _bmp),
    ("TIFF", lambda h: h[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"), _tiff),
    ("WebP", lambda h: h[:4] == b"RIFF" and h[8:12] == b"WEBP", _webp),
    ("PNM", lambda h: h[:1] == b"P" and h[1:2] in b"1234567" and h[2:3].isspace(), _pnm),
    ("PFM", lambda h: h[:2] in (b"PF", b"Pf") and h[2:3].isspace(), _pnm),
    ("Sun raster", lambda h: h[:4] == b"\x59\xa6\x6a\x95", _sun),
    ("GIF", lambda h: h[:6] in (b"GIF87a", b"GIF89a"), _gif),
    ("Radiance HDR", lambda h: h[:2] == b"#?", _hdr),
    ("JPEG 2000", lambda h: h[:12] == b"\0\0\0\x0cjP  \r\n\x87\n" or h[:4] == b"\xff\x4f\xff\x51",
     _jpeg2000),
    ("AVIF", lambda h: h[4:8] == b"ftyp" and h[8:12] in (b"avif", b"avis"), _avif),
]


def image_size(head: bytes) -> tuple[str, int, int]:
    """``(format, width, height)`` from an image file's bytes (only its header is parsed; a
    TIFF's directory may sit anywhere, a JPEG's frame header after large metadata segments).

    :class:`ImageSizeError` for an empty file, an unknown format or an unreadable header.
    """
    if not head:
        raise ImageSizeError("empty file (0 bytes)")
    for name, matches, reader in _FORMATS:
        if matches(head):
            try:
                size = reader(head)
            except (struct.error, IndexError, ValueError):
                size = None
            if size is None:
                raise ImageSizeError(f"{name} header without a readable width and height "
                                     "(truncated or corrupt)")
            return name, int(size[0]), int(size[1])
    raise ImageSizeError("not an image format this toolkit reads (PNG, JPEG, BMP, TIFF, WebP, "
                         "PNM, Sun raster, GIF, HDR, JPEG 2000, AVIF)")


def check_image_size(head: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` from the header if the picture has at most ``max_pixels`` pixels;
    :class:`ImageSizeError` saying what the header declares otherwise."""
    name, width, height = image_size(head)
    if width <= 0 or height <= 0:
        raise ImageSizeError(f"{name} header declares an empty picture ({width} x {height})")
    if width * height > max_pixels:
        raise ImageSizeError(f"{name} header declares {width} x {height} = {width * height:,} "
                             f"pixels, above the limit of {max_pixels:,} (--max-pixels); "
                             "not decoded")
    return width, height
