"""Pose checks: given cameras before the zip pass, and predicted against given cameras after it.

Before (:func:`check_given_poses`, needs only the given cameras): finite values, proper rotations
(orthonormal, det +1), positive focal lengths, principal point inside the image, no duplicated
cameras, a baseline (the cameras are not all in one place), and the physical limits of
``pose_rules`` in the pose file's units converted to metres: focal lengths within a pinhole's field
of view and with square-ish pixels, camera positions within 1e8 m of the origin, a baseline from
1 mm to 100 km, and no float64 precision lost to coordinates far from the origin. A failure raises
:class:`errors.PoseCheckError` naming the pose file, the image and the reason.
:func:`check_distinct_images` refuses two images with the same pixels (a duplicated photo), with or
without poses.

After the zip pass, :func:`check_scene_scale` refuses a metric depth scale outside the physical
limits (the given cameras disagree with the scene's size) and :func:`flag_predicted_baseline` flags
a capture without poses whose predicted cameras hardly move against the scene depth.

After (:func:`check_convention`, :func:`compare_poses`, need the network's predictions):

- Convention. The predicted depth maps are placed in the world with the given cameras under four
  readings of the given matrices — as given (OpenCV world-to-camera), as camera-to-world, with
  OpenGL camera axes (y up, z backward), and both — and the reading whose views agree with each
  other (reprojected depth matches the other views' depth, for the best global scale) and whose
  camera-to-camera directions match the predicted ones wins. If a reading other than "as given"
  wins clearly, the cameras do not look at the scene they show: the classic OpenGL/OpenCV or
  camera-to-world/world-to-camera mix-up, raised with its name.
- Disagreement. The predicted cameras are aligned to the given ones by one Sim(3) (Umeyama on camera
  centres plus points along the optical axes) and each view's rotation (degrees) and position
  (world units) disagreement is reported; views beyond the thresholds are flagged. The alignment's
  scale is the metric scale of the predicted depth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from errors import InputError, PoseCheckError
from pose_rules import (
    MAX_SCENE_DEPTH_M,
    MIN_BASELINE_M,
    MIN_BASELINE_TO_DEPTH,
    MIN_SCENE_DEPTH_M,
    baseline_problem,
    intrinsics_problem,
    length_text,
    metres_per_unit,
    position_problem,
    precision_problem,
    rotation_problem,
)

from .evaluation.metrics import camera_centres

DUPLICATE_TOL = 1e-6  # relative to the camera extent (or 1 unit), and 1e-3 degrees
FLAG_ROTATION_DEG = 15.0
FLAG_POSITION_FRACTION = 0.1  # of the camera extent (or of the median scene depth when the extent is ~0)
MIN_VIEWS_FOR_CONVENTION = 6  # fewer views: a convention mix-up is reported as a warning, not raised

CONVENTIONS = {
    "as given": "OpenCV world_to_camera",
    "camera_to_world": "camera-to-world matrices where world_to_camera is expected",
    "opengl_axes": "OpenGL camera axes (x right, y up, z backward) where OpenCV axes (y down, z forward) are expected",
    "camera_to_world+opengl_axes": "camera-to-world matrices with OpenGL camera axes (the nerfstudio/Blender "
                                   "convention) where OpenCV world_to_camera is expected",
}
_FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class PoseCheckReport:
    """What the checks found, JSON-friendly (``to_dict``)."""

    poses_given: bool
    source: str = ""
    num_views: int = 0
    camera_extent: float = float("nan")
    convention: str = ""
    convention_scores: dict = field(default_factory=dict)
    depth_scale: float = float("nan")
    sim3_scale: float = float("nan")
    rotation_error_deg: np.ndarray | None = None
    position_error: np.ndarray | None = None
    flagged: np.ndarray | None = None
    alignment: dict = field(default_factory=dict)  # Sim(3) predicted -> given: scale, rotation, translation
    warnings: list = field(default_factory=list)
    baseline_to_depth: float = float("nan")  # predicted poses: camera extent / median scene depth
    no_baseline: bool = False  # predicted poses: baseline_to_depth below pose_rules.MIN_BASELINE_TO_DEPTH

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("rotation_error_deg", "position_error", "flagged")}
        for key in ("rotation_error_deg", "position_error", "flagged"):
            value = getattr(self, key)
            out[key] = None if value is None else value.tolist()
        out["num_flagged"] = int(self.flagged.sum()) if self.flagged is not None else 0
        return out


def _homogeneous(cam_from_world: np.ndarray) -> np.ndarray:
    T = np.tile(np.eye(4), (len(cam_from_world), 1, 1))
    T[:, :3, :4] = cam_from_world[:, :3, :4]
    return T


def _extent(cam_from_world: np.ndarray) -> float:
    C = camera_centres(cam_from_world)
    return float(np.linalg.norm(C.max(0) - C.min(0))) if len(C) else 0.0


def check_given_poses(cam_from_world: np.ndarray, intrinsics: np.ndarray, image_sizes: list[tuple[int, int]],
                      names: list[str], source: str, units: str | None = None) -> PoseCheckReport:
    """Checks that need only the given cameras; raises :class:`PoseCheckError` on the first failure.

    ``image_sizes`` are ``(H, W)`` of the images the intrinsics refer to; ``source`` names the pose file;
    ``units`` are the pose file's (None: metres), converted to metres for the physical limits of
    ``pose_rules`` (camera positions, baseline, float64 precision, focal lengths). Units it does not know
    are read as metres, with a warning in the report.
    """
    S = len(names)
    per_unit = metres_per_unit(units)
    warnings = []
    if per_unit is None:
        warnings.append(f"units {units!r} of {source} are not recognised; physical limits applied as if metres")
        per_unit, units = 1.0, None
    if cam_from_world.shape != (S, 3, 4) or intrinsics.shape != (S, 3, 3):
        raise PoseCheckError(f"{source}: expected {S} cameras, got poses {cam_from_world.shape} and "
                             f"intrinsics {intrinsics.shape}")
    C = camera_centres(cam_from_world)  # NaN where a pose is not finite (raised below)
    for i, name in enumerate(names):
        where = f"{source}: camera of {name}"
        if not (np.isfinite(cam_from_world[i]).all() and np.isfinite(intrinsics[i]).all()):
            raise PoseCheckError(f"{where}: non-finite values (NaN or inf) in the pose or intrinsics")
        problem = rotation_problem(cam_from_world[i, :3, :3])
        if problem:
            raise PoseCheckError(f"{where}: {problem}")
        fx, fy, cx, cy = intrinsics[i, 0, 0], intrinsics[i, 1, 1], intrinsics[i, 0, 2], intrinsics[i, 1, 2]
        if not (fx > 0 and fy > 0):
            raise PoseCheckError(f"{where}: focal lengths must be positive (fx={fx:g}, fy={fy:g})")
        H, W = image_sizes[i]
        if not (0 < cx < W and 0 < cy < H):
            raise PoseCheckError(f"{where}: principal point ({cx:g}, {cy:g}) lies outside the {W}x{H} image")
        problem = intrinsics_problem(fx, fy, W, H) or position_problem(float(np.linalg.norm(C[i])), units, per_unit)
        if problem:
            raise PoseCheckError(f"{source}: frame {name}: {problem}")
    extent = _extent(cam_from_world)
    tol = DUPLICATE_TOL * max(extent, 1.0)
    if S > 1:
        for i in range(S):
            dist = np.linalg.norm(C[i + 1:] - C[i], axis=1)
            cos = (np.einsum("nab,ab->n", cam_from_world[i + 1:, :3, :3], cam_from_world[i, :3, :3]) - 1) / 2
            angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
            dup = np.flatnonzero((dist <= tol) & (angle < 1e-3))
            if len(dup):
                raise PoseCheckError(f"{source}: cameras of {names[i]} and {names[i + 1 + dup[0]]} are duplicates "
                                     "(same position and orientation)")
        if not extent > tol or extent * per_unit < MIN_BASELINE_M:  # every camera is to blame
            frames = f"frames {names[0]} to {names[-1]}" if S > 2 else f"frames {names[0]} and {names[1]}"
            raise PoseCheckError(f"{source}: {frames}: all {S} cameras are at the same position: no baseline for "
                                 f"geometry (camera baseline {length_text(extent * per_unit, units, per_unit)}, "
                                 f"below the limit of {MIN_BASELINE_M:g} m)")
        problem = baseline_problem(extent, units, per_unit)
        if problem:  # too large: name the camera farthest from the others
            median = np.median(C, axis=0)
            far = int(np.argmax(np.linalg.norm(C - median, axis=1)))
            away = length_text(float(np.linalg.norm(C[far] - median)) * per_unit, units, per_unit)
            raise PoseCheckError(f"{source}: frame {names[far]}: {problem} (it lies {away} from the median "
                                 "camera position)")
        distance = np.linalg.norm(C, axis=1)
        problem = precision_problem(float(distance.max()), extent, units, per_unit)
        if problem:
            raise PoseCheckError(f"{source}: frame {names[int(np.argmax(distance))]}: {problem}")
    return PoseCheckReport(poses_given=True, source=source, num_views=S, camera_extent=extent, warnings=warnings)


def check_distinct_images(images: Sequence[np.ndarray], paths: Sequence[str]) -> None:
    """Raise :class:`errors.InputError` naming both files when two images hold the same pixels: a
    duplicated photo adds no view, and with predicted poses it is a pair without baseline. ``paths``
    name the image files, in the order of ``images``."""
    seen: dict[bytes, int] = {}
    for i, image in enumerate(images):
        a = np.ascontiguousarray(image)
        digest = hashlib.blake2b(f"{a.shape}{a.dtype.str}".encode(), digest_size=16)
        digest.update(memoryview(a).cast("B"))
        j = seen.setdefault(digest.digest(), i)
        if j != i and np.array_equal(images[j], a):
            raise InputError(f"{paths[i]}: identical to {paths[j]} (the same pixels): a duplicated photo adds no "
                             "view and no baseline; remove one of them")


# ---------------------------------------------------------------------------------------------------
# after the zip pass
def candidate_poses(cam_from_world: np.ndarray) -> dict[str, np.ndarray]:
    """The four readings of given matrices, each as OpenCV world-to-camera ``[S, 3, 4]``."""
    T = _homogeneous(cam_from_world)
    inv = np.linalg.inv(T)
    return {"as given": T[:, :3], "camera_to_world": inv[:, :3], "opengl_axes": (_FLIP @ T)[:, :3],
            "camera_to_world+opengl_axes": (_FLIP @ inv)[:, :3]}


def _consistency(depth: torch.Tensor, cams: torch.Tensor, K: torch.Tensor, scales: torch.Tensor,
                 pairs: torch.Tensor, rel_tol: float) -> torch.Tensor:
    """For each scale: the fraction of view-i pixels that land in view j at a depth agreeing with j's depth,
    minus the fraction that land well in front of it (free-space violations). The violations keep a
    wrong scale from scoring well (with the scene pushed to infinity every pair agrees otherwise)."""
    S, H, W = depth.shape
    v, u = torch.meshgrid(torch.arange(H, dtype=depth.dtype) + 0.5, torch.arange(W, dtype=depth.dtype) + 0.5,
                          indexing="ij")
    i, j = pairs[:, 0], pairs[:, 1]
    ray = torch.stack([(u - K[i, 0, 2, None, None]) / K[i, 0, 0, None, None],
                       (v - K[i, 1, 2, None, None]) / K[i, 1, 1, None, None], torch.ones_like(u).expand(len(i), H, W)],
                      dim=-1)  # [P, H, W, 3], camera i frame, z = 1
    R_rel = cams[j, :3, :3] @ cams[i, :3, :3].transpose(1, 2)  # camera i -> camera j
    t_j, t_i = cams[j, :3, 3], cams[i, :3, 3]
    dir_j = torch.einsum("pab,phwb->phwa", R_rel, ray)  # rotated rays, scaled by depth later
    off = t_j - torch.einsum("pab,pb->pa", R_rel, t_i)  # camera i's centre in camera j, [P, 3]
    # float64 up to here (georeferenced translations are large); the per-pixel work is relative (5 %
    # depth tolerance on small offsets) and runs in float32 in a compiled loop over every scale, pair
    # and pixel (model.reprojection_cpu)
    from model.reprojection_cpu import agreement_counts  # Numba loads on first use

    K_j = torch.stack([K[j, 0, 0], K[j, 1, 1], K[j, 0, 2], K[j, 1, 2]], dim=1)
    flat = depth.reshape(S, H * W).float()
    counts = torch.from_numpy(agreement_counts(dir_j.reshape(len(i), H * W, 3).float().numpy(), off.float().numpy(),
                                               K_j.float().numpy(), flat[i].numpy(), flat[j].numpy(),
                                               scales.float().numpy(), (H, W), rel_tol))  # [N, P, 2]
    net = (counts[..., 0] - counts[..., 1]).to(depth.dtype)
    valid = (flat[i] > 0).sum(1).to(depth.dtype).clamp_min(1)  # [P]
    return (net / valid).mean(1)  # [num_scales]


def _pairs(S: int, reach: int = 2) -> torch.Tensor:
    pairs = [(a, b) for a in range(S) for b in range(S) if a != b and abs(a - b) <= reach]
    return torch.tensor(pairs, dtype=torch.long)


def best_depth_scale(depth: np.ndarray, cams: np.ndarray, intrinsics: np.ndarray, guess: float,
                     spread: float = 5.0, rel_tol: float = 0.05, size: tuple[int, int] = (18, 27),
                     ) -> tuple[float, float]:
    """``(score, scale)``: the depth scale in ``[guess / spread, guess * spread]`` under which the views
    agree best with these cameras (the range keeps away from the degenerate "scene at infinity")."""
    d = torch.from_numpy(np.asarray(depth, dtype=np.float64))
    S, H, W = d.shape
    h, w = min(size[0], H), min(size[1], W)
    d = torch.nn.functional.interpolate(d[:, None], size=(h, w), mode="nearest")[:, 0]
    K = torch.from_numpy(np.asarray(intrinsics, dtype=np.float64)).clone()
    K[:, 0] *= w / W
    K[:, 1] *= h / H
    cams_t = torch.from_numpy(np.asarray(cams, dtype=np.float64))
    log_spread = float(np.log10(spread))
    scales = guess * torch.logspace(-log_spread, log_spread, 15, dtype=torch.float64)
    pairs = _pairs(S)
    coarse = _consistency(d, cams_t, K, scales, pairs, rel_tol)
    k = int(coarse.argmax())
    fine_scales = scales[k] * torch.logspace(-0.05, 0.05, 5, dtype=torch.float64)
    fine = _consistency(d, cams_t, K, fine_scales, pairs, rel_tol)
    kf = int(fine.argmax())
    return float(fine[kf]), float(fine_scales[kf])


def relative_directions(cam_from_world: np.ndarray) -> np.ndarray:
    """Unit direction of camera i's centre seen from camera j, for all pairs ``i < j`` -> ``[P, 3]``."""
    i, j = np.triu_indices(len(cam_from_world), k=1)
    R, t = cam_from_world[:, :3, :3], cam_from_world[:, :3, 3]
    R_rel = R[j] @ np.transpose(R[i], (0, 2, 1))
    t_rel = t[j] - np.einsum("nab,nb->na", R_rel, t[i])
    return t_rel / np.maximum(np.linalg.norm(t_rel, axis=1, keepdims=True), 1e-12)


