"""Evaluate a network on collections that carry ground truth (cameras and ``depth/``).

    zipmap evaluate COLLECTION [COLLECTION ...] [--weights W] --json OUT.json

For each collection: the images are resized to the network's input size (width ``cfg.img_size``,
both sides multiples of the patch size), the network predicts cameras and depth (the cameras then
refined by direct image alignment, ``model.refine``, unless ``refine=False``), and the metrics
of :mod:`model.evaluation.metrics` compare them with the ground truth (predicted depth resized back
to the stored resolution; predicted world points from predicted depth and cameras). Beside it, a
trivial baseline (constant depth, identity poses) gives every number a floor. The JSON report is
``{"overall": {...}, "collections": {"<id>": {...}}, "baseline": {"overall": {...}}}``; overall
values are means over collections. A collection's images must share one size (a collection of
mixed sizes raises :class:`errors.InputError` naming it).
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from errors import InputError
from storage.collection import Collection, read_collection

from ..geometry import cameras_from_pose_encoding, world_points_from_depth
from ..refine import refine_poses
from ..zipmap import ZipMap
from .metrics import HIGHER_IS_BETTER, METRIC_KEYS, depth_metrics, pose_metrics, trajectory_and_points


def input_size(height: int, width: int, target_width: int, patch: int) -> tuple[int, int]:
    """Network input size for an image: width ``target_width``, aspect kept, multiples of ``patch``."""
    w = max(patch, round(target_width / patch) * patch)
    h = max(patch, round(height * w / width / patch) * patch)
    return h, w


@torch.no_grad()
def predict_collection(model: ZipMap, coll: Collection, refine: bool = True) -> dict[str, np.ndarray]:
    """Cameras (``cam_from_world``; with ``refine``, refined by direct image alignment, ``model.refine``),
    depth at the stored resolution and world points."""
    cfg = model.cfg
    images = coll.stacked_images()  # [S, H, W, 3]; the network takes one size per call
    H, W = images.shape[1:3]
    h, w = input_size(H, W, cfg.img_size, cfg.patch_size)
    device = next(model.parameters()).device
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    out = model(x[None].to(device))
    ext, K = cameras_from_pose_encoding(out["pose_enc"].float(), (h, w))
    depth = out["depth"][0, ..., 0].float()
    if refine:
        ext = torch.from_numpy(refine_poses(x, depth, K[0], ext[0]).cam_from_world).float().to(depth.device)[None]
    points = world_points_from_depth(depth, ext[0], K[0]).reshape(-1, 3)
    full = F.interpolate(depth[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    return {"cam_from_world": ext[0].cpu().numpy().astype(np.float64), "depth": full.cpu().numpy(),
            "points": points.cpu().numpy(), "depth_at_input": depth.cpu().numpy()}


def gt_points(coll: Collection) -> np.ndarray:
    depth = coll.stacked_depth()
    pts = world_points_from_depth(torch.from_numpy(depth).double(), torch.from_numpy(coll.cam_from_world),
                                  torch.from_numpy(coll.intrinsics))
    return pts[torch.from_numpy(depth > 0)].numpy()


def score(coll: Collection, truth_points: np.ndarray, pred_cams: np.ndarray, pred_depth: np.ndarray,
          pred_points: np.ndarray, pred_depth_median: float) -> dict[str, float]:
    depth = coll.stacked_depth()
    result = depth_metrics(pred_depth, depth)
    result.update(pose_metrics(pred_cams, coll.cam_from_world))
    result.update(trajectory_and_points(pred_cams, coll.cam_from_world, pred_points, truth_points,
                                        pred_depth_median, float(np.median(depth[depth > 0]))))
    return result


def baseline_prediction(coll: Collection) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Constant depth (the ground truth's median) and identity poses for every frame."""
    truth = coll.stacked_depth()
    S, H, W = truth.shape
    d = float(np.median(truth[truth > 0]))
    cams = np.tile(np.eye(4)[:3], (S, 1, 1))
    depth = np.full((S, H, W), d, dtype=np.float32)
    K = np.tile(coll.intrinsics[:1], (S, 1, 1))
    pts = world_points_from_depth(torch.from_numpy(depth).double(), torch.from_numpy(cams), torch.from_numpy(K))
    return cams, depth, pts.reshape(-1, 3).numpy(), d


def collection_id(url: str) -> str:
    return posixpath.basename(url.rstrip("/")) or url


def mean_over(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    out = {}
    for key in METRIC_KEYS:
        vals = [r[key] for r in rows if key in r and not math.isnan(r[key])]
        out[key] = float(np.mean(vals)) if vals else float("nan")
    return out


def evaluate(model: ZipMap, urls: Sequence[str], storage_options: Mapping[str, Any] | None = None,
             refine: bool = True) -> dict:
    collections, baseline = {}, {}
    for index, url in enumerate(urls):
        coll = read_collection(url, storage_options)
        if coll.cam_from_world is None or coll.depth is None:
            raise InputError(f"{url}: evaluation needs cameras (cameras.json, transforms.json or a COLMAP "
                             f"model) and depth/")
        pred = predict_collection(model, coll, refine)
        pred_median = float(np.median(pred["depth_at_input"]))
        cid = collection_id(url)
        if cid in collections:  # two collections with the same folder name
            cid = f"{cid}#{index}"
        truth = gt_points(coll)
        collections[cid] = score(coll, truth, pred["cam_from_world"], pred["depth"], pred["points"], pred_median)
        baseline[cid] = score(coll, truth, *baseline_prediction(coll))
    return {"overall": mean_over(list(collections.values())), "collections": collections,
            "baseline": {"overall": mean_over(list(baseline.values())), "collections": baseline}}


def format_table(report: dict) -> str:
    """A readable table: one row per collection, then overall and the baseline's overall."""
    head = ["collection", *METRIC_KEYS]
    rows = [[cid, *(m[k] for k in METRIC_KEYS)] for cid, m in report["collections"].items()]
    rows.append(["OVERALL", *(report["overall"][k] for k in METRIC_KEYS)])
    rows.append(["baseline", *(report["baseline"]["overall"][k] for k in METRIC_KEYS)])
    cells = [head] + [[r[0]] + [f"{v:.3f}" for v in r[1:]] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c[i].rjust(widths[i]) if i else c[i].ljust(widths[i]) for i in range(len(head)))
             for c in cells]
    arrows = "  ".join(("" if i == 0 else ("^" if k in HIGHER_IS_BETTER else "v")).rjust(widths[i])
                       for i, k in enumerate(head))
    return "\n".join([lines[0], arrows, *lines[1:]]) + "\n(^ higher is better, v lower is better; ate and " \
        "chamfer in units of the camera extent, fscore at 1% of it)"


def write_report(report: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=2, allow_nan=True)
