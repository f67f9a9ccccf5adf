"""Run the network on photos and save its predictions.

    python -m model.predict --checkpoint checkpoint_aff_inv.pt --preset main \\
        --images photos/ --out predictions.npz [--device cuda] [--window 1] [--ema]

Writes one ``.npz`` with ``pose_enc`` ``[S, 9]``, ``cam_from_world`` ``[S, 3, 4]``, ``intrinsics``
``[S, 3, 3]``, ``depth`` ``[S, H, W]``, ``depth_conf``, ``local_points`` ``[S, H, W, 3]``,
``world_points`` ``[S, H, W, 3]`` (local points moved by the predicted cameras) and ``images``.
``--checkpoint`` takes any fsspec URL (local path, ``s3://``, ``https://``); without it the bundled
checkpoint is used. ``--random-init`` runs the architecture with random weights (smoke tests and
timing only); ``--demo`` generates a few images instead of reading them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .config import get_config
from .geometry import cameras_from_pose_encoding, world_points_from_cam_points
from .images import image_files, load_images
from .weights import bundled_checkpoint, load_zipmap
from .zipmap import ZipMap


def demo_images(n: int = 6, height: int = 196, width: int = 280, seed: int = 0) -> torch.Tensor:
    """Smooth random colour fields, ``[n, 3, height, width]`` (stand-ins when no photos are given)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 6, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic").clamp(0, 1)


def predict(model: ZipMap, images: torch.Tensor, window: int | None = None) -> dict[str, np.ndarray]:
    """Predictions of one collection ``[S, 3, H, W]`` as numpy arrays (batch axis dropped)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(images.to(device)[None], window=window)
    H, W = images.shape[-2:]
    result = {"images": images.numpy()}
    if "pose_enc" in out:
        ext, K = cameras_from_pose_encoding(out["pose_enc"].float(), (H, W))
        result.update(pose_enc=out["pose_enc"][0], cam_from_world=ext[0], intrinsics=K[0])
        if "local_points" in out:
            result["world_points"] = world_points_from_cam_points(out["local_points"].float(), ext)[0]
    for key in ("depth", "depth_conf", "local_points"):
        if key in out:
            result[key] = out[key][0]
    if "depth" in result:
        result["depth"] = result["depth"][..., 0]
    return {k: (v.float().cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in result.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.predict", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="checkpoint URL (.pt or .safetensors; default: the bundled model)")
    p.add_argument("--preset", default=None, help="main, ref_view, streaming, state_query, small, ... "
                   "(default: read the JSON config beside a .safetensors checkpoint)")
    p.add_argument("--images", nargs="*", default=[], help="image files or one folder")
    p.add_argument("--out", default="predictions.npz")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--window", type=int, default=None, help="streaming window in frames (0 = offline)")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--random-init", action="store_true", help="no checkpoint: random weights (smoke test)")
    p.add_argument("--demo", action="store_true", help="generate images instead of reading them")
    args = p.parse_args(argv)

    if args.random_init:
        torch.manual_seed(0)
        model = ZipMap(get_config(args.preset or "small")).to(args.device).eval()
        print("warning: random weights, predictions are meaningless", file=sys.stderr)
    else:
        checkpoint = args.checkpoint or bundled_checkpoint()
        model = load_zipmap(checkpoint, args.preset, device=args.device, use_ema=args.ema)
    if args.demo:
        images = demo_images()
    elif len(args.images) == 1 and Path(args.images[0]).is_dir():
        images = load_images(image_files(args.images[0]))
    else:
        images = load_images(args.images)
    t0 = time.perf_counter()
    result = predict(model, images, args.window)
    elapsed = time.perf_counter() - t0
    np.savez_compressed(args.out, **result)
    print(f"{len(images)} frames {tuple(images.shape[-2:])} on {args.device} in {elapsed:.2f}s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
