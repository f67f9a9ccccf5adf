"""The one inference path: photos (decoded ``uint8`` arrays) -> the network's predictions.

``zipmap reconstruct``, ``zipmap batch``, ``zipmap evaluate``, ``zipmap predict`` (``model.predict``)
and the benchmarks all run the network through this module:

- :func:`get_model` loads a checkpoint once per process (cached by weights, preset and device); an
  official ``.pt`` is recognised from its tensors (``model.weights.recognise_variant``).
- :func:`input_size` / :func:`prepare_views`: the one resize/crop rule, per variant from its config:
  width ``cfg.img_size`` (518 for the published variants), height from the median aspect ratio, both
  multiples of ``cfg.patch_size`` (14), at most ``cfg.img_size`` rows (the published preprocessing
  centre-crops portraits the same way); each image is resized to cover that size (aspect kept,
  antialiased) and centre-cropped, and given intrinsics are adjusted to match.
- :func:`run_network`: the one dtype policy: bf16 autocast on CUDA, the model's dtype elsewhere.
- :func:`zip_collection` runs the pass; a collection too large for the device's memory runs in
  windowed streaming mode instead of failing (``max_offline_frames``, or a CUDA out-of-memory error,
  halves the window until it fits). Streaming variants use their own window.
- :func:`refine_result` refines the predicted relative poses of neighbouring frames by direct image
  alignment with the predicted depth (``model.refine``).

Image files are decoded by the storage layer's defensive decoder (``storage.images``), never here.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from errors import ConfigError, InputError

from .config import ZipMapConfig
from .geometry import cameras_from_pose_encoding, world_points_from_cam_points
from .refine import refine_poses
from .weights import bundled_checkpoint, load_zipmap, local_copy, sha256_of
from .zipmap import ZipMap

_MODELS: dict[tuple, ZipMap] = {}
_LOCK = threading.Lock()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def get_model(weights: str | None = None, preset: str | None = None, device: str | None = None) -> ZipMap:
    """The network for ``weights`` (default: the bundled checkpoint; official ``.pt`` files are recognised,
    ``preset`` overrides that) on ``device``, loaded once per process."""
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


def input_size(sizes: Sequence[tuple[int, int]], cfg: ZipMapConfig) -> tuple[int, int]:
    """``(h, w)`` the network takes for images of ``sizes`` (``(H, W)`` each): width ``cfg.img_size``, the
    median aspect ratio, sides multiples of ``cfg.patch_size``, at most ``cfg.img_size`` rows."""
    patch = cfg.patch_size
    w = max(patch, round(cfg.img_size / patch) * patch)
    aspect = float(np.median([h / ww for h, ww in sizes]))
    h = max(patch, round(aspect * w / patch) * patch)
    return min(h, max(patch, cfg.img_size // patch * patch)), w


def prepare_views(images: Sequence[np.ndarray], intrinsics: np.ndarray | None, cfg: ZipMapConfig) -> Views:
    """Resize each ``[H, W, 3]`` uint8 image to cover :func:`input_size` (aspect kept), centre-crop, adjust
    intrinsics.

    Pixel centres sit at +0.5, so resizing by ``s`` maps pixel coordinates ``u -> s u`` exactly and a
    crop by ``(x0, y0)`` shifts the principal point by ``-(x0, y0)``.
    """
    if not len(images):
        raise InputError("no images to reconstruct")
    h, w = input_size([im.shape[:2] for im in images], cfg)
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
    pose_enc: np.ndarray | None = None  # [S, 9] float32, the network's camera encoding
    local_points: np.ndarray | None = None  # [S, h, w, 3] float32, each camera's frame (when the variant has it)
    info: dict = field(default_factory=dict)


def run_network(model: ZipMap, images: torch.Tensor, window: int | None = None) -> dict[str, torch.Tensor]:
    """One forward pass of ``[S, 3, h, w]`` images: inference mode, bf16 autocast on CUDA (the published
    numerics), the model's own dtype elsewhere. ``window``: None for the variant's own mode (offline, or
    a streaming variant's window), 0 for offline, N for windows of N frames."""
    device = next(model.parameters()).device
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                                enabled=device.type == "cuda"):
        return model(images.to(device)[None], window=window)


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


def zip_collection(model: ZipMap, views: Views, max_offline_frames: int | None = None,
                   window: int | None = None) -> ZipResult:
    """One bidirectional pass over all views; streaming windows when they do not fit in memory.

    ``max_offline_frames`` defaults to :func:`offline_frame_limit` (an estimate from free memory);
    on CUDA an out-of-memory error also halves the window and retries. ``window`` (frames; 0 =
    offline) overrides the choice; streaming variants default to their own window."""
    S = len(views.images)
    device = next(model.parameters()).device
    if window is None:
        if max_offline_frames is None:
            max_offline_frames = offline_frame_limit(model, *views.images.shape[-2:])
        own = model.cfg.default_window or 0  # streaming variants run in their own windows
        window = own if S <= max_offline_frames else max(1, min(own or max_offline_frames, max_offline_frames))
    t0 = time.perf_counter()
    while True:
        try:
            out = run_network(model, views.images, window)
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
    local = out.get("local_points")
    return ZipResult(
        images=images, cam_from_world=ext[0].double().cpu().numpy(), intrinsics=K[0].double().cpu().numpy(),
        depth=out["depth"][0, ..., 0].float().cpu().numpy(), depth_conf=out["depth_conf"][0].float().cpu().numpy(),
        mode="offline" if window == 0 else f"streaming (window {window})", device=str(device), seconds=seconds,
        pose_enc=out["pose_enc"][0].float().cpu().numpy(),
        local_points=None if local is None else local[0].float().cpu().numpy())


@functools.lru_cache(maxsize=16)
def weights_sha256(weights: str | None) -> str:
    """sha256 of a checkpoint file (remote checkpoints: of the cached local copy)."""
    return sha256_of(local_copy(weights or bundled_checkpoint()))




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
    return dataclasses.replace(zr, cam_from_world=ref.cam_from_world, info=info)


def predict(model: ZipMap, images: Sequence[np.ndarray], window: int | None = None) -> dict[str, np.ndarray]:
    """Predictions for decoded ``[H, W, 3]`` uint8 photos as numpy arrays at the network's input size:
    ``images`` ``[S, 3, h, w]`` in [0, 1], ``pose_enc``, ``cam_from_world``, ``intrinsics``, ``depth``,
    ``depth_conf``, and where the variant has them ``local_points`` and ``world_points`` (local points
    moved by the predicted cameras). ``window`` as in :func:`zip_collection`."""
    views = prepare_views(images, None, model.cfg)
    zr = zip_collection(model, views, window=window)
    result = {"images": views.images.numpy(), "pose_enc": zr.pose_enc, "cam_from_world": zr.cam_from_world,
              "intrinsics": zr.intrinsics, "depth": zr.depth, "depth_conf": zr.depth_conf}
    if zr.local_points is not None:
        result["local_points"] = zr.local_points
        world = world_points_from_cam_points(torch.from_numpy(zr.local_points)[None],
                                             torch.from_numpy(zr.cam_from_world).float()[None])
        result["world_points"] = world[0].numpy()
    return result


__all__ = ["get_model", "default_device", "input_size", "prepare_views", "run_network", "zip_collection", "predict",
           "Views", "ZipResult", "weights_sha256", "offline_frame_limit", "bytes_per_frame", "available_memory",
           "REFINE_MODES", "refinement_steps", "refine_result", "FULL_REFINEMENT", "COARSE_REFINEMENT"]
