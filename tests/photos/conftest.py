"""Test images generated at runtime with Pillow: no binary files in the repository."""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageCms
from PIL.TiffImagePlugin import IFDRational

# Where the JPEG fixture claims to have been taken: 31°14'24.6"N 121°29'15.3"E (Shanghai Bund)
EXIF_DATETIME = "2024:05:17 09:30:00"
GPS_LAT = 31 + 14 / 60 + 24.6 / 3600
GPS_LON = 121 + 29 / 60 + 15.3 / 3600
XMP_PACKET = (
    b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Make="SecretCam"/>'
    b"</rdf:RDF></x:xmpmeta><?xpacket end='w'?>"
)


def noisy_rgb(w: int, h: int, seed: int = 7) -> Image.Image:
    """Random pixels: JPEG cannot compress them, so the entropy data fills the file."""
    return Image.frombytes("RGB", (w, h), random.Random(seed).randbytes(w * h * 3))


def two_tone(w: int, h: int) -> Image.Image:
    """Left half red, right half blue: lets a test see which way an image was rotated."""
    im = Image.new("RGB", (w, h), (220, 20, 20))
    im.paste((20, 20, 220), (w // 2, 0, w, h))
    return im


def jpeg_bytes(im: Image.Image, **save_kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **save_kw)
    return buf.getvalue()


def png_bytes(im: Image.Image, **save_kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **save_kw)
    return buf.getvalue()


def exif_block(orientation: int = 6) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation: 6 = rotate 90° CW to display
    exif[0x010F] = "SecretCam"  # Make
    exif.get_ifd(0x8769)[0x9003] = EXIF_DATETIME  # DateTimeOriginal
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (IFDRational(31, 1), IFDRational(14, 1), IFDRational(246, 10))
    gps[3] = "E"
    gps[4] = (IFDRational(121, 1), IFDRational(29, 1), IFDRational(153, 10))
    return exif


def patch_png_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite IHDR width/height of a valid PNG and recompute the chunk CRC."""
    assert data[12:16] == b"IHDR"
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return data[:16] + bytes(ihdr) + crc + data[33:]


@pytest.fixture
def write(tmp_path: Path):
    """write(name, data) -> Path under tmp_path."""

    def _write(name: str, data: bytes) -> Path:
        p = tmp_path / name
        p.write_bytes(data)
        return p

    return _write


@pytest.fixture
def exif_jpeg() -> bytes:
    """80x40 (stored) JPEG, orientation 6, DateTimeOriginal, GPS, XMP and an ICC profile."""
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return jpeg_bytes(two_tone(80, 40), quality=95, exif=exif_block(6).tobytes(), xmp=XMP_PACKET, icc_profile=icc)


@pytest.fixture
def png_image() -> bytes:
    return png_bytes(two_tone(50, 30))


@pytest.fixture
def rgba_png() -> bytes:
    im = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # fully transparent: must come out white
    return png_bytes(im)


@pytest.fixture
def webp_image() -> bytes:
    buf = io.BytesIO()
    two_tone(64, 48).save(buf, "WEBP", quality=80)
    return buf.getvalue()


@pytest.fixture
def big_jpeg() -> bytes:
    """1200x900 noisy JPEG: big enough for draft() to scale by 1/2..1/8."""
    return jpeg_bytes(noisy_rgb(1200, 900), quality=85)


@pytest.fixture
def truncated_jpeg() -> bytes:
    data = jpeg_bytes(noisy_rgb(400, 300), quality=90)
    return data[: int(len(data) * 0.6)]


@pytest.fixture
def truncated_progressive_jpeg() -> bytes:
    data = jpeg_bytes(noisy_rgb(400, 300, seed=3), quality=90, progressive=True)
    return data[: int(len(data) * 0.6)]


@pytest.fixture
def text_as_jpg() -> bytes:
    return b"Meeting notes: check the fire exits on floor 3.\n" * 20


@pytest.fixture
def png_bomb_header() -> bytes:
    """A valid 1x1 PNG whose IHDR claims 100000 x 100000 pixels (10 gigapixels)."""
    return patch_png_size(png_bytes(Image.new("L", (1, 1))), 100_000, 100_000)
