"""Turn photos into the network's input: ``[S, 3, H, W]`` in [0, 1], sides multiples of 14.

Follows the published preprocessing (VGGT ``load_and_preprocess_images``, "crop" mode): each image
is resized to a width of 518 pixels keeping its aspect ratio, the height rounded to a multiple of
14, and centre-cropped to at most 518 rows. All images of one call must end up the same size.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def preprocess(image: Image.Image, width: int = 518, patch: int = 14) -> torch.Tensor:
    """One PIL image -> ``[3, H, W]`` float32 in [0, 1], width ``width``, height a multiple of ``patch``."""
    image = image.convert("RGB")
    w, h = image.size
    new_h = max(patch, round(h * width / w / patch) * patch)
    image = image.resize((width, new_h), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    if new_h > width:  # portrait: keep the central square-ish crop
        top = (new_h - width) // 2
        x = x[:, top:top + width]
    return x


def load_images(paths: Iterable[str | Path], width: int = 518) -> torch.Tensor:
    """Read and preprocess image files -> ``[S, 3, H, W]``; a bad file raises naming it."""
    tensors = []
    for path in paths:
        try:
            with Image.open(path) as im:
                tensors.append(preprocess(im, width))
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{path}: not a readable image ({exc})") from exc
    if not tensors:
        raise InputError("no images given")
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise InputError(f"images preprocess to different sizes {sorted(shapes)}; use one aspect ratio per call")
    return torch.stack(tensors)


def image_files(folder: str | Path) -> list[Path]:
    """Image files of a folder in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
