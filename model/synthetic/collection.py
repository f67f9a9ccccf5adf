"""Rendered samples in memory (``generate_sample``) and as collection folders (``write_collection``).

A collection folder (local path or any fsspec URL) holds ``images/000.png ...`` (8-bit RGB, frame
order = sorted file name), ``depth/000.npy ...`` (float32 z-depth in metres, 0 = no data) and
``cameras.json``::

    {"version": 1, "units": "m", "crs": null,
     "frames": [{"image": "images/000.png", "width": W, "height": H, "fx": .., "fy": .., "cx": .., "cy": ..,
                 "world_to_camera": [[4 x 4 row-major, last row 0 0 0 1]]}, ...]}

``world_to_camera`` is the OpenCV ``cam_from_world`` of ``render.py``.
"""

from __future__ import annotations

import io
import json

import fsspec
import numpy as np
from PIL import Image

from .paths import make_path
from .render import render
from .scene import make_scene


def generate_sample(scene_seed: int, path_kind: str, num_frames: int, height: int, width: int,
                    path_seed: int | None = None, max_orbit_step_deg: float | None = None) -> dict:
    """Render one path of one scene -> ``images [S, 3, H, W]`` float32 in [0, 1], ``depth [S, H, W]`` float32,
    ``cam_from_world [S, 3, 4]`` and ``intrinsics [S, 3, 3]`` float64. ``path_seed`` defaults to ``scene_seed``;
    ``max_orbit_step_deg``: see :func:`model.synthetic.paths.make_path`."""
    scene = make_scene(scene_seed)
    frames = make_path(scene, path_kind, num_frames, scene_seed if path_seed is None else path_seed, height, width,
                       max_orbit_step_deg=max_orbit_step_deg)
    rendered = [render(scene, cam, K, height, width) for cam, K in frames]
    return {
        "images": np.stack([rgb.transpose(2, 0, 1) for rgb, _ in rendered]),
        "depth": np.stack([depth for _, depth in rendered]),
        "cam_from_world": np.stack([cam for cam, _ in frames]),
        "intrinsics": np.stack([K for _, K in frames]),
    }


def write_collection(url_or_path: str, scene_seed: int, path_kind: str, num_frames: int, height: int, width: int,
                     storage_options: dict | None = None, path_seed: int | None = None) -> str:
    """Render a path and write it as a collection folder at ``url_or_path``; returns that location."""
    sample = generate_sample(scene_seed, path_kind, num_frames, height, width, path_seed)
    fs, root = fsspec.core.url_to_fs(url_or_path, **(storage_options or {}))
    root = root.rstrip("/")
    for sub in ("images", "depth"):
        fs.makedirs(f"{root}/{sub}", exist_ok=True)
    frames = []
    for i, (rgb, depth, cam, K) in enumerate(zip(sample["images"], sample["depth"], sample["cam_from_world"],
                                                 sample["intrinsics"])):
        png = io.BytesIO()
        Image.fromarray(np.round(rgb.transpose(1, 2, 0) * 255).astype(np.uint8), "RGB").save(png, format="PNG")
        fs.pipe_file(f"{root}/images/{i:03d}.png", png.getvalue())
        npy = io.BytesIO()
        np.save(npy, depth.astype(np.float32))
        fs.pipe_file(f"{root}/depth/{i:03d}.npy", npy.getvalue())
        frames.append({"image": f"images/{i:03d}.png", "width": width, "height": height,
                       "fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
                       "world_to_camera": np.concatenate([cam, [[0.0, 0.0, 0.0, 1.0]]]).tolist()})
    cameras = {"version": 1, "units": "m", "crs": None, "frames": frames}
    fs.pipe_file(f"{root}/cameras.json", json.dumps(cameras, indent=1).encode())
    return url_or_path
