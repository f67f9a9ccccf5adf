"""One collection end to end (read -> checks -> zip -> volume -> Zarr -> summary): time and geometry.

    python benchmarks/reconstruct.py [--frames 16] [--size 150 224] [--kinds street orbit]
                                     [--voxels 128] [--repeats 3] [--threads N] [--device cpu|cuda]
                                     [--out /tmp/zipmap-bench] [--refine-poses auto|on|off]

For each camera-path kind a held-out collection is generated (with cameras.json and ground-truth
depth), reconstructed with the bundled model through ``tasks.stages.run_reconstruction`` (the
same code as ``zipmap reconstruct``), once to warm up (model load, first-call overheads) and then
``--repeats`` times. Reported: the median wall time and its split into the network (``zip_pass``'s
forward) and everything else, per stage; and the geometry of the result: the distance from each
zero crossing of the stored TSDF to the nearest ground-truth surface point (median and 90th
percentile, in voxels), the same measure the tests apply to ground-truth depth. Each run's
non-network share and the median non-network time over the runs are reported too (on a shared VM
one slow run moves the median run's stages more than these).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import fusion  # noqa: E402
from model.evaluation.metrics import nearest_distances  # noqa: E402
from model.geometry import world_points_from_depth  # noqa: E402
from model.synthetic import write_collection  # noqa: E402
from settings import ReconstructionSettings  # noqa: E402
from storage.collection import read_collection  # noqa: E402
from storage.zarr_store import open_reconstruction  # noqa: E402
from tasks.stages import run_reconstruction  # noqa: E402


def surface_distance(src: str, store: str, max_points: int = 50000) -> tuple[float, float, float]:
    """(median, p90) distance in voxels from the TSDF's zero crossings to the true surface, and the voxel size."""
    coll = read_collection(src)
    depth = coll.stacked_depth()
    truth = world_points_from_depth(torch.from_numpy(depth).double(), torch.from_numpy(coll.cam_from_world),
                                    torch.from_numpy(coll.intrinsics))[torch.from_numpy(depth > 0)].numpy()
    vol = open_reconstruction(store)["volume"].to_dataset()
    x, y, z = vol.x.values, vol.y.values, vol.z.values
    voxel = float(vol.attrs["voxel_size"])
    grid = fusion.VolumeGrid(origin=(x[0], y[0], z[0]), voxel_size=voxel, shape=(len(z), len(y), len(x)))
    crossings = fusion.zero_crossings(vol.tsdf.values, grid, vol.weight.values)
    rng = np.random.default_rng(0)
    if len(crossings) > max_points:
        crossings = crossings[rng.choice(len(crossings), max_points, replace=False)]
    if len(truth) > 4 * max_points:
        truth = truth[rng.choice(len(truth), 4 * max_points, replace=False)]
    d = nearest_distances(crossings, truth) / voxel
    return float(np.median(d)), float(np.percentile(d, 90)), voxel


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, nargs=2, default=[150, 224], metavar=("H", "W"))
    p.add_argument("--kinds", nargs="+", default=["street", "orbit"])
    p.add_argument("--voxels", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when present")
    p.add_argument("--out", default="/tmp/zipmap-bench")
    p.add_argument("--refine-poses", choices=["auto", "on", "off"], default="auto",
                   help="pose refinement (auto: only without given poses; the generated collections have poses)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = ReconstructionSettings(max_voxels=args.voxels, device=args.device, refine_poses=args.refine_poses)
    rows = []
    for k, kind in enumerate(args.kinds):
        src = str(Path(args.out) / "collections" / f"{kind}-{1_000_000 + k}")
        if not (Path(src) / "cameras.json").exists():
            write_collection(src, 1_000_000 + k, kind, args.frames, *args.size)
        t0 = time.perf_counter()
        run_reconstruction(src, str(Path(args.out) / "out"), settings)
        cold = time.perf_counter() - t0
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            summary = run_reconstruction(src, str(Path(args.out) / "out"), settings)
            runs.append((time.perf_counter() - t0, summary))
        runs.sort(key=lambda r: r[0])
        wall, summary = runs[len(runs) // 2]
        net = summary["network_seconds"]
        med, p90, voxel = surface_distance(src, summary["output"])
        row = {"kind": kind, "frames": args.frames, "size": args.size, "volume": summary["volume"]["shape"],
               "cold_s": round(cold, 3), "wall_s": round(wall, 3), "network_s": round(net, 3),
               "non_network_share": round((wall - net) / wall, 3), "stages": summary["timings"],
               "surface_median_voxels": round(med, 3), "surface_p90_voxels": round(p90, 3),
               "voxel_size_m": round(voxel, 4), "threads": torch.get_num_threads(),
               "walls": [round(r[0], 3) for r in runs], "flagged_views": summary["pose_checks"]["num_flagged"],
               # per run, in wall order: a shared VM's noise shows as spread here
               "non_network_shares": [round((w - s["network_seconds"]) / w, 3) for w, s in runs],
               "median_non_network_s": round(statistics.median(w - s["network_seconds"] for w, s in runs), 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"median wall over kinds: {statistics.median(r['wall_s'] for r in rows):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
