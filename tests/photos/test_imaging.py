from __future__ import annotations

import io
import warnings

import pytest
from PIL import Image, ImageFile, JpegImagePlugin, WebPImagePlugin

from app.photos import imaging
from app.photos.imaging import (
    DISPLAY_SIDE,
    MAX_PIXELS,
    THUMB_SIDE,
    ImageInfo,
    ImageRejected,
    inspect_image,
    make_derivative,
    sniff,
)

from .conftest import EXIF_DATETIME, GPS_LAT, GPS_LON, exif_block, jpeg_bytes, noisy_rgb, patch_png_size, png_bytes, two_tone

# ----------------------------------------------------------------------------- sniff


def test_sniff_accepted_types(exif_jpeg, png_image, webp_image):
    assert sniff(exif_jpeg) == "image/jpeg"
    assert sniff(png_image) == "image/png"
    assert sniff(webp_image) == "image/webp"


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"\xff\xd8",  # too short for JPEG
        b"GIF89a\x01\x00\x01\x00",
        b"BM" + b"\x00" * 30,
        b"RIFF\x00\x00\x00\x00WAVEfmt ",
        b"%PDF-1.7\n",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00",  # MP4 video
    ],
)
def test_sniff_rejects_other_types(head):
    assert sniff(head) is None


@pytest.mark.parametrize("brand", [b"heic", b"heix", b"mif1"])
def test_sniff_heic_only_when_supported(monkeypatch, brand):
    head = b"\x00\x00\x00\x18ftyp" + brand + b"\x00\x00\x00\x00mif1heic"
    monkeypatch.setattr(imaging, "HEIC_SUPPORTED", True)
    assert sniff(head) == "image/heic"
    monkeypatch.setattr(imaging, "HEIC_SUPPORTED", False)
    assert sniff(head) is None


def test_sniff_ignores_the_file_name(write, exif_jpeg, png_image):
    # a PNG called .jpg is a PNG; a JPEG called .png is a JPEG
    assert inspect_image(write("really_png.jpg", png_image)).mime == "image/png"
    assert inspect_image(write("really_jpeg.png", exif_jpeg)).mime == "image/jpeg"


# ----------------------------------------------------------------------------- inspect_image


def test_inspect_jpeg_reads_exif(write, exif_jpeg):
    info = inspect_image(write("a.jpg", exif_jpeg))
    assert isinstance(info, ImageInfo)
    assert info.mime == "image/jpeg"
    assert (info.width, info.height) == (80, 40)
    assert info.orientation == 6
    assert info.display_size == (40, 80)
    assert info.exif_datetime == EXIF_DATETIME
    assert info.gps_lat == pytest.approx(GPS_LAT, abs=1e-6)
    assert info.gps_lon == pytest.approx(GPS_LON, abs=1e-6)


def test_inspect_gps_signed_by_ref(write):
    from .conftest import exif_block

    exif = exif_block(1)
    exif.get_ifd(0x8825)[1] = "S"
    exif.get_ifd(0x8825)[3] = "W"
    info = inspect_image(write("sw.jpg", jpeg_bytes(two_tone(20, 20), exif=exif.tobytes())))
    assert info.gps_lat == pytest.approx(-GPS_LAT, abs=1e-6)
    assert info.gps_lon == pytest.approx(-GPS_LON, abs=1e-6)
    assert info.orientation == 1


def test_inspect_broken_gps_is_none_not_rejected(write):
    from PIL.TiffImagePlugin import IFDRational

    from .conftest import exif_block

    exif = exif_block(1)
    exif.get_ifd(0x8825)[2] = (IFDRational(31, 0), IFDRational(0, 1), IFDRational(0, 1))  # division by zero
    info = inspect_image(write("nan.jpg", jpeg_bytes(two_tone(20, 20), exif=exif.tobytes())))
    assert info.gps_lat is None and info.gps_lon is None
    assert info.exif_datetime == EXIF_DATETIME


def test_inspect_png(write, png_image):
    info = inspect_image(write("a.png", png_image))
    assert info == ImageInfo(mime="image/png", width=50, height=30)


def test_inspect_webp(write, webp_image):
    info = inspect_image(write("a.webp", webp_image))
    assert (info.mime, info.width, info.height) == ("image/webp", 64, 48)
    assert info.exif_datetime is None and info.gps_lat is None and info.orientation is None


def test_text_file_named_jpg_is_415(write, text_as_jpg):
    with pytest.raises(ImageRejected) as e:
        inspect_image(write("notes.jpg", text_as_jpg))
    assert e.value.status == 415
    assert e.value.code == "unsupported_media_type"


def test_empty_file_is_415(write):
    with pytest.raises(ImageRejected) as e:
        inspect_image(write("empty.jpg", b""))
    assert e.value.status == 415


