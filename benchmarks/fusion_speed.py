"""Time TSDF decoding (``model.fusion.fuse_volume``) of a rendered collection on this machine.

    python benchmarks/fusion_speed.py [--frames 16] [--size 112 168] [--voxels 128] [--chunk 64]
                                      [--view-batch 8] [--device cpu] [--threads N] [--repeats 3]
                                      [--kernel auto|compiled|tensor]

A cube of ``voxels^3`` voxels around the scene's robust bounds, ``frames`` views of ground-truth
depth and colour, truncation 2 voxels. Reports the median wall time (after one warm-up) and the
share of (block, view) pairs that the frustum test skipped (tensor kernel only: the compiled CPU
loop has no blocks). ``--kernel`` picks the implementation (default: the compiled loop on the CPU,
the tensor code elsewhere).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import fusion  # noqa: E402
from model.geometry import world_points_from_depth  # noqa: E402
from model.synthetic import generate_sample  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, nargs=2, default=[112, 168])
    p.add_argument("--voxels", type=int, default=128)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--view-batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--kernel", default="auto", choices=fusion.KERNELS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sample = generate_sample(1_000_900, "orbit", args.frames, *args.size)
    depth = torch.from_numpy(sample["depth"]).to(args.device)
    colors = torch.from_numpy((sample["images"].transpose(0, 2, 3, 1) * 255).round().astype(np.uint8))
    cams, K = torch.from_numpy(sample["cam_from_world"]), torch.from_numpy(sample["intrinsics"])
    points = world_points_from_depth(depth.double().cpu(), cams, K)[depth.cpu() > 0]
    lo, hi = fusion.scene_bounds(points)
    voxel = float((hi - lo).max()) / args.voxels
    grid = fusion.VolumeGrid(origin=tuple((lo + hi) / 2 - (args.voxels - 1) / 2 * voxel), voxel_size=voxel,
                             shape=(args.voxels,) * 3)

    pairs = {"visible": 0, "all": 0}
    visible_views = fusion._visible_views

    def counting(views, *rest):
        keep = visible_views(views, *rest)
        pairs["visible"] += len(keep)
        pairs["all"] += len(views.R)
        return keep

    def run():
        fusion.fuse_volume(grid, depth, None, colors, cams, K, truncation=2 * voxel, chunk=args.chunk,
                           view_batch=args.view_batch, on_chunk=lambda region, arrays: None, kernel=args.kernel)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    run()
    fusion._visible_views = counting
    try:
        run()
    finally:
        fusion._visible_views = visible_views
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    print(f"{args.voxels}^3 voxels ({voxel:.3f} m), {args.frames} views {args.size[0]}x{args.size[1]}, "
          f"chunk {args.chunk}, view_batch {args.view_batch}, {args.device}, kernel {args.kernel}, "
          f"torch threads {torch.get_num_threads()}: median {statistics.median(times):.3f} s over {args.repeats}"
          + (f"; frustum test skipped {1 - pairs['visible'] / pairs['all']:.0%} of (block, view) pairs"
             if pairs["all"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