def check_convention(depth: np.ndarray, pred_cams: np.ndarray, given: np.ndarray, intrinsics: np.ndarray,
                     source: str, report: PoseCheckReport, margin: float = 0.25, direction_weight: float = 0.5,
                     min_views: int = MIN_VIEWS_FOR_CONVENTION) -> PoseCheckReport:
    """Which reading of the given matrices fits the predictions; raise :class:`PoseCheckError` on a clear mix-up.

    Each reading gets ``depth agreement + direction_weight * mean cosine`` between the predicted and
    the given directions from camera to camera (over all pairs). The depth agreement is searched over
    scales within 2x of the ratio of the given to the predicted camera extent (predicted depth and
    cameras share one scale). A mix-up is raised when another reading beats "as given" by ``margin``,
    and conclusively: at least ``min_views`` views, and better depth agreement (by 0.05), or nearly the
    same (within 0.1) with a direction cosine of 0.8 or more (depth alone cannot tell a walk along flat
    facades apart). The thresholds hold zero false alarms on 16 correct 8-view collections with the
    bundled model (which catches about half of the mix-ups there). A suspicious but inconclusive fit
    becomes a warning in the report (a weak network on a few views must not reject correct poses).
    """
    pred_extent = _extent(pred_cams)
    pred_dirs = relative_directions(pred_cams) if len(pred_cams) > 1 else np.zeros((0, 3))
    scores, scales, parts = {}, {}, {}
    for name, cams in candidate_poses(given).items():
        extent = _extent(cams)
        guess = extent / pred_extent if extent > 0 and pred_extent > 0 else 1.0
        agree, scales[name] = best_depth_scale(depth, cams, intrinsics, guess, spread=2.0)
        cos = float(np.mean(np.sum(pred_dirs * relative_directions(cams), axis=1))) if len(pred_dirs) else 0.0
        scores[name] = agree + direction_weight * cos
        parts[name] = {"depth_agreement": round(agree, 4), "direction_cosine": round(cos, 4),
                       "score": round(scores[name], 4)}
    report.convention_scores = parts
    best = max(scores, key=scores.get)
    given_fit, alt = parts["as given"], parts[best]
    suspicious = best != "as given" and scores[best] > scores["as given"] + margin
    # raise only on evidence a weak prediction cannot fake: enough views, and the other reading wins on
    # depth agreement too and matches the predicted motion; otherwise it is a warning in the report
    depth_gain = alt["depth_agreement"] - given_fit["depth_agreement"]
    conclusive = len(depth) >= min_views and (depth_gain >= 0.05 or (alt["direction_cosine"] >= 0.8
                                                                      and depth_gain >= -0.1))
    if suspicious and not conclusive:
        report.warnings.append(f"the poses fit {CONVENTIONS[best]} better than as given ({scores[best]:.2f} "
                               f"against {scores['as given']:.2f}), but not conclusively; check the convention")
    if suspicious and conclusive:
        raise PoseCheckError(
            f"{source}: the cameras do not look at the scene their images show; the poses look like "
            f"{CONVENTIONS[best]} (fit {scores[best]:.2f} read that way against {scores['as given']:.2f} as given). "
            "Convert them to OpenCV world_to_camera.")
    report.convention = "as given"
    if parts["as given"]["depth_agreement"] < 0.05:
        report.warnings.append("the predicted depth maps agree poorly with the given cameras "
                               f"({parts['as given']['depth_agreement']:.0%} of reprojected pixels)")
    return report