def test_gif_is_415_even_though_pillow_reads_it(write):
    buf = io.BytesIO()
    Image.new("P", (4, 4)).save(buf, "GIF")
    with pytest.raises(ImageRejected) as e:
        inspect_image(write("a.gif", buf.getvalue()))
    assert e.value.status == 415


@pytest.mark.parametrize("fixture", ["truncated_jpeg", "truncated_progressive_jpeg"])
def test_truncated_jpeg_is_422(request, write, fixture):
    data = request.getfixturevalue(fixture)
    assert sniff(data) == "image/jpeg"  # the header is intact: only a decode can tell
    with pytest.raises(ImageRejected) as e:
        inspect_image(write("cut.jpg", data))
    assert e.value.status == 422
    assert e.value.code == "truncated_image"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png_is_422(write):
    data = png_bytes(noisy_rgb(120, 90))
    with pytest.raises(ImageRejected) as e:
        inspect_image(write("cut.png", data[: int(len(data) * 0.6)]))
    assert e.value.status == 422
    assert e.value.code in ("truncated_image", "corrupt_image")


def test_truncated_webp_is_422(write):
    buf = io.BytesIO()
    noisy_rgb(120, 90).save(buf, "WEBP", quality=90)
    data = buf.getvalue()
    with pytest.raises(ImageRejected) as e:
        inspect_image(write("cut.webp", data[: int(len(data) * 0.6)]))
    assert e.value.status == 422


def test_jpeg_magic_then_garbage_is_422(write):
    with pytest.raises(ImageRejected) as e:
        inspect_image(write("fake.jpg", b"\xff\xd8\xff\xe0" + b"\x00garbage" * 50))
    assert e.value.status == 422
    assert e.value.code == "corrupt_image"


def test_png_with_bad_crc_is_422(write, png_image):
    data = bytearray(png_image)
    data[30] ^= 0xFF  # flip a byte inside IHDR's data: its CRC no longer matches
    with pytest.raises(ImageRejected) as e:
        inspect_image(write("crc.png", bytes(data)))
    assert e.value.status == 422


def test_png_bomb_header_is_rejected(write, png_bomb_header):
    with pytest.raises(ImageRejected) as e:
        inspect_image(write("bomb.png", png_bomb_header))
    assert e.value.code == "decompression_bomb"
    assert e.value.status == 422


def test_bomb_between_our_cap_and_pillows(write):
    # 9000 x 9000 = 81 MP: above MAX_PIXELS, below Pillow's own warning threshold (~89 MP)
    data = patch_png_size(png_bytes(Image.new("L", (1, 1))), 9000, 9000)
    assert 9000 * 9000 > MAX_PIXELS
    with pytest.raises(ImageRejected) as e:
        inspect_image(write("bomb81.png", data))
    assert e.value.code == "decompression_bomb"


def test_bomb_cap_is_a_parameter(write):
    # a real, well-compressing 400x400 PNG is fine by default but a bomb under a 100k cap
    p = write("flat.png", png_bytes(Image.new("L", (400, 400), 128)))
    assert inspect_image(p).width == 400
    with pytest.raises(ImageRejected) as e:
        inspect_image(p, max_pixels=100_000)
    assert e.value.code == "decompression_bomb"


def test_pillow_bomb_warning_as_error_is_converted(write, monkeypatch):
    # If the app runs with warnings as errors, Pillow's own DecompressionBombWarning
    # surfaces as an exception from Image.open: it must still become an ImageRejected.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    p = write("w.png", png_bytes(Image.new("L", (40, 40))))  # 1600 px: warning, not error
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageRejected) as e:
            inspect_image(p)
    assert e.value.code == "decompression_bomb"


def test_load_truncated_images_flag_is_refused(write, exif_jpeg, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError):
        inspect_image(write("a.jpg", exif_jpeg))


# ----------------------------------------------------------------------------- derivatives


