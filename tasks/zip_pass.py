"""The zip pass: a whole collection through the network in one bidirectional pass.

- The network is loaded once per process (:func:`get_model`, cached by weights, preset and device)
  and stays on its device: CUDA with bf16 autocast when present, CPU otherwise.
- :func:`prepare_views` resizes (and, for mixed aspect ratios, centre-crops) every image to the
  network's input size and adjusts the given intrinsics to match.
- :func:`zip_collection` runs the pass; a collection too large for the device's memory runs in
  windowed streaming mode instead of failing (``max_offline_frames``, or a CUDA out-of-memory error,
  halves the window until it fits).
- :func:`refine_result` refines the predicted relative poses of neighbouring frames by direct image
  alignment with the predicted depth (``model.refine``).
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from errors import ConfigError, InputError
from model.geometry import cameras_from_pose_encoding
from model.refine import refine_poses
from model.weights import bundled_checkpoint, load_zipmap, local_copy, sha256_of
from model.zipmap import ZipMap

_MODELS: dict[tuple, ZipMap] = {}
_LOCK = threading.Lock()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def get_model(weights: str | None = None, preset: str | None = None, device: str | None = None) -> ZipMap:
    """The network for ``weights`` (default: the bundled checkpoint) on ``device``, loaded once per process."""
    weights = weights or bundled_checkpoint()
    device = device or default_device()
    key = (str(weights), preset, str(device))
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_zipmap(weights, preset, device=device).eval()
        return _MODELS[key]


@dataclass
class Views:
    """The network's view of a collection: equal-sized images and intrinsics in their pixels."""

    images: torch.Tensor  # [S, 3, h, w] float32 in [0, 1]
    intrinsics: np.ndarray | None  # [S, 3, 3] float64 (given intrinsics adjusted), None without poses
    scale: np.ndarray  # [S] resize factor per view
    crop: np.ndarray  # [S, 2] (x0, y0) crop offset per view, in resized pixels


def input_size(sizes: list[tuple[int, int]], width: int, patch: int) -> tuple[int, int]:
    """``(h, w)`` for the network: width ``width``, the median aspect ratio, sides multiples of ``patch``."""
    w = max(patch, round(width / patch) * patch)
    aspect = float(np.median([h / ww for h, ww in sizes]))
    return max(patch, round(aspect * w / patch) * patch), w


def prepare_views(images: tuple[np.ndarray, ...] | list[np.ndarray], intrinsics: np.ndarray | None, width: int,
                  patch: int) -> Views:
    """Resize each image to cover the network size (aspect kept), centre-crop, adjust intrinsics.

    Pixel centres sit at +0.5, so resizing by ``s`` maps pixel coordinates ``u -> s u`` exactly and a
    crop by ``(x0, y0)`` shifts the principal point by ``-(x0, y0)``.
    """
    if not len(images):
        raise InputError("no images to reconstruct")
    h, w = input_size([im.shape[:2] for im in images], width, patch)
    out, scales, crops = [], [], []
    for im in images:
        H, W = im.shape[:2]
        s = max(h / H, w / W)
        rh, rw = max(h, round(H * s)), max(w, round(W * s))
        x = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float().div(255)
        x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        y0, x0 = (rh - h) // 2, (rw - w) // 2
        out.append(x[0, :, y0:y0 + h, x0:x0 + w])
        scales.append((rw / W, rh / H))
        crops.append((x0, y0))
    K = None
    if intrinsics is not None:
        K = np.array(intrinsics, dtype=np.float64, copy=True)
        sc, cr = np.asarray(scales), np.asarray(crops, dtype=np.float64)
        K[:, 0, :] *= sc[:, 0, None]
        K[:, 1, :] *= sc[:, 1, None]
        K[:, 0, 2] -= cr[:, 0]
        K[:, 1, 2] -= cr[:, 1]
        K[:, 2] = (0.0, 0.0, 1.0)
    return Views(torch.stack(out), K, np.asarray(scales)[:, 0], np.asarray(crops))


@dataclass
class ZipResult:
    """The network's predictions for one collection, numpy, at the network's input size."""

    images: np.ndarray  # [S, h, w, 3] uint8 (what the network saw)
    cam_from_world: np.ndarray  # [S, 3, 4] float64, predicted, first camera = world, scene units
    intrinsics: np.ndarray  # [S, 3, 3] float64, predicted
    depth: np.ndarray  # [S, h, w] float32
    depth_conf: np.ndarray  # [S, h, w] float32
    mode: str  # "offline" or "streaming (window N)"
    device: str
    seconds: float
    info: dict = field(default_factory=dict)


def _run(model: ZipMap, x: torch.Tensor, window: int) -> dict:
    device = next(model.parameters()).device
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                                enabled=device.type == "cuda"):
        out = model(x.to(device)[None], window=window)
    return {k: v for k, v in out.items() if k in ("pose_enc", "depth", "depth_conf")}


