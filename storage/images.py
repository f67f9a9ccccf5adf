"""Defensive image decoding: bytes from an untrusted collection -> uint8 ``[H, W, 3]`` RGB.

:func:`decode_image` is the one door through which collection images enter the product. It

- names the file (``where``) and the reason in every :class:`errors.InputError`: an empty file, bytes
  that are not an image of an accepted format, a truncated or corrupt image, or a decompression bomb;
- checks ``width * height`` from the header *before* any pixel is decoded, against the caller's
  ``max_pixels``. Pillow's own process-wide limit (``Image.MAX_IMAGE_PIXELS``, a warning then an error)
  is neither relied on nor changed: the header is read through the format plugins registered with
  Pillow (``Image.OPEN``), the lookup ``Image.open`` itself performs, minus its global check;
- forces a full decode (``load()``, plus ``verify()`` for PNG, whose decoder stops at the last image
  row and would not notice a missing ``IEND``), so a truncated file fails here and not later.
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never touched (it stays ``False``);
- applies the EXIF orientation (the transposition table of ``PIL.ImageOps.exif_transpose``) unless
  the caller asks for the raw pixel grid (``apply_exif=False``, see ``storage.collection``);
- converts every colour mode to 8-bit RGB:

  ===================  ==========================================================================
  mode                 conversion
  ===================  ==========================================================================
  RGB                  as is
  1, L                 grey copied to R, G and B (1-bit: 0 or 255)
  I;16, I;16L/B/N      16-bit grey, scaled ``round(v * 255 / 65535)`` (not clipped, not the high byte);
                       a transparency key on 16-bit grey is ignored
  I                    32-bit integer grey, read as 16-bit data (Pillow's mode for some 16-bit
                       files): clipped to 0..65535, then scaled as above
  F                    32-bit float grey, read as intensities in [0, 1]: ``round(v * 255)``,
                       clipped; NaN -> 0
  LA, RGBA, PA, La,    alpha composited over white (``c * a + 255 * (1 - a)``), the convention of
  RGBa, P/L/RGB with   nerfstudio's Blender-synthetic scenes; the colour under a transparent pixel
  a transparency key   is undefined, so dropping alpha would expose arbitrary values. A fully
                       opaque alpha channel gives the same pixels as dropping it.
  P                    palette lookup
  CMYK, YCbCr, RGBX    Pillow's conversion to RGB (CMYK naively, without an ICC profile)
  LAB, HSV, others     rejected: Pillow has no faithful conversion to RGB for them
  ===================  ==========================================================================

  Colour-managed conversion (ICC profiles) is not done: pixel values are taken as sRGB. 16-bit
  *colour* PNGs reach us already reduced to 8 bits by Pillow.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import (  # noqa: F401 -- importing a plugin registers its format in Image.OPEN
    BmpImagePlugin,
    Image,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from errors import InputError

# 16384 x 16384: above 200-megapixel phone sensors and 150-megapixel aerial cameras; an RGB image of
# this size takes 805 MB decoded, so a larger "photo" in a collection is more likely an attack.
DEFAULT_MAX_PIXELS = 16384 * 16384

# Formats tried, in this order; MPO (multi-picture JPEG from phones) arrives through the JPEG plugin.
FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "BMP")

# EXIF orientation -> the transposition that shows the image upright (as PIL.ImageOps.exif_transpose).
EXIF_ORIENTATION_TAG = 0x0112
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SWAPS_AXES = frozenset({5, 6, 7, 8})  # orientations whose upright image is the raw one transposed

# What Pillow's decoders raise on bad data (zlib.error from PNG streams, struct.error from headers).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error,
                 zlib.error, Image.DecompressionBombError)
GREY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
CONVERTIBLE_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr")


def open_header(data: bytes, where: str) -> Image.Image:
    """Identify the format and read the header only (no pixels), without Pillow's global pixel limit."""
    prefix = data[:16]
    for name in FORMATS:
        factory, accept = Image.OPEN[name]
        if accept is not None:
            verdict = accept(prefix)
            if isinstance(verdict, str) or not verdict:  # a str is Pillow's "looks like it, but unsupported"
                continue
        try:
            return factory(io.BytesIO(data), "")
        except DECODE_ERRORS as exc:
            raise InputError(f"{where}: truncated or corrupt image (bad {name} header: {exc})") from exc
    raise InputError(f"{where}: not an image (starts with {data[:8]!r}; expected one of {', '.join(FORMATS)})")


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8) of a loaded image; 1 when absent, unreadable or out of range."""
    try:
        value = im.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except DECODE_ERRORS:  # a broken EXIF block must not cost the picture
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)


def composite_over_white(rgba: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 4]`` -> uint8 ``[H, W, 3]``, ``round(c * a / 255 + 255 * (1 - a / 255))``."""
    a = rgba[..., 3:].astype(np.uint32)
    c = rgba[..., :3].astype(np.uint32)
    return ((c * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def to_rgb(im: Image.Image, where: str) -> np.ndarray:
    """A loaded Pillow image of any mode -> uint8 ``[H, W, 3]`` (table in the module docstring)."""
    mode = im.mode
    if mode in GREY16_MODES or mode == "I":
        v = np.asarray(im).astype(np.int64)
        if mode == "I":
            v = np.clip(v, 0, 65535)
        return grey_to_rgb((v + 128) // 257)  # == round(v / 257) == round(v * 255 / 65535); no ties exist
    if mode == "F":
        v = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        return grey_to_rgb(np.clip(np.rint(v * 255.0), 0, 255))
    if mode == "La":  # premultiplied; Pillow converts it to LA only
        im = im.convert("LA")
    if mode in ALPHA_MODES or (mode in CONVERTIBLE_MODES and "transparency" in im.info):
        return composite_over_white(np.asarray(im.convert("RGBA")))
    if mode not in CONVERTIBLE_MODES:
        raise InputError(f"{where}: unsupported colour mode {mode!r}")
    return np.array(im.convert("RGB"))


def decode_image(data: bytes, where: str, max_pixels: int = DEFAULT_MAX_PIXELS, apply_exif: bool = True,
                 ) -> tuple[np.ndarray, dict]:
    """Decode one image file's bytes -> (uint8 ``[H, W, 3]`` RGB, info).

    ``where`` (the file's path or URL) starts every error message. ``info`` holds ``width`` and
    ``height`` (of the returned array), ``format`` (Pillow's: PNG, JPEG, MPO, ...), ``mode`` (the
    file's Pillow mode before conversion), ``file_size`` (bytes), ``exif_orientation`` (1..8),
    ``exif_transposed`` (whether the array was transposed for it) and ``raw_width``/``raw_height``
    (the stored pixel grid, before orientation). ``apply_exif=False`` returns the stored grid.
    """
    if not data:
        raise InputError(f"{where}: empty file")
    im = open_header(data, where)
    width, height = im.size
    if width <= 0 or height <= 0:
        raise InputError(f"{where}: truncated or corrupt image (header says {width} x {height} pixels)")
    if width * height > max_pixels:
        raise InputError(f"{where}: image of {width} x {height} pixels exceeds the limit of {max_pixels} "
                         f"pixels (decompression bomb?)")
    fmt, mode = im.format, im.mode
    try:
        if fmt == "PNG":  # walks every chunk and its CRC up to IEND; needs its own freshly opened image
            open_header(data, where).verify()
        im.load()
    except DECODE_ERRORS as exc:
        raise InputError(f"{where}: truncated or corrupt image ({fmt}: {exc})") from exc
    orientation = exif_orientation(im)
    transposed = apply_exif and orientation in ORIENTATION_TRANSPOSE
    if transposed:
        im = im.transpose(ORIENTATION_TRANSPOSE[orientation])
    rgb = to_rgb(im, where)
    info = {"width": rgb.shape[1], "height": rgb.shape[0], "format": fmt, "mode": mode, "file_size": len(data),
            "exif_orientation": orientation, "exif_transposed": transposed, "raw_width": width,
            "raw_height": height}
    return rgb, info


PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def read_photos(paths: list[str], storage_options: dict | None = None) -> tuple[list[str], list[np.ndarray]]:
    """Loose photos (files, or one folder of them, local or any fsspec URL) decoded by :func:`decode_image`:
    ``(names, [H, W, 3] uint8 arrays)`` in the given order (a folder: sorted file name)."""
    import posixpath

    from .urls import filesystem

    if not paths:
        raise InputError("no images given")
    fs, first = filesystem(paths[0], storage_options)
    if len(paths) == 1 and fs.isdir(first):
        files = sorted(p for p in fs.ls(first, detail=False) if posixpath.splitext(p)[1].lower() in PHOTO_SUFFIXES)
        if not files:
            raise InputError(f"{paths[0]}: no image files ({', '.join(PHOTO_SUFFIXES)})")
        where = [posixpath.join(paths[0].rstrip("/"), posixpath.basename(p)) for p in files]
    else:
        files, where = [filesystem(p, storage_options)[1] for p in paths], list(paths)
    images = []
    for path, name in zip(files, where):
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            raise InputError(f"{name}: missing") from None
        images.append(decode_image(data, name)[0])
    return [posixpath.basename(w) for w in where], images