def _nearest_rotation(M: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(M)
    return U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt)) or 1.0]) @ Vt


def align_cameras(pred: np.ndarray, given: np.ndarray, weights: np.ndarray | None = None,
                  ) -> tuple[float, np.ndarray, np.ndarray]:
    """Sim(3) ``s, R, t`` taking predicted world points to the given world (``X_g = s R X_p + t``).

    The rotation comes from the camera orientations (chordal mean of ``R_g^T R_p``), so poorly
    predicted positions do not twist it; scale and translation then fit the camera centres."""
    w = np.ones(len(given)) if weights is None else weights.astype(np.float64)
    R = _nearest_rotation(np.einsum("n,nba,nbc->ac", w, given[:, :3, :3], pred[:, :3, :3]))
    Cp, Cg = camera_centres(pred), camera_centres(given)
    mp, mg = (w[:, None] * Cp).sum(0) / w.sum(), (w[:, None] * Cg).sum(0) / w.sum()
    a = (Cp - mp) @ R.T
    b = Cg - mg
    denom = float((w * (a * a).sum(1)).sum())
    s = float((w * (a * b).sum(1)).sum()) / denom if denom > 0 else 1.0
    return s, R, mg - s * R @ mp


def compare_poses(pred: np.ndarray, given: np.ndarray, pred_depth_median: float, report: PoseCheckReport,
                  rotation_deg: float = FLAG_ROTATION_DEG, position_fraction: float = FLAG_POSITION_FRACTION,
                  ) -> PoseCheckReport:
    """Align predicted cameras to the given ones (one Sim(3), :func:`align_cameras`, refitted without
    outlier views) and report each view's rotation and position disagreement; flag views beyond the
    thresholds. The alignment's scale is the metric scale of the predicted depth (``report.depth_scale``)."""
    S = len(given)
    inliers = np.ones(S, bool)
    for _ in range(5):
        s, R, t = align_cameras(pred, given, inliers)
        rot = pred[:, :3, :3] @ R.T  # predicted rotations in the given world frame
        cos = (np.einsum("nab,nab->n", rot, given[:, :3, :3]) - 1) / 2
        rot_err = np.degrees(np.arccos(np.clip(cos, -1, 1)))
        pos_err = np.linalg.norm(camera_centres(pred) @ (s * R).T + t - camera_centres(given), axis=1)
        new = (rot_err <= max(3 * np.median(rot_err), 1.0)) & (pos_err <= max(3 * np.median(pos_err), 1e-9))
        if new.sum() < max(2, S // 2) or (new == inliers).all():
            break
        inliers = new
    if not (s > 0 and np.isfinite(s)):
        s = report.depth_scale if np.isfinite(report.depth_scale) and report.depth_scale > 0 else 1.0
    report.sim3_scale = report.depth_scale = s
    report.alignment = {"scale": s, "rotation": R.tolist(), "translation": t.tolist()}
    report.rotation_error_deg, report.position_error = rot_err, pos_err
    unit = report.camera_extent if report.camera_extent > 0 else s * pred_depth_median
    report.flagged = (rot_err > rotation_deg) | (pos_err > position_fraction * unit)
    if report.flagged.any():
        report.warnings.append(f"{int(report.flagged.sum())} of {S} views disagree with their given pose "
                               f"beyond {rotation_deg:g} deg or {position_fraction:.0%} of the camera extent")
    return report


def check_scene_scale(pred_depth_median: float, report: PoseCheckReport, units: str | None, source: str) -> None:
    """Raise :class:`PoseCheckError` when the metric scale the given cameras put on the predicted depth
    (``report.depth_scale`` times the predicted median depth ``pred_depth_median``, in the pose file's
    ``units``) is not finite or leaves the physical limits of a scene (``pose_rules.MIN_SCENE_DEPTH_M``
    to ``MAX_SCENE_DEPTH_M``): the given positions do not match the size of what the images show."""
    per_unit = metres_per_unit(units) or 1.0  # unknown units: read as metres (check_given_poses warned)
    s = float(report.depth_scale)
    metres = s * float(pred_depth_median) * per_unit
    if not (np.isfinite(s) and s > 0 and MIN_SCENE_DEPTH_M <= metres <= MAX_SCENE_DEPTH_M):
        raise PoseCheckError(
            f"{source}: the predicted depth scaled to the given cameras (depth scale {s:.3g}) has a median of "
            f"{length_text(metres, units, per_unit)}, outside the limits of "
            f"{MIN_SCENE_DEPTH_M:g} to {MAX_SCENE_DEPTH_M:.0e} m: the given camera positions do not match the "
            "size of the scene the images show (wrong units, or poses of another capture?)")


def flag_predicted_baseline(report: PoseCheckReport, cam_from_world: np.ndarray, depth: np.ndarray,
                            ) -> PoseCheckReport:
    """Predicted poses only: record ``camera extent / median depth`` (both in the network's scene units)
    and flag the capture (``report.no_baseline`` and a warning) when it is below
    ``pose_rules.MIN_BASELINE_TO_DEPTH``: the views barely move, the geometry is single-view depth."""
    valid = depth[np.isfinite(depth) & (depth > 0)]
    median = float(np.median(valid)) if valid.size else float("nan")
    extent = _extent(cam_from_world)
    ratio = extent / median if median > 0 else float("nan")
    report.baseline_to_depth = ratio
    if not ratio >= MIN_BASELINE_TO_DEPTH:
        report.no_baseline = True
        report.warnings.append(
            f"no baseline: the predicted cameras of the {len(cam_from_world)} views span {extent:.3g} against a "
            f"median scene depth of {median:.3g} (ratio {ratio:.3g}, below {MIN_BASELINE_TO_DEPTH:g}); the views "
            "barely move, so the geometry is single-view depth, not triangulated")
    return report


__all__ = ["PoseCheckReport", "check_given_poses", "candidate_poses", "best_depth_scale", "check_convention",
           "relative_directions", "compare_poses", "align_cameras", "camera_centres", "CONVENTIONS",
           "check_distinct_images", "check_scene_scale", "flag_predicted_baseline"]
