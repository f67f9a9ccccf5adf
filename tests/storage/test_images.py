"""storage.images.decode_image: colour modes, EXIF orientation, and bad files named with the reason."""

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from errors import InputError
from storage.images import DEFAULT_MAX_PIXELS, decode_image

H, W = 28, 42


def encode(im: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def quadrants() -> np.ndarray:
    """uint8 [H, W, 3] with four flat colours, so orientation and lossy codecs are easy to check."""
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:H // 2, :W // 2] = (255, 0, 0)
    rgb[:H // 2, W // 2:] = (0, 255, 0)
    rgb[H // 2:, :W // 2] = (0, 0, 255)
    rgb[H // 2:, W // 2:] = (255, 255, 0)
    return rgb


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_header_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims ``width x height`` RGB pixels but holds almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + png_chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------- good files


def test_rgb_png_round_trip_and_info():
    rgb = quadrants()
    data = encode(Image.fromarray(rgb))
    out, info = decode_image(data, "x/a.png")
    assert out.dtype == np.uint8 and out.shape == (H, W, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)
    assert info == {"width": W, "height": H, "format": "PNG", "mode": "RGB", "file_size": len(data),
                    "exif_orientation": 1, "exif_transposed": False, "raw_width": W, "raw_height": H}


@pytest.mark.parametrize("orientation, rotate", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_is_applied(orientation, rotate):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(quadrants()), "JPEG", quality=95, exif=exif)
    out, info = decode_image(data, "x/p.jpg")
    expected = np.rot90(quadrants(), k=rotate)  # np.rot90: k > 0 anticlockwise; orientation 6 = turn clockwise
    assert out.shape == expected.shape
    assert info["exif_orientation"] == orientation and info["exif_transposed"]
    assert (info["raw_width"], info["raw_height"]) == (W, H) and (info["width"], info["height"]) == out.shape[1::-1]
    assert_same_picture(out, expected)
    raw, raw_info = decode_image(data, "x/p.jpg", apply_exif=False)
    assert raw.shape == (H, W, 3) and not raw_info["exif_transposed"]
    assert_same_picture(raw, quadrants())


def assert_same_picture(out: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to JPEG loss: the corners (inside the flat quadrants) match closely, edges may blur."""
    for y, x in ((3, 3), (3, -4), (-4, 3), (-4, -4)):
        assert np.abs(out[y, x].astype(int) - expected[y, x]).max() <= 12, (y, x, out[y, x], expected[y, x])
    assert np.mean(np.abs(out.astype(int) - expected).max(-1) > 60) < 0.2


def test_grey_and_one_bit():
    grey = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    out, info = decode_image(encode(Image.fromarray(grey, "L")), "g.png")
    assert info["mode"] == "L"
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, 2))
    bits = Image.fromarray(grey > 100).convert("1")
    out, info = decode_image(encode(bits), "b.png")
    assert info["mode"] == "1"
    np.testing.assert_array_equal(out[..., 0], np.where(grey > 100, 255, 0))


def test_sixteen_bit_grey_is_scaled_not_clipped():
    v = np.array([[0, 1, 128, 129, 257, 1000, 32896, 65280, 65534, 65535]], np.uint16)
    out, info = decode_image(encode(Image.fromarray(v)), "d.png")
    assert info["mode"] == "I;16"
    np.testing.assert_array_equal(out[..., 0], np.round(v * 255.0 / 65535).astype(np.uint8))
    assert out[0, -1, 0] == 255 and out[0, 6, 0] == 128 and (out[..., 0] == out[..., 2]).all()


def test_thirty_two_bit_int_and_float_grey():
    ints = np.array([[-5, 0, 257, 65535, 100000]], np.int32)
    out, info = decode_image(encode(Image.fromarray(ints, "I"), "TIFF"), "i.tif")
    assert info["mode"] == "I"
    np.testing.assert_array_equal(out[0, :, 1], [0, 0, 1, 255, 255])
    floats = np.array([[-1.0, 0.0, 0.5, 1.0, 7.0, np.nan]], np.float32)
    out, info = decode_image(encode(Image.fromarray(floats, "F"), "TIFF"), "f.tif")
    assert info["mode"] == "F"
    np.testing.assert_array_equal(out[0, :, 2], [0, 0, 128, 255, 255, 0])


def test_alpha_is_composited_over_white():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0] = [(200, 100, 50, 255), (200, 100, 50, 128), (200, 100, 50, 0)]
    rgba[1] = [(0, 0, 0, 255), (0, 0, 0, 1), (10, 20, 30, 254)]
    out, info = decode_image(encode(Image.fromarray(rgba, "RGBA")), "a.png")
    assert info["mode"] == "RGBA"
    a = rgba[..., 3:].astype(float) / 255
    np.testing.assert_array_equal(out, np.round(rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8))
    assert out[0, 0].tolist() == [200, 100, 50] and out[0, 2].tolist() == [255, 255, 255]
    la = Image.fromarray(np.stack([np.full((2, 2), 40, np.uint8), np.array([[255, 0], [51, 204]], np.uint8)], -1),
                         "LA")
    out, info = decode_image(encode(la), "la.png")
    assert info["mode"] == "LA"
    np.testing.assert_array_equal(out[..., 0], [[40, 255], [212, 83]])  # 40 a + 255 (1 - a), a = 0.2 / 0.8


def test_palette_with_and_without_transparency():
    p = Image.fromarray(np.array([[0, 1, 2, 1]], np.uint8), "P")
    p.putpalette([10, 20, 30, 200, 150, 100, 0, 0, 255] + [0] * (256 - 3) * 3)
    out, info = decode_image(encode(p), "p.png")
    assert info["mode"] == "P"
    np.testing.assert_array_equal(out[0], [[10, 20, 30], [200, 150, 100], [0, 0, 255], [200, 150, 100]])
    out, _ = decode_image(encode(p, transparency=1), "pt.png")  # palette entry 1 fully transparent
    np.testing.assert_array_equal(out[0], [[10, 20, 30], [255, 255, 255], [0, 0, 255], [255, 255, 255]])


def test_cmyk_jpeg():
    cmyk = np.zeros((16, 32, 4), np.uint8)
    cmyk[:, 16:] = (255, 0, 0, 0)  # cyan on the right, white (no ink) on the left
    out, info = decode_image(encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95), "c.jpg")
    assert info["mode"] == "CMYK" and out.shape == (16, 32, 3)
    assert np.abs(out[4:12, 2:12].astype(int) - [255, 255, 255]).max() <= 3
    assert np.abs(out[4:12, 20:30].astype(int) - [0, 255, 255]).max() <= 3


def test_ycbcr_tiff_and_lab_rejected():
    ycc = Image.new("YCbCr", (4, 2), (76, 85, 255))  # pure red in JPEG's YCbCr
    out, info = decode_image(encode(ycc, "TIFF"), "y.tif")
    assert info["mode"] == "YCbCr" and np.abs(out[0, 0].astype(int) - [255, 0, 0]).max() <= 2
    with pytest.raises(InputError, match=r"^l\.tif: unsupported colour mode 'LAB'$"):
        decode_image(encode(Image.new("LAB", (4, 2)), "TIFF"), "l.tif")


def test_pil_global_limit_is_neither_relied_on_nor_changed(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow alone would refuse a 28 x 42 image
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        out, _ = decode_image(encode(Image.fromarray(quadrants())), "big.png")
    assert out.shape == (H, W, 3)
    assert Image.MAX_IMAGE_PIXELS == 100 and ImageFile.LOAD_TRUNCATED_IMAGES is False


# ---------------------------------------------------------------------------------------------- bad files


def test_empty_file():
    with pytest.raises(InputError, match=r"^s3://b/c/images/a\.png: empty file$"):
        decode_image(b"", "s3://b/c/images/a.png")


@pytest.mark.parametrize("data", [b"not a png at all", b"\0" * 64, b"<html>hello</html>"])
def test_not_an_image(data):
    with pytest.raises(InputError, match=r"^c/images/a\.png: not an image "):
        decode_image(data, "c/images/a.png")


@pytest.mark.parametrize("fmt, cut", [("PNG", 12), ("PNG", 100), ("PNG", 0.5), ("PNG", 0.9),
                                      ("JPEG", 2), ("JPEG", 100), ("JPEG", 0.5), ("JPEG", 0.9)])
def test_truncated(fmt, cut):
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), np.uint8)), fmt)
    keep = len(data) - cut if isinstance(cut, int) else int(len(data) * cut)
    with pytest.raises(InputError, match=r"^c/x\.img: truncated or corrupt image \(" + fmt):
        decode_image(data[:keep], "c/x.img")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_header_and_bad_checksum():
    data = encode(Image.fromarray(quadrants()))
    with pytest.raises(InputError, match=r"^h\.png: truncated or corrupt image \(bad PNG header"):
        decode_image(data[:20], "h.png")
    broken = bytearray(data)
    at = data.index(b"IDAT") + 10
    broken[at] ^= 0xFF
    with pytest.raises(InputError, match=r"^h\.png: truncated or corrupt image \(PNG"):
        decode_image(bytes(broken), "h.png")


def test_decompression_bomb_by_limit():
    with pytest.raises(InputError, match=r"^s3://b/x\.png: image of 42 x 28 pixels exceeds the limit of 1000 pixels "
                                         r"\(decompression bomb\?\)$"):
        decode_image(encode(Image.fromarray(quadrants())), "s3://b/x.png", max_pixels=1000)
    out, _ = decode_image(encode(Image.fromarray(quadrants())), "s3://b/x.png", max_pixels=H * W)
    assert out.shape == (H, W, 3)


def test_decompression_bomb_from_a_crafted_header():
    data = png_header_claiming(100_000, 100_000)
    assert len(data) < 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=rf"^bomb\.png: image of 100000 x 100000 pixels exceeds the limit of "
                                             rf"{DEFAULT_MAX_PIXELS} pixels \(decompression bomb\?\)$"):
            decode_image(data, "bomb.png")
    # A header within the limit that lies about its data is caught by the full decode.
    with pytest.raises(InputError, match=r"^small\.png: truncated or corrupt image"):
        decode_image(png_header_claiming(64, 64), "small.png")
