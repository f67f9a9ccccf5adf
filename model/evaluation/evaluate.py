"""Evaluate a network on collections that carry ground truth (cameras and ``depth/``).

    zipmap evaluate COLLECTION [COLLECTION ...] [--weights W] --json OUT.json

For each collection (read by the caller; this module takes arrays): the production inference path
(:mod:`model.inference`: the variant's resize/crop rule, its dtype policy, streaming when memory is
short) predicts cameras and depth, the cameras are refined by direct image alignment
(``model.refine``) unless ``refine=False``, and the metrics of :mod:`model.evaluation.metrics`
compare them with the ground truth (depth at the network's pixels, the stored depth sampled there;
predicted world points from predicted depth, cameras and intrinsics). Beside it, a
trivial baseline (constant depth, identity poses) gives every number a floor. The JSON report is
``{"overall": {...}, "collections": {"<id>": {...}}, "baseline": {"overall": {...}}}``; overall
values are means over collections. A collection's images must share one size (a collection of
mixed sizes raises :class:`errors.InputError` naming it).
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np
import torch

from errors import InputError

from ..geometry import world_points_from_depth
from ..inference import FULL_REFINEMENT, prepare_views, refine_result, zip_collection
from ..zipmap import ZipMap
from .metrics import HIGHER_IS_BETTER, METRIC_KEYS, depth_metrics, pose_metrics, trajectory_and_points


class GroundTruthCollection(Protocol):
    """What evaluation reads of a collection (``storage.collection.Collection`` has it): decoded images,
    given cameras and depth maps, all plain arrays."""

    url: str
    images: Sequence[np.ndarray]  # [H, W, 3] uint8 each
    intrinsics: np.ndarray | None  # [S, 3, 3]
    cam_from_world: np.ndarray | None  # [S, 3, 4]
    depth: Sequence[np.ndarray] | None  # [H, W] float32 each, 0 = no data

    def stacked_depth(self) -> np.ndarray: ...


def truth_at_views(depth: np.ndarray, scale: np.ndarray, crop: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Ground-truth depth ``[S, H, W]`` sampled (nearest) at the pixel centres of the network's views (each
    resized by ``scale`` and cropped at ``crop``, as :func:`model.inference.prepare_views` made them)."""
    h, w = hw
    S, H, W = depth.shape
    out = np.empty((S, h, w), dtype=depth.dtype)
    for k in range(S):
        s = float(scale[k])  # the aspect is kept: one factor for both axes
        rows = np.clip(np.floor((np.arange(h) + 0.5 + crop[k, 1]) / s), 0, H - 1).astype(int)
        cols = np.clip(np.floor((np.arange(w) + 0.5 + crop[k, 0]) / s), 0, W - 1).astype(int)
        out[k] = depth[k][rows[:, None], cols[None, :]]
    return out


@torch.no_grad()
def predict_collection(model: ZipMap, coll: GroundTruthCollection, refine: bool = True) -> dict[str, np.ndarray]:
    """The production inference path (:mod:`model.inference`): cameras (``cam_from_world``; with ``refine``,
    refined by direct image alignment), depth at the network's input size, the ground truth's depth sampled
    at the same pixels, and predicted world points."""
    views = prepare_views(coll.images, coll.intrinsics, model.cfg)
    zr = zip_collection(model, views)
    if refine:
        zr = refine_result(views, zr, FULL_REFINEMENT)
    depth = torch.from_numpy(zr.depth)
    points = world_points_from_depth(depth, torch.from_numpy(zr.cam_from_world).float(),
                                     torch.from_numpy(zr.intrinsics).float()).reshape(-1, 3)
    truth = truth_at_views(coll.stacked_depth(), views.scale, views.crop, zr.depth.shape[-2:])
    return {"cam_from_world": zr.cam_from_world, "depth": zr.depth, "truth_depth": truth, "points": points.numpy()}


def gt_points(coll: GroundTruthCollection) -> np.ndarray:
    depth = coll.stacked_depth()
    pts = world_points_from_depth(torch.from_numpy(depth).double(), torch.from_numpy(coll.cam_from_world),
                                  torch.from_numpy(coll.intrinsics))
    return pts[torch.from_numpy(depth > 0)].numpy()


def score(coll: GroundTruthCollection, truth_points: np.ndarray, pred_cams: np.ndarray, pred_depth: np.ndarray,
          pred_points: np.ndarray, pred_depth_median: float, truth_depth: np.ndarray | None = None) -> dict[str, float]:
    """Depth metrics against ``truth_depth`` (default: the stored depth; same shape as ``pred_depth``), pose
    metrics against the given cameras, trajectory and point-cloud metrics against ``truth_points``."""
    depth = coll.stacked_depth()
    result = depth_metrics(pred_depth, depth if truth_depth is None else truth_depth)
    result.update(pose_metrics(pred_cams, coll.cam_from_world))
    result.update(trajectory_and_points(pred_cams, coll.cam_from_world, pred_points, truth_points,
                                        pred_depth_median, float(np.median(depth[depth > 0]))))
    return result


def baseline_prediction(coll: GroundTruthCollection) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
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


def evaluate(model: ZipMap, collections: Iterable[GroundTruthCollection], refine: bool = True) -> dict:
    """Score ``model`` on collections read by the caller (``storage.collection.read_collection``), one at a
    time: an iterable (a generator reads the next only when the last is scored)."""
    scored, baseline = {}, {}
    for index, coll in enumerate(collections):
        url = coll.url
        if coll.cam_from_world is None or coll.depth is None:
            raise InputError(f"{url}: evaluation needs cameras (cameras.json, transforms.json or a COLMAP "
                             f"model) and depth/")
        pred = predict_collection(model, coll, refine)
        pred_median = float(np.median(pred["depth"]))
        cid = collection_id(url)
        if cid in scored:  # two collections with the same folder name
            cid = f"{cid}#{index}"
        truth = gt_points(coll)
        scored[cid] = score(coll, truth, pred["cam_from_world"], pred["depth"], pred["points"], pred_median,
                            pred["truth_depth"])
        baseline[cid] = score(coll, truth, *baseline_prediction(coll))
    return {"overall": mean_over(list(scored.values())), "collections": scored,
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
