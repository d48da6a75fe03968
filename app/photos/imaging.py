"""PURE image work: sniff, fully verify, read EXIF, make JPEG derivatives (缩略图).

No FastAPI, no database. Everything here is CPU work: call it from a worker thread
(plain ``def`` endpoint, ``asyncio.to_thread`` or the ``validate`` hook of
``storage.put_stream``), never directly inside ``async def``.

Errors are raised as ``ImageRejected(code, message, status)``; its fields line up with
``app.errors.DomainError`` so the service layer can re-raise it one to one:

    ==========================  ======  ===========================================
    code                        status  meaning
    ==========================  ======  ===========================================
    ``unsupported_media_type``  415     magic bytes are not JPEG/PNG/WebP(/HEIC)
    ``corrupt_image``           422     type recognised but Pillow cannot parse it
    ``truncated_image``         422     data ends before the image does
    ``decompression_bomb``      422     more than ``max_pixels`` pixels
    ==========================  ======  ===========================================
"""

from __future__ import annotations

import io
import math
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from PIL import Image, ImageCms, ImageFile

try:  # optional: iPhones shoot HEIC; accept it only when the decoder is installed
    import pillow_heif  # type: ignore[import-not-found]

    pillow_heif.register_heif_opener()
    HEIC_SUPPORTED = True
except ImportError:  # pragma: no cover - depends on the environment
    HEIC_SUPPORTED = False

# 60 MP: above any phone camera (48 MP sensors bin to 12 MP; a 48 MP ProRAW JPEG is 8064x6048),
# below Pillow's own warning threshold (~89 MP). Decoded RGB at 60 MP is ~180 MB per worker thread.
MAX_PIXELS = 60_000_000
THUMB_SIDE = 320
DISPLAY_SIDE = 1600
DEFAULT_QUALITY = 80
# JPEG draft() decodes at 1/2, 1/4 or 1/8 scale, never below DRAFT_GAP x the target size;
# Lanczos then does the remaining (< 2x) reduction. DCT scaling is a proper frequency-domain
# downscale (no aliasing), so 1.0 is sharp enough and lets a 12 MP photo decode at 1/2 for
# the 1600 px display copy (2.0, Pillow's thumbnail default, would decode it at full size).
DRAFT_GAP = 1.0

SNIFF_BYTES = 32  # how many leading bytes sniff() needs

MIME_TO_FORMAT = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/heic": "HEIF",
}
ACCEPTED_MIME = frozenset(m for m in MIME_TO_FORMAT if m != "image/heic" or HEIC_SUPPORTED)

_HEIC_BRANDS = frozenset({b"heic", b"heix", b"mif1"})

_TAG_ORIENTATION = 0x0112
_IFD_EXIF = 0x8769
_IFD_GPS = 0x8825
_TAG_DATETIME_ORIGINAL = 0x9003
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4


class ImageRejected(Exception):
    """The bytes are not an acceptable image. ``status`` is the HTTP status to answer."""

    def __init__(self, code: str, message: str, status: int = 422):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def __repr__(self) -> str:
        return f"ImageRejected(code={self.code!r}, message={self.message!r}, status={self.status})"