def _open(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_derivative_applies_orientation_and_strips_metadata(exif_jpeg):
    out = make_derivative(exif_jpeg, THUMB_SIDE)
    im = _open(out)
    assert im.format == "JPEG"
    # stored 80x40 with orientation 6 -> shown 40x80 (not enlarged: smaller than THUMB_SIDE)
    assert im.size == (40, 80)
    # the red left half of the stored image is at the top after a 90° clockwise turn
    r, g, b = im.getpixel((20, 10))
    assert r > 150 and b < 100
    r, g, b = im.getpixel((20, 70))
    assert b > 150 and r < 100
    # no metadata survives
    assert len(im.getexif()) == 0
    assert "exif" not in im.info and "xmp" not in im.info and "icc_profile" not in im.info
    assert b"Exif\x00\x00" not in out
    assert b"http://ns.adobe.com/xap/1.0/" not in out
    assert b"SecretCam" not in out
    assert b"ICC_PROFILE" not in out


def test_derivative_from_path_and_file_object(write, exif_jpeg):
    p = write("a.jpg", exif_jpeg)
    from_path = make_derivative(p, 64)
    with open(p, "rb") as f:
        from_file = make_derivative(f, 64)
    assert _open(from_path).size == _open(from_file).size == (32, 64)


def test_derivative_fits_the_box_and_uses_draft(big_jpeg, monkeypatch):
    calls = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        res = real_draft(self, mode, size)
        calls.append((size, self.size))
        return res

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    thumb = _open(make_derivative(big_jpeg, THUMB_SIDE))
    assert thumb.size == (320, 240)
    assert calls, "draft() was not used for a JPEG source"
    requested, decoded = calls[0]
    assert decoded[0] < 1200  # DCT scaling actually reduced the decode
    assert decoded[0] >= 320 and decoded[1] >= 240  # ... but never below the target

    display = _open(make_derivative(big_jpeg, DISPLAY_SIDE))
    assert display.size == (1200, 900)  # never enlarged


def test_derivative_keeps_quality_parameter(big_jpeg):
    low = make_derivative(big_jpeg, 600, quality=30)
    high = make_derivative(big_jpeg, 600, quality=95)
    assert len(low) < len(high)


def test_derivative_of_png_and_webp(png_image, webp_image):
    assert _open(make_derivative(png_image, 25)).size == (25, 15)
    assert _open(make_derivative(webp_image, 32)).size == (32, 24)


def test_derivative_of_transparent_png_is_white(rgba_png):
    im = _open(make_derivative(rgba_png, 20))
    assert im.mode == "RGB"
    assert min(im.getpixel((10, 10))) > 240


def test_derivative_of_cmyk_and_grey_jpeg():
    cmyk = _open(make_derivative(jpeg_bytes(Image.new("CMYK", (100, 50), (0, 255, 255, 0))), 50))
    assert cmyk.mode == "RGB" and cmyk.size == (50, 25)
    grey = _open(make_derivative(jpeg_bytes(Image.new("L", (100, 50), 90)), 50))
    assert grey.mode == "RGB" and grey.size == (50, 25)


def test_derivative_rejects_bad_input(truncated_jpeg, text_as_jpg, png_bomb_header):
    with pytest.raises(ImageRejected) as e:
        make_derivative(text_as_jpg, THUMB_SIDE)
    assert e.value.status == 415
    with pytest.raises(ImageRejected) as e:
        make_derivative(truncated_jpeg, THUMB_SIDE)
    assert e.value.code == "truncated_image"
    with pytest.raises(ImageRejected) as e:
        make_derivative(png_bomb_header, THUMB_SIDE)
    assert e.value.code == "decompression_bomb"


def test_a_png_is_checked_without_decoding_its_pixels(write, monkeypatch):
    """Pillow finds a PNG's EXIF by decoding the whole image unless the eXIf chunk comes first: the
    upload check must not pay that (a 15 MB PNG cost ~20 MB and ~100 ms)."""
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.format))
    info = inspect_image(write("plain.png", png_bytes(noisy_rgb(120, 90))))
    assert (info.mime, info.width, info.height, info.orientation) == ("image/png", 120, 90, None)
    assert decoded == []


def test_a_png_keeps_an_exif_chunk_that_precedes_its_pixels(write):
    info = inspect_image(write("exif.png", png_bytes(noisy_rgb(40, 30), exif=exif_block(6).tobytes())))
    assert info.orientation == 6


def test_a_png_keeps_an_xmp_orientation_that_precedes_its_pixels(write, monkeypatch):
    from PIL import PngImagePlugin

    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    meta = PngImagePlugin.PngInfo()
    meta.add_itxt("XML:com.adobe.xmp", xmp)
    path = write("xmp.png", png_bytes(noisy_rgb(40, 30), pnginfo=meta))
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.format))
    assert inspect_image(path).orientation == 6 and decoded == []


def test_jpeg_and_webp_header_parse_is_all_their_verify_does():
    """inspect_image skips verify() and a second open for these two because Pillow's verify() for
    them only closes the file. If Pillow ever gives them a real check, this fails and the skip goes."""
    plugins = {"image/jpeg": JpegImagePlugin.JpegImageFile, "image/webp": WebPImagePlugin.WebPImageFile}
    assert set(plugins) == set(imaging._HEADER_PARSE_IS_VERIFY)
    for cls in plugins.values():
        assert cls.verify is ImageFile.ImageFile.verify, cls
