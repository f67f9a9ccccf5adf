"""Predictions placed in the output's world frame, and the volume planned around them.

- :func:`place_in_world`: given poses fix the world frame and metric scale (after the convention
  check); without them the first predicted camera is the world frame, in the network's scene units.
  A round ``origin`` near the cameras is subtracted first, so local coordinates stay small for float32.
- :func:`plan_volume`: the TSDF grid over the robust bounds of the confident points.
- :func:`volume_summary`: the volume's extent against the cameras (what the output validation reads).

Plain arrays in and out: the storage schema (``storage.schema``) writes what this module computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from errors import ConfigError, PoseCheckError
from pose_rules import MAX_VOXEL_M, MIN_VOXEL_M, length_text, metres_per_unit

from . import fusion
from .geometry import world_points_from_depth
from .inference import Views, ZipResult
from .pose_checks import (
    PoseCheckReport,
    check_convention,
    check_scene_scale,
    compare_poses,
    flag_predicted_baseline,
)


@dataclass
class Scene:
    """Predictions placed in the output's world frame (local: world minus ``origin``)."""

    names: tuple[str, ...]
    images: np.ndarray  # [S, h, w, 3] uint8
    depth: np.ndarray  # [S, h, w] float32, output units
    depth_conf: np.ndarray  # [S, h, w] float32
    cam_from_world: np.ndarray  # [S, 3, 4] float64, local frame
    predicted_cam_from_world: np.ndarray  # [S, 3, 4] float64, local frame (predicted, aligned when poses given)
    intrinsics: np.ndarray  # [S, 3, 3] float64, network pixels
    origin: np.ndarray  # [3] float64
    units: str  # "m" or "1"
    crs: str | None
    metric: bool
    report: PoseCheckReport
    info: dict = field(default_factory=dict)
    source: str = ""  # the pose file (or the collection), named in messages

    def world_points(self) -> np.ndarray:
        """``[S, h, w, 3]`` float32 world points relative to ``origin`` (computed once)."""
        if "world_points" not in self.info:
            pts = world_points_from_depth(torch.from_numpy(self.depth), torch.from_numpy(self.cam_from_world).float(),
                                          torch.from_numpy(self.intrinsics).float())
            self.info["world_points"] = pts.numpy()
        return self.info["world_points"]

    def absolute(self, cam_from_world: np.ndarray) -> np.ndarray:
        """``[S, 4, 4]`` world-to-camera transforms in the absolute world frame (origin added back)."""
        out = np.tile(np.eye(4), (len(cam_from_world), 1, 1))
        out[:, :3] = with_origin(cam_from_world, -self.origin)
        return out


