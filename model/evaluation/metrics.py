"""Reconstruction metrics: depth, relative pose, trajectory and point-cloud accuracy.

All functions take numpy arrays and return plain floats. Conventions as everywhere in the project:
``cam_from_world`` extrinsics ``[S, 3, 4]`` (OpenCV axes), depth ``[S, H, W]`` with 0 or non-finite
meaning "no data".

- Depth (after Eigen et al.; scale-ambiguous predictions aligned by one median ratio per
  collection): AbsRel = mean |s d - d*| / d*, delta1 = fraction with max(s d / d*, d* / s d) < 1.25.
- Relative pose over all ordered view pairs (as in VGGT / PoseDiffusion evaluations): rotation
  error of ``R_j R_i^T``, translation-direction error of the relative translation (sign-agnostic),
  RRA@15 / RTA@15 = fraction under 15 degrees, AUC@30 = mean over 1..30 degree thresholds of the
  fraction whose larger error is under the threshold.
- ATE: RMSE of camera centres after a Sim(3) Umeyama alignment, divided by the scene's camera
  extent (diagonal of the bounding box of the ground-truth camera centres).
- Chamfer distance and F-score of predicted world points against ground-truth points after the
  same alignment, in units of the camera extent; F-score at 1% of it.
"""

from __future__ import annotations

import numpy as np
import torch

AUC_MAX_DEG = 30


# ---------------------------------------------------------------------------------------------
# depth
def depth_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """AbsRel and delta<1.25 after one median scale for the whole collection ``[S, H, W]``."""
    valid = np.isfinite(gt) & (gt > 0) & np.isfinite(pred) & (pred > 0)
    if not valid.any():
        return {"depth_abs_rel": float("nan"), "depth_delta1": float("nan")}
    p, g = pred[valid].astype(np.float64), gt[valid].astype(np.float64)
    p = p * (np.median(g) / np.median(p))
    ratio = np.maximum(p / g, g / p)
    return {"depth_abs_rel": float(np.mean(np.abs(p - g) / g)), "depth_delta1": float(np.mean(ratio < 1.25))}


# ---------------------------------------------------------------------------------------------
# relative pose
def _angle_deg(cos: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def relative_pose_errors(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation and translation-direction errors (degrees) over all pairs ``i < j``."""
    S = len(gt)
    i, j = np.triu_indices(S, k=1)

    def relative(T):
        R, t = T[:, :3, :3], T[:, :3, 3]
        R_rel = R[j] @ np.transpose(R[i], (0, 2, 1))  # maps camera i's frame to camera j's
        t_rel = t[j] - np.einsum("nab,nb->na", R_rel, t[i])
        return R_rel, t_rel

    Rp, tp = relative(pred.astype(np.float64))
    Rg, tg = relative(gt.astype(np.float64))
    r_err = _angle_deg((np.trace(Rp @ np.transpose(Rg, (0, 2, 1)), axis1=1, axis2=2) - 1) / 2)
    norms = np.linalg.norm(tp, axis=1) * np.linalg.norm(tg, axis=1)
    cos = np.abs(np.sum(tp * tg, axis=1)) / np.maximum(norms, 1e-12)  # sign-agnostic direction
    t_err = np.where(norms > 1e-12, _angle_deg(cos), 90.0)
    return r_err, t_err


def pose_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    if len(gt) < 2:
        return {"rra_15": float("nan"), "rta_15": float("nan"), "auc_30": float("nan")}
    r_err, t_err = relative_pose_errors(pred, gt)
    worst = np.maximum(r_err, t_err)
    auc = np.mean([np.mean(worst < t) for t in range(1, AUC_MAX_DEG + 1)])
    return {"rra_15": float(np.mean(r_err < 15)), "rta_15": float(np.mean(t_err < 15)), "auc_30": float(auc)}


# ---------------------------------------------------------------------------------------------
# alignment, trajectory and points
def camera_centres(cam_from_world: np.ndarray) -> np.ndarray:
    R, t = cam_from_world[:, :3, :3], cam_from_world[:, :3, 3]
    return -np.einsum("nba,nb->na", R, t)  # -R^T t


def umeyama_sim3(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares ``s, R, t`` with ``dst ~ s R src + t`` (Umeyama 1991) for ``[N, 3]`` points."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    U, D, Vt = np.linalg.svd(cov)
    E = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        E[2, 2] = -1
    R = U @ E @ Vt
    var = (xs ** 2).sum() / len(src)
    s = float(np.trace(np.diag(D) @ E) / var) if var > 0 else 1.0
    return s, R, mu_d - s * R @ mu_s


def alignment_points(cam_from_world: np.ndarray, depth_scale: float) -> np.ndarray:
    """Camera centres plus one point ``depth_scale`` along each optical axis.

    Aligning these instead of the centres alone pins down the rotation for camera paths whose
    centres are (nearly) collinear, such as a walk along a street.
    """
    C = camera_centres(cam_from_world)
    axis = cam_from_world[:, 2, :3]  # third row of R = optical axis in world coordinates
    return np.concatenate([C, C + depth_scale * axis], axis=0)


def camera_extent(cam_from_world: np.ndarray) -> float:
    C = camera_centres(cam_from_world)
    return float(np.linalg.norm(C.max(0) - C.min(0)))


def nearest_distances(a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """For each point of ``a`` the distance to its nearest neighbour in ``b``."""
    ta, tb = torch.from_numpy(a.astype(np.float64)), torch.from_numpy(b.astype(np.float64))
    out = [torch.cdist(ta[k:k + chunk], tb).min(dim=1).values for k in range(0, len(ta), chunk)]
    return torch.cat(out).numpy()


def trajectory_and_points(
    pred_cams: np.ndarray, gt_cams: np.ndarray, pred_points: np.ndarray, gt_points: np.ndarray,
    pred_depth_median: float, gt_depth_median: float, max_points: int = 20000, seed: int = 0,
) -> dict[str, float]:
    """ATE, Chamfer and F-score (units of the GT camera extent) after one Sim(3) alignment."""
    extent = camera_extent(gt_cams)
    if not extent > 0:  # all cameras in one place: use the scene depth as the unit instead
        extent = gt_depth_median
    s, R, t = umeyama_sim3(alignment_points(pred_cams, pred_depth_median),
                           alignment_points(gt_cams, gt_depth_median))
    C = camera_centres(pred_cams) @ (s * R).T + t
    ate = float(np.sqrt(np.mean(np.sum((C - camera_centres(gt_cams)) ** 2, axis=1)))) / extent
    rng = np.random.default_rng(seed)

    def sample(p):
        return p[rng.choice(len(p), max_points, replace=False)] if len(p) > max_points else p

    P = sample(pred_points) @ (s * R).T + t
    G = sample(gt_points)
    acc, comp = nearest_distances(P, G) / extent, nearest_distances(G, P) / extent
    tau = 0.01
    precision, recall = float(np.mean(acc < tau)), float(np.mean(comp < tau))
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"ate": ate, "chamfer": float((acc.mean() + comp.mean()) / 2), "fscore": fscore}


METRIC_KEYS = ("depth_abs_rel", "depth_delta1", "rra_15", "rta_15", "auc_30", "ate", "chamfer", "fscore")
HIGHER_IS_BETTER = {"depth_delta1", "rra_15", "rta_15", "auc_30", "fscore"}