@dataclass(frozen=True, slots=True)
class ImageInfo:
    mime: str
    width: int  # as stored, before EXIF orientation is applied
    height: int
    exif_datetime: str | None = None  # DateTimeOriginal as written, e.g. "2024:05:17 09:30:00" (camera-local, no zone)
    gps_lat: float | None = None  # decimal degrees, south negative
    gps_lon: float | None = None  # decimal degrees, west negative
    orientation: int | None = None  # EXIF orientation 1..8

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as shown, i.e. after the EXIF orientation is applied."""
        if self.orientation in (5, 6, 7, 8):
            return self.height, self.width
        return self.width, self.height


# ---------------------------------------------------------------------------------- sniffing


def sniff(head: bytes) -> str | None:
    """MIME type from the magic bytes (at least the first 12; ``SNIFF_BYTES`` is plenty).

    Never trusts a file name or a Content-Type header. HEIC only when ``HEIC_SUPPORTED``.
    """
    head = bytes(head[:SNIFF_BYTES])
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIC_BRANDS:
        return "image/heic" if HEIC_SUPPORTED else None
    return None


# ---------------------------------------------------------------------------------- verifying


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageRejected("corrupt_image", f"image has an empty size {w}x{h}", 422)
    if w * h > max_pixels:
        raise ImageRejected(
            "decompression_bomb", f"image is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}", 422
        )


def _require_strict_loading() -> None:
    # With LOAD_TRUNCATED_IMAGES=True Pillow silently pads a cut-off file with grey and we
    # would accept half a photo. It is process-global, so refuse loudly if anyone flipped it.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False: truncated photos would be accepted")


def _open(fp: str | os.PathLike | IO[bytes], mime: str, max_pixels: int) -> Image.Image:
    """Image.open restricted to the one format the magic bytes promised, bomb-checked."""
    try:
        im = Image.open(fp, formats=[MIME_TO_FORMAT[mime]])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own global check (error above 2 x Image.MAX_IMAGE_PIXELS; the warning only
        # arrives here as an exception if the app turned that warning into an error).
        raise ImageRejected("decompression_bomb", str(e), 422) from e
    except Image.UnidentifiedImageError as e:
        raise ImageRejected("corrupt_image", f"not a readable {mime} image", 422) from e
    try:
        _check_pixels(im.size, max_pixels)
    except BaseException:
        im.close()
        raise
    return im


def _classify(e: Exception, mime: str) -> ImageRejected:
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageRejected("decompression_bomb", str(e), 422)
    text = str(e)
    if isinstance(e, EOFError) or "truncated" in text or "premature end" in text.lower():
        return ImageRejected("truncated_image", f"{mime} image is truncated", 422)
    return ImageRejected("corrupt_image", f"{mime} image is corrupt: {type(e).__name__}: {text}"[:300], 422)


def inspect_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS, full_decode: bool = False) -> ImageInfo:
    """Check the file at ``path`` is a complete image of an accepted type and return what we need
    to know about it. Raises ``ImageRejected`` (415 for a type we do not accept, 422 for a corrupt,
    truncated or oversized image).

    Decision (measured, docs/PERFORMANCE.md): a full decode of a 3 MP JPEG costs ~15 ms, five times
    hashing and writing the same bytes, and decoding is the upload's whole CPU bill. What the decode
    would catch is already caught more cheaply: bytes damaged or cut in transit fail the sha256 the
    phone computed; a file cut on the phone lacks its end marker (JPEG EOI, PNG IEND with every chunk
    CRC checked, the RIFF length of WebP); a bomb shows in the header's dimensions; a non-image fails
    the sniff or the header parse. So an upload gets this structural check, and the full decode
    (``full_decode=True``) happens when the first derivative is made, off the upload path.
    """
    _require_strict_loading()
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except IsADirectoryError as e:
        raise ImageRejected("unsupported_media_type", "not a file", 415) from e
    mime = sniff(head)
    if mime is None:
        raise ImageRejected(
            "unsupported_media_type", "not an image of an accepted type (" + ", ".join(sorted(ACCEPTED_MIME)) + ")", 415
        )
    try:
        # 1. structural check: PNG's verify() checks every chunk's CRC up to IEND. For JPEG and WebP
        #    Pillow's verify() only closes the file, so parsing their headers below is the check.
        if mime not in _HEADER_PARSE_IS_VERIFY:
            with _open(path, mime, max_pixels) as im:
                im.verify()
        # 2. verify() leaves the object unusable: (re)open for the size and the EXIF
        with _open(path, mime, max_pixels) as im:
            width, height = im.size
            meta = _read_exif(im)
            if full_decode or mime not in _END_CHECKS:
                im.load()
        if not full_decode and mime in _END_CHECKS:
            _END_CHECKS[mime](path)
    except ImageRejected:
        raise
    except MemoryError as e:
        raise ImageRejected("decompression_bomb", "image needs too much memory to decode", 422) from e
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ... on bad input
        raise _classify(e, mime) from e
    return ImageInfo(mime=mime, width=width, height=height, **meta)


_HEADER_PARSE_IS_VERIFY = frozenset({"image/jpeg", "image/webp"})


def _jpeg_complete(path: Path) -> None:
    """A JPEG ends with EOI (FF D9); some cameras pad after it with zeros.

    Others write more after it: a motion photo's video (Xiaomi, Huawei, OPPO, vivo, Samsung, Pixel:
    on by default on many phones), Samsung's SEFT trailer. Those are complete photos, so a file whose
    tail is not EOI is walked segment by segment to the picture's own EOI. (Decoding it would not do:
    the decoder takes the bytes after a cut as picture data, and may fill the picture with them.)"""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 4096))
        tail = f.read().rstrip(b"\x00")
        if tail.endswith(b"\xff\xd9"):
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if _jpeg_eoi(data) is None:
                raise ImageRejected("truncated_image", "image/jpeg image is truncated (no end-of-image marker)", 422)


def _jpeg_eoi(data: mmap.mmap | bytes) -> int | None:
    """Offset of the EOI that ends the picture begun by the SOI at 0, or None if the data ends first.
    Segments are skipped by their length (an EXIF thumbnail's own EOI is inside one); in the
    entropy-coded data after SOS, FF is followed by 00 (a stuffed byte), a restart marker or a fill
    byte, and anything else is the next marker."""
    n, pos = len(data), 2
    for _ in range(_MAX_MARKERS):
        if pos + 1 >= n:
            return None
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0xD9:
            return pos
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # stand-alone markers
            pos += 2
        else:
            if pos + 4 > n:
                return None
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
            if marker != 0xDA:
                continue
            # the scan's entropy-coded data, up to the next marker: searched in C, since a crafted body of
            # stuffed bytes would otherwise cost a turn of this loop every two bytes (seconds for 15 MB)
            found = _SCAN_END.search(data, pos)
            if found is None:
                return None
            pos = found.start()
    return None  # more markers than any picture has: not one whose end can be told


# in entropy-coded data FF is followed by 00 (a stuffed byte), a restart marker or another FF (fill);
# an FF followed by anything else is the marker that ends the scan (one FF, not a run of them: a run
# would be matched again from each of its bytes, quadratic on a body of FFs)
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# segments, scans and fill bytes before the picture's EOI: tens in a camera's JPEG, a few more in a progressive
# one (restart markers inside a scan do not count); a crafted body of empty segments or fill bytes stops here
_MAX_MARKERS = 10_000


def _webp_complete(path: Path) -> None:
    """RIFF header: 'RIFF' <little-endian length of the rest> 'WEBP'; the file must be that long."""
    with open(path, "rb") as f:
        header = f.read(12)
    declared = int.from_bytes(header[4:8], "little") + 8
    if path.stat().st_size < declared:
        raise ImageRejected("truncated_image", "image/webp image is truncated", 422)


# PNG needs no entry: verify() walks every chunk and its CRC up to IEND.
_END_CHECKS = {"image/jpeg": _jpeg_complete, "image/webp": _webp_complete, "image/png": lambda path: None}


# ---------------------------------------------------------------------------------- EXIF


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _read_exif(im: Image.Image) -> dict[str, Any]:
    """Best effort: broken EXIF never rejects a photo, the field is just None."""
    out: dict[str, Any] = {"exif_datetime": None, "gps_lat": None, "gps_lon": None, "orientation": None}
    try:
        # For a PNG, Pillow looks for an eXIf chunk after the pixels by decoding the whole image
        # (a 15 MB PNG: ~20 MB and ~100 ms, on the upload path). The base method reads what came
        # before the pixels (eXIf, a raw EXIF text chunk, XMP), which is where phones put it.
        exif = Image.Image.getexif(im) if im.format == "PNG" else im.getexif()
    except Exception:
        return out
    try:
        o = exif.get(_TAG_ORIENTATION)
        if isinstance(o, int) and 1 <= o <= 8:
            out["orientation"] = o
    except Exception:
        pass
    try:
        dt = exif.get_ifd(_IFD_EXIF).get(_TAG_DATETIME_ORIGINAL)
        if isinstance(dt, bytes):
            dt = dt.decode("ascii", "replace")
        if isinstance(dt, str):
            # control characters (a NUL inside the value: PostgreSQL cannot store it, and every retry of the
            # upload was refused) are blanks; the value is kept as written otherwise
            dt = _CONTROL.sub(" ", dt).strip()[:32]
            out["exif_datetime"] = dt or None
    except Exception:
        pass
    try:
        gps = exif.get_ifd(_IFD_GPS)
        lat = _gps_degrees(gps.get(_GPS_LAT), gps.get(_GPS_LAT_REF), b"S", 90.0)
        lon = _gps_degrees(gps.get(_GPS_LON), gps.get(_GPS_LON_REF), b"W", 180.0)
        if lat is not None and lon is not None:
            out["gps_lat"], out["gps_lon"] = lat, lon
    except Exception:
        pass
    return out


def _gps_degrees(value: Any, ref: Any, negative_ref: bytes, limit: float) -> float | None:
    if value is None:
        return None
    parts = list(value) if isinstance(value, (tuple, list)) else [value]
    if not 1 <= len(parts) <= 3:
        return None
    deg = 0.0
    for part, div in zip(parts, (1.0, 60.0, 3600.0)):
        x = float(part)  # IFDRational with denominator 0 gives nan
        if not math.isfinite(x) or x < 0:
            return None
        deg += x / div
    if isinstance(ref, str):
        ref = ref.encode("ascii", "replace")
    if isinstance(ref, bytes) and ref.strip(b"\x00 ").upper() == negative_ref:
        deg = -deg
    if abs(deg) > limit:
        return None
    return round(deg, 7)  # ~1 cm; more digits are noise


# ---------------------------------------------------------------------------------- derivatives


_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _to_srgb(im: Image.Image) -> Image.Image:
    """RGB in sRGB with no alpha, ready for JPEG without an ICC profile."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    icc = im.info.get("icc_profile")
    if icc:
        # Convert colours instead of embedding the profile: the output then needs no ICC
        # (phones shoot Display P3; dropping the profile without converting dulls the colours).
        try:
            src_mode = im.mode if im.mode in ("RGB", "RGBA", "L", "CMYK") else "RGB"
            src = im if im.mode == src_mode else im.convert(src_mode)
            out = ImageCms.profileToProfile(
                src, ImageCms.ImageCmsProfile(io.BytesIO(icc)), _SRGB, outputMode="RGB"
            )
            if out is not None:
                return out
        except Exception:
            pass  # broken or mismatched profile: fall back to a plain conversion
    if im.mode.startswith("I;16") or im.mode == "I":
        # 16-bit greyscale PNG: scale to 8 bits (a plain convert("L") would clip at 255)
        im = im.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    return im.convert("RGB") if im.mode != "RGB" else im


# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def _upright(im: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says. Not ImageOps.exif_transpose: that also rewrites the
    image's EXIF without the orientation, which fails on a tag whose value does not fit its type (seen in
    ~1 in 300 damaged EXIF blocks), so a photo accepted whole had a thumbnail refused for ever; the
    derivative keeps no metadata anyway."""
    try:
        orientation = im.getexif().get(_TAG_ORIENTATION)
    except Exception:  # broken EXIF: as if there were none, as when the upload read it (_read_exif)
        return im
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return im.transpose(method) if method is not None else im


def make_derivative(
    src: str | os.PathLike | bytes | bytearray | memoryview | IO[bytes],
    max_side: int,
    quality: int = DEFAULT_QUALITY,
    *,
    max_pixels: int = MAX_PIXELS,
) -> bytes:
    """A JPEG that fits in ``max_side`` x ``max_side``, EXIF orientation applied, no metadata.

    The output carries no EXIF (so no GPS, no camera serial), no XMP, no ICC profile (colours
    are converted to sRGB instead), no comments. JPEG sources are decoded with ``draft()``
    (DCT scaling by 1/2, 1/4 or 1/8), which is most of the speed-up for thumbnails.
    Smaller images are not enlarged. Expects an image already accepted by ``inspect_image``,
    but still raises ``ImageRejected`` rather than anything else on bad input.
    """
    if max_side < 1:
        raise ValueError("max_side must be positive")
    _require_strict_loading()
    if isinstance(src, (bytes, bytearray, memoryview)):
        fp: Any = io.BytesIO(bytes(src))
        head = bytes(src[:SNIFF_BYTES])
    elif hasattr(src, "read"):
        fp = src
        pos = src.tell()
        head = src.read(SNIFF_BYTES)
        src.seek(pos)
    else:
        fp = Path(src)
        with open(fp, "rb") as f:
            head = f.read(SNIFF_BYTES)
    mime = sniff(head)
    if mime is None:
        raise ImageRejected("unsupported_media_type", "not an image of an accepted type", 415)
    try:
        with _open(fp, mime, max_pixels) as im:
            w, h = im.size
            scale = min(1.0, max_side / max(w, h))
            if im.format == "JPEG" and scale < 1.0:
                # request DRAFT_GAP x the final size so the DCT scaling never over-shrinks
                want = (max(1, math.ceil(w * scale * DRAFT_GAP)), max(1, math.ceil(h * scale * DRAFT_GAP)))
                im.draft("RGB", want)
            im.load()
            # Resize first, rotate after: transposing the small image is cheaper and, the box
            # being square, gives the same result. reducing_gap=None: draft already happened.
            im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=None)
            out = _to_srgb(_upright(im))
            # Pillow's JPEG writer falls back on the image's own info for some metadata (the source's COM
            # segment: owner names, notes, coordinates), so the derivative starts from none at all
            out.info = {}
            buf = io.BytesIO()
            # Only the pixels: no exif=, icc_profile=, xmp=, comment= -> none written
            out.save(buf, "JPEG", quality=quality, optimize=True, progressive=max_side > THUMB_SIDE)
            return buf.getvalue()
    except ImageRejected:
        raise
    except MemoryError as e:
        raise ImageRejected("decompression_bomb", "image needs too much memory to decode", 422) from e
    except Exception as e:
        raise _classify(e, mime) from e


def make_thumb(src: Any, **kw: Any) -> bytes:
    return make_derivative(src, THUMB_SIDE, **kw)


def make_display(src: Any, **kw: Any) -> bytes:
    return make_derivative(src, DISPLAY_SIDE, **kw)