def available_memory(device: torch.device) -> int:
    """Bytes the pass may use: free GPU memory on CUDA, ``MemAvailable`` on the host otherwise."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: do not limit


def bytes_per_frame(model: ZipMap, height: int, width: int, dtype_bytes: int = 4) -> int:
    """A deliberately generous estimate of the offline pass's memory per frame: the tokens of the
    intermediate layers the heads read, a trunk layer's working set, and the DPT maps at full size."""
    cfg = model.cfg
    tokens = (height // cfg.patch_size) * (width // cfg.patch_size) + 1 + cfg.num_register_tokens
    trunk = tokens * cfg.embed_dim * dtype_bytes * (2 * len(cfg.intermediate_layers) + 16)
    heads = height * width * cfg.dpt_features * dtype_bytes * 4
    return trunk + heads


def offline_frame_limit(model: ZipMap, height: int, width: int, available: int | None = None,
                        fraction: float = 0.5) -> int:
    """How many frames one offline pass may take on the model's device (``fraction`` of what is free)."""
    device = next(model.parameters()).device
    available = available_memory(device) if available is None else available
    dtype_bytes = 2 if device.type == "cuda" else 4
    return max(1, int(fraction * available) // bytes_per_frame(model, height, width, dtype_bytes))


def zip_collection(model: ZipMap, views: Views, max_offline_frames: int | None = None) -> ZipResult:
    """One bidirectional pass over all views; streaming windows when they do not fit in memory.

    ``max_offline_frames`` defaults to :func:`offline_frame_limit` (an estimate from free memory);
    on CUDA an out-of-memory error also halves the window and retries."""
    S = len(views.images)
    device = next(model.parameters()).device
    if max_offline_frames is None:
        max_offline_frames = offline_frame_limit(model, *views.images.shape[-2:])
    window = 0 if S <= max_offline_frames else max(1, max_offline_frames)
    t0 = time.perf_counter()
    while True:
        try:
            out = _run(model, views.images, window)
            break
        except torch.OutOfMemoryError:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            window = max(1, (window or S) // 2)
            if window == 1 and S == 1:
                raise
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    h, w = views.images.shape[-2:]
    ext, K = cameras_from_pose_encoding(out["pose_enc"].float(), (h, w))
    images = (views.images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    return ZipResult(
        images=images, cam_from_world=ext[0].double().cpu().numpy(), intrinsics=K[0].double().cpu().numpy(),
        depth=out["depth"][0, ..., 0].float().cpu().numpy(), depth_conf=out["depth_conf"][0].float().cpu().numpy(),
        mode="offline" if window == 0 else f"streaming (window {window})", device=str(device), seconds=seconds)


@functools.lru_cache(maxsize=16)
def weights_sha256(weights: str | None) -> str:
    """sha256 of a checkpoint file (remote checkpoints: of the cached local copy)."""
    return sha256_of(local_copy(weights or bundled_checkpoint()))


__all__ = ["get_model", "default_device", "prepare_views", "zip_collection", "Views", "ZipResult", "input_size",
           "weights_sha256", "offline_frame_limit", "bytes_per_frame", "available_memory"]


REFINE_MODES = ("auto", "on", "off")
FULL_REFINEMENT = (12, 12, 12, 12)  # Gauss-Newton steps per image level, 1/8 of the size to full size
# with given poses the predicted ones only feed the metric scale (their Sim(3) alignment to the given
# cameras) and the pose report; the three coarse levels get those right (scale within 2-11 % on the
# benchmark paths, the same as the full refinement) at about a quarter of the cost
COARSE_REFINEMENT = (12, 12, 6, 0)


def refinement_steps(mode: str, poses_given: bool) -> tuple[int, ...] | None:
    """Gauss-Newton steps per level for :func:`refine_result`, or None for no refinement: ``"off"``
    none, ``"on"`` the full refinement, ``"auto"`` the full one when the collection has no poses (the
    predicted poses are then the output's cameras) and the coarse one when it has."""
    if mode not in REFINE_MODES:
        raise ConfigError(f"pose refinement must be one of {REFINE_MODES}, got {mode!r}")
    if mode == "off":
        return None
    return COARSE_REFINEMENT if mode == "auto" and poses_given else FULL_REFINEMENT


def refine_result(views: Views, zr: ZipResult, steps: tuple[int, ...] = FULL_REFINEMENT) -> ZipResult:
    """``zr`` with its cameras refined (``model.refine.refine_poses`` on the network's input images,
    predicted depth and intrinsics, ``steps`` Gauss-Newton steps per level); the refinement's report
    goes to ``info["pose_refinement"]``."""
    images = torch.as_tensor(views.images).float()
    ref = refine_poses(images, zr.depth, zr.intrinsics, zr.cam_from_world, levels=len(steps), iters=tuple(steps))
    info = {**zr.info, "pose_refinement": {**ref.to_dict(), "steps_per_level": list(steps)}}
    return ZipResult(images=zr.images, cam_from_world=ref.cam_from_world, intrinsics=zr.intrinsics, depth=zr.depth,
                     depth_conf=zr.depth_conf, mode=zr.mode, device=zr.device, seconds=zr.seconds, info=info)
