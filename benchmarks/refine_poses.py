"""Pose refinement (``model.refine.refine_poses``) on collections with ground truth: quality and time.

    python benchmarks/refine_poses.py COLLECTION [COLLECTION ...] [--weights W] [--threads N]
                                      [--params '{"levels": 3, "iters": [12, 12, 12]}'] [--gt-depth]

For each collection the bundled network (or ``--weights``) predicts cameras and depth at its input
size; the refinement runs on them (``--params``: keyword arguments of ``refine_poses`` as JSON;
``--gt-depth``: with the ground-truth depth and intrinsics instead, starting from identity poses,
the refinement's own ceiling). Printed per collection and as means: RRA@15, RTA@15 and AUC@30 of
the network's poses and of the refined ones, the refinement's time (best of 3 after a warm-up) and
how many pairs took the refined pose.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.evaluation.evaluate import truth_at_views  # noqa: E402
from model.evaluation.metrics import pose_metrics  # noqa: E402
from model.inference import prepare_views, zip_collection  # noqa: E402
from model.refine import refine_poses  # noqa: E402
from model.weights import bundled_checkpoint, load_zipmap  # noqa: E402
from storage.collection import read_collection  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("collections", nargs="+")
    p.add_argument("--weights", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--params", default="{}", help="refine_poses keyword arguments as JSON")
    p.add_argument("--gt-depth", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = json.loads(args.params)
    model = load_zipmap(args.weights or bundled_checkpoint())
    model.eval()
    rows = []
    for url in args.collections:
        coll = read_collection(url)
        views = prepare_views(coll.images, coll.intrinsics, model.cfg)  # the production inference path
        x = views.images
        h, w = x.shape[-2:]
        zr = zip_collection(model, views)
        cams, K, depth = zr.cam_from_world, zr.intrinsics, zr.depth
        start = cams
        if args.gt_depth:
            depth = truth_at_views(coll.stacked_depth(), views.scale, views.crop, (h, w))
            K = views.intrinsics
            start = np.tile(np.eye(4)[:3], (len(K), 1, 1))
        refine_poses(x, depth, K, start, **params)  # warm-up (compiles the loop on a fresh machine)
        runs = [refine_poses(x, depth, K, start, **params) for _ in range(3)]
        result = min(runs, key=lambda r: r.seconds)
        row = {"collection": Path(url).name, "seconds": round(result.seconds, 4),
               "accepted": f"{int(result.accepted.sum())}/{len(result.accepted)}",
               "network": pose_metrics(cams, coll.cam_from_world),
               "refined": pose_metrics(result.cam_from_world, coll.cam_from_world)}
        rows.append(row)
        print(json.dumps({k: ({m: round(v, 3) for m, v in x.items()} if isinstance(x, dict) else x)
                          for k, x in row.items()}), flush=True)
    for which in ("network", "refined"):
        print(which, {m: round(float(np.mean([r[which][m] for r in rows])), 3) for m in rows[0][which]})
    print(f"seconds: median {np.median([r['seconds'] for r in rows]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