def with_origin(cam_from_world: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Cameras for world points ``X_local = X_world - origin`` (float64 throughout)."""
    out = np.array(cam_from_world, dtype=np.float64, copy=True)
    out[:, :3, 3] = cam_from_world[:, :3, 3] + cam_from_world[:, :3, :3] @ origin
    return out


def choose_origin(cam_from_world: np.ndarray) -> np.ndarray:
    """A round origin near the cameras (whole metres), so local coordinates stay small for float32."""
    centres = -np.einsum("nba,nb->na", cam_from_world[:, :3, :3], cam_from_world[:, :3, 3])
    return np.round(np.median(centres, axis=0))


def place_in_world(names: tuple[str, ...], given: np.ndarray | None, units: str | None, crs: str | None,
                   views: Views, zr: ZipResult, report: PoseCheckReport, source: str) -> Scene:
    """Given cameras ``given`` (``[S, 3, 4]`` world-to-camera, or None) fix the world frame and metric scale,
    after the convention check names any OpenGL/OpenCV or camera-to-world mix-up (``source`` names the
    pose file in messages); else the first predicted camera is the world frame, in scene units.

    Given cameras must put a metric scale on the predicted depth within the physical limits
    (:func:`check_scene_scale` raises otherwise); predicted cameras that barely move against the scene
    depth are flagged in the report (:func:`flag_predicted_baseline`)."""
    if given is None:  # re-anchor exactly on the first predicted camera
        T = np.tile(np.eye(4), (len(zr.cam_from_world), 1, 1))
        T[:, :3] = zr.cam_from_world
        cams = (T @ np.linalg.inv(T[0]))[:, :3]
        report = flag_predicted_baseline(report, cams, zr.depth)
        return Scene(names, zr.images, zr.depth, zr.depth_conf, cams, cams, zr.intrinsics, np.zeros(3), "1", crs,
                     False, report, source=source)
    given = np.asarray(given, dtype=np.float64)
    origin = choose_origin(given)
    local = with_origin(given, origin)  # translation-only change: conventions and scores are unaffected
    report = check_convention(zr.depth, zr.cam_from_world, given, views.intrinsics, source, report)
    valid = zr.depth[zr.depth > 0]
    median = float(np.median(valid)) if valid.size else 1.0
    report = compare_poses(zr.cam_from_world, local, median, report)
    check_scene_scale(median, report, units, source)
    s, R, t = (report.alignment[k] for k in ("scale", "rotation", "translation"))
    Rp = zr.cam_from_world[:, :3, :3] @ np.asarray(R).T  # predicted cameras in the given world frame
    predicted = np.concatenate([Rp, (s * zr.cam_from_world[:, :3, 3] - Rp @ np.asarray(t))[..., None]], axis=-1)
    return Scene(names, zr.images, (zr.depth * report.depth_scale).astype(np.float32), zr.depth_conf, local,
                 predicted, views.intrinsics, origin, units or "m", crs, True, report, source=source)


@dataclass
class VolumePlan:
    grid: fusion.VolumeGrid
    truncation: float
    bounds_min: np.ndarray  # of the confident points, local frame
    bounds_max: np.ndarray


# quantiles for the volume's bounds from at most this many points: the 1 % and 99 % quantiles then move
# by about 4e-4 in probability (binomial standard error), far below a voxel, and a 16-view collection
# sorts 65k points instead of 300k
BOUNDS_SAMPLES = 1 << 16


def plan_volume(scene: Scene, voxel_size: float | None = None, max_voxels: int = 128, truncation_voxels: float = 3.0,
                min_conf_quantile: float = 0.2) -> VolumePlan:
    """The grid over the robust bounds of the confident points (before anything is written, so a grid
    that cannot be made fails without touching the output). Non-finite bounds, or a metric voxel size
    outside ``pose_rules.MIN_VOXEL_M`` to ``MAX_VOXEL_M``, raise naming the pose file."""
    points = torch.from_numpy(scene.world_points()).reshape(-1, 3)
    conf = torch.from_numpy(scene.depth_conf).reshape(-1)
    keep = torch.from_numpy(scene.depth > 0).reshape(-1) & torch.isfinite(points).all(1)
    if keep.any():  # the least confident points (sky, far background) do not stretch the volume
        kept = conf[keep].numpy()
        step = max(1, len(kept) // BOUNDS_SAMPLES)
        keep &= conf >= float(np.quantile(kept[::step], min_conf_quantile))  # a partition, not torch's full sort
    lo, hi = fusion.scene_bounds(points[keep], conf[keep], max_samples=BOUNDS_SAMPLES)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise PoseCheckError(f"{scene.source or 'the collection'}: no finite scene point to plan the volume "
                             "around (the predicted depth or the cameras are not finite)")
    provisional = voxel_size or float(np.max(hi - lo)) / max_voxels
    grid = fusion.make_grid(lo - truncation_voxels * provisional, hi + truncation_voxels * provisional, voxel_size,
                            max_voxels=max_voxels)
    per_unit = metres_per_unit(scene.units) or 1.0
    metres = grid.voxel_size * per_unit
    if scene.metric and not MIN_VOXEL_M <= metres <= MAX_VOXEL_M:
        size = length_text(metres, scene.units, per_unit)
        if voxel_size is not None:
            raise ConfigError(f"voxel size {size} is outside the limits of {MIN_VOXEL_M:g} to {MAX_VOXEL_M:g} m")
        raise PoseCheckError(f"{scene.source or 'the collection'}: the planned voxel size {size} (the scene spans "
                             f"{length_text(float(np.max(hi - lo)) * per_unit, scene.units, per_unit)} over "
                             f"{max_voxels} voxels) is outside the limits of {MIN_VOXEL_M:g} to {MAX_VOXEL_M:g} m")
    return VolumePlan(grid, truncation_voxels * grid.voxel_size, lo, hi)


def volume_summary(scene: Scene, plan: VolumePlan, observed: int, near_surface: int, chunks: int) -> dict:
    """The fused volume in numbers: shape, extent against the cameras, observed and near-surface fractions."""
    grid, lo, hi = plan.grid, plan.bounds_min, plan.bounds_max
    nz, ny, nx = grid.shape
    total = nz * ny * nx
    centres = -np.einsum("nba,nb->na", scene.cam_from_world[:, :3, :3], scene.cam_from_world[:, :3, 3])
    box_lo = np.asarray(grid.origin) - grid.voxel_size / 2
    box_hi = box_lo + np.array([nx, ny, nz]) * grid.voxel_size
    mean_centre = centres.mean(0)
    outside = np.maximum(np.maximum(box_lo - mean_centre, mean_centre - box_hi), 0)
    return {"shape": [nz, ny, nx], "volume_extent": float((box_hi - box_lo).max()),
            "camera_extent": float(np.linalg.norm(np.ptp(centres, axis=0))) if len(centres) > 1 else 0.0,
            "camera_to_volume_distance": float(np.linalg.norm(outside)), "voxel_size": grid.voxel_size,
            "truncation": plan.truncation, "observed_fraction": observed / total,
            "occupied_fraction": near_surface / total, "chunks": chunks,
            "bounds_min": (np.asarray(lo) + scene.origin).tolist(),
            "bounds_max": (np.asarray(hi) + scene.origin).tolist()}


__all__ = ["Scene", "with_origin", "choose_origin", "place_in_world", "VolumePlan", "plan_volume", "volume_summary",
           "BOUNDS_SAMPLES"]
