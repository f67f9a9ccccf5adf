"""The stages of reconstructing one collection, each a Prefect task (``flows/reconstruct.py`` wires them).

read-collection -> check-poses -> zip-pass -> place-in-world -> write-views -> decode-volume -> finalize

Every stage is also callable without Prefect through ``.fn`` (the CLI does that). Large arrays pass
between stages in memory, inside one process; only the Zarr store leaves it.
"""

from __future__ import annotations

import functools
import math
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from model import fusion
from model.geometry import world_points_from_depth
from storage.collection import Collection, read_collection
from storage.urls import collection_id_from_url, join, public_options, redact, safe_id
from storage.zarr_store import ReconstructionStore, Variable

from .pose_checks import PoseCheckReport, check_convention, check_given_poses, compare_poses
from .zip_pass import (
    Views,
    ZipResult,
    get_model,
    prepare_views,
    refine_result,
    refinement_steps,
    weights_sha256,
    zip_collection,
)

POSE_FILES = {"zipmap": "cameras.json", "nerfstudio": "transforms.json", "colmap": "COLMAP model (images/cameras)"}
VOLUME_CHUNK = 64
VIEW_DIMS_UNITS = {"m": "m", None: "1"}


@functools.cache
def code_version() -> str:
    """The installed package version, plus the git commit when run from a checkout (once per process)."""
    try:
        version = metadata.version("zipmap-pipeline")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, text=True,
                                capture_output=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+g{commit}" if commit else version


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


# ---------------------------------------------------------------------------------------------------
@task(name="read-collection", cache_policy=NO_CACHE)
def read_inputs(src: str, storage_options: dict | None = None) -> Collection:
    """Read images and given cameras (any of the three pose formats); bad input raises naming the file."""
    return read_collection(src, storage_options=storage_options, with_depth=False)


@task(name="check-poses", cache_policy=NO_CACHE)
def check_poses(coll: Collection) -> PoseCheckReport:
    """Checks of the given cameras that need no network (nothing to check without poses)."""
    if coll.cam_from_world is None:
        return PoseCheckReport(poses_given=False, num_views=coll.num_frames)
    source = join(redact(coll.url), POSE_FILES.get(coll.source_format, "poses"))
    return check_given_poses(coll.cam_from_world, coll.intrinsics, coll.image_sizes(), list(coll.names), source)


@task(name="zip-pass", cache_policy=NO_CACHE)
def zip_pass(coll: Collection, weights: str | None = None, device: str | None = None, preset: str | None = None,
             max_offline_frames: int | None = None) -> tuple[Views, ZipResult]:
    model = get_model(weights, preset, device)
    views = prepare_views(coll.images, coll.intrinsics, model.cfg.img_size, model.cfg.patch_size)
    return views, zip_collection(model, views, max_offline_frames)


@task(name="refine-poses", cache_policy=NO_CACHE)
def refine_poses(views: Views, zr: ZipResult, steps: tuple[int, ...]) -> ZipResult:
    """The predicted relative poses of neighbouring frames refined by direct image alignment."""
    return refine_result(views, zr, steps)


def _with_origin(cam_from_world: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Cameras for world points ``X_local = X_world - origin`` (float64 throughout)."""
    out = np.array(cam_from_world, dtype=np.float64, copy=True)
    out[:, :3, 3] = cam_from_world[:, :3, 3] + cam_from_world[:, :3, :3] @ origin
    return out


def choose_origin(cam_from_world: np.ndarray) -> np.ndarray:
    """A round origin near the cameras (whole metres), so local coordinates stay small for float32."""
    centres = -np.einsum("nba,nb->na", cam_from_world[:, :3, :3], cam_from_world[:, :3, 3])
    return np.round(np.median(centres, axis=0))


@task(name="place-in-world", cache_policy=NO_CACHE)
def place_in_world(coll: Collection, views: Views, zr: ZipResult, report: PoseCheckReport) -> Scene:
    """Given poses fix the world frame and metric scale (after the convention check); else the first
    predicted camera is the world frame, in the network's scene units."""
    if coll.cam_from_world is None:  # re-anchor exactly on the first predicted camera
        T = np.tile(np.eye(4), (len(zr.cam_from_world), 1, 1))
        T[:, :3] = zr.cam_from_world
        cams = (T @ np.linalg.inv(T[0]))[:, :3]
        return Scene(coll.names, zr.images, zr.depth, zr.depth_conf, cams, cams, zr.intrinsics, np.zeros(3), "1",
                     coll.crs, False, report)
    source = report.source or redact(coll.url)
    given = np.asarray(coll.cam_from_world, dtype=np.float64)
    origin = choose_origin(given)
    local = _with_origin(given, origin)  # translation-only change: conventions and scores are unaffected
    report = check_convention(zr.depth, zr.cam_from_world, given, views.intrinsics, source, report)
    valid = zr.depth[zr.depth > 0]
    median = float(np.median(valid)) if valid.size else 1.0
    report = compare_poses(zr.cam_from_world, local, median, report)
    s, R, t = (report.alignment[k] for k in ("scale", "rotation", "translation"))
    Rp = zr.cam_from_world[:, :3, :3] @ np.asarray(R).T  # predicted cameras in the given world frame
    predicted = np.concatenate([Rp, (s * zr.cam_from_world[:, :3, 3] - Rp @ np.asarray(t))[..., None]], axis=-1)
    return Scene(coll.names, zr.images, (zr.depth * report.depth_scale).astype(np.float32), zr.depth_conf, local,
                 predicted, views.intrinsics, origin, coll.units or "m", coll.crs, True, report)


# ---------------------------------------------------------------------------------------------------
def _attrs(long_name: str, units: str | None = None, **extra) -> dict:
    out = {"long_name": long_name, **extra}
    if units is not None:
        out["units"] = units
    return out


def world_points(scene: Scene) -> np.ndarray:
    """``[S, h, w, 3]`` float32 world points relative to ``scene.origin`` (computed once per scene)."""
    if "world_points" not in scene.info:
        pts = world_points_from_depth(torch.from_numpy(scene.depth), torch.from_numpy(scene.cam_from_world).float(),
                                      torch.from_numpy(scene.intrinsics).float())
        scene.info["world_points"] = pts.numpy()
    return scene.info["world_points"]


VIEW_CHUNK_BYTES = 1 << 20  # image-sized arrays: whole views per chunk, about 1 MiB per chunk


def view_chunks(data: np.ndarray) -> tuple[int, ...]:
    """Chunks of ``[view, ...]`` arrays: whole views, as many per chunk as fit in ``VIEW_CHUNK_BYTES`` (at
    least one). Chunks near 1 MiB keep object-store requests few and still let a reader fetch few views."""
    per_view = max(1, data[:1].nbytes)
    return (int(min(len(data), max(1, VIEW_CHUNK_BYTES // per_view))), *data.shape[1:])


@task(name="write-views", cache_policy=NO_CACHE)
def write_views(store: ReconstructionStore, scene: Scene) -> dict:
    S, h, w = scene.depth.shape
    u = scene.units
    to_world = np.tile(np.eye(4), (S, 1, 1))
    to_world[:, :3] = _with_origin(scene.cam_from_world, -scene.origin)  # back to absolute world coordinates
    predicted = np.tile(np.eye(4), (S, 1, 1))
    predicted[:, :3] = _with_origin(scene.predicted_cam_from_world, -scene.origin)
    r = scene.report
    nan = np.full(S, np.nan, dtype=np.float32)
    per_view = {
        "view": Variable(("view",), np.arange(S, dtype=np.int32), _attrs("view index (frame order)")),
        "image_name": Variable(("view",), np.asarray(scene.names, dtype=str), _attrs("image file name")),
        "depth": Variable(("view", "y", "x"), scene.depth.astype(np.float32),
                          _attrs("depth along the camera's optical axis", u, coordinates="image_name"),
                          view_chunks(scene.depth)),
        "depth_conf": Variable(("view", "y", "x"), scene.depth_conf.astype(np.float32),
                               _attrs("depth confidence (higher is more confident, >= 1)", "1"),
                               view_chunks(scene.depth_conf)),
        "image": Variable(("view", "y", "x", "channel"), scene.images,
                          _attrs("image as seen by the network (resized, cropped), sRGB", "1"),
                          view_chunks(scene.images)),
        "world_points": Variable(("view", "y", "x", "xyz"), world_points(scene),
                                 _attrs("world position of each pixel, relative to the root attribute origin", u,
                                        origin=scene.origin.tolist()), view_chunks(world_points(scene))),
        "intrinsics": Variable(("view", "row3", "col3"), scene.intrinsics,
                               _attrs("camera matrix K in pixels of depth/image (pixel centres at +0.5)", "pixel")),
        "world_to_camera": Variable(("view", "row4", "col4"), to_world,
                                    _attrs("world-to-camera transform, OpenCV axes, absolute world frame", u,
                                           comment="the given poses when the collection has them, else predicted")),
        "predicted_world_to_camera": Variable(("view", "row4", "col4"), predicted,
                                              _attrs("predicted world-to-camera transform (Sim(3)-aligned to the "
                                                     "given poses when there are any)", u)),
        "rotation_error": Variable(("view",), nan if r.rotation_error_deg is None else
                                   r.rotation_error_deg.astype(np.float32),
                                   _attrs("angle between predicted and given camera rotation", "degree")),
        "position_error": Variable(("view",), nan if r.position_error is None else r.position_error.astype(np.float32),
                                   _attrs("distance between predicted and given camera centre", u)),
        "pose_flagged": Variable(("view",), np.zeros(S, bool) if r.flagged is None else r.flagged.astype(bool),
                                 _attrs("predicted pose disagrees with the given pose beyond the thresholds")),
    }
    store.write_group("views", per_view, {"description": "per-view predictions at the network's input size"})
    valid = scene.depth > 0
    return {"num_views": S, "height": h, "width": w, "finite_depth_fraction": float(np.isfinite(scene.depth).mean()),
            "depth_median": float(np.median(scene.depth[valid])) if valid.any() else math.nan,
            "depth_conf_min": float(scene.depth_conf.min()), "depth_conf_max": float(scene.depth_conf.max())}


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


@task(name="plan-volume", cache_policy=NO_CACHE)
def plan_volume(scene: Scene, voxel_size: float | None = None, max_voxels: int = 128, truncation_voxels: float = 3.0,
                min_conf_quantile: float = 0.2) -> VolumePlan:
    """The grid over the robust bounds of the confident points (before anything is written, so a bad
    voxel size fails without touching the output)."""
    points = torch.from_numpy(world_points(scene)).reshape(-1, 3)
    conf = torch.from_numpy(scene.depth_conf).reshape(-1)
    keep = torch.from_numpy(scene.depth > 0).reshape(-1) & torch.isfinite(points).all(1)
    if keep.any():  # the least confident points (sky, far background) do not stretch the volume
        kept = conf[keep].numpy()
        step = max(1, len(kept) // BOUNDS_SAMPLES)
        keep &= conf >= float(np.quantile(kept[::step], min_conf_quantile))  # a partition, not torch's full sort
    lo, hi = fusion.scene_bounds(points[keep], conf[keep], max_samples=BOUNDS_SAMPLES)
    provisional = voxel_size or float(np.max(hi - lo)) / max_voxels
    grid = fusion.make_grid(lo - truncation_voxels * provisional, hi + truncation_voxels * provisional, voxel_size,
                            max_voxels=max_voxels)
    return VolumePlan(grid, truncation_voxels * grid.voxel_size, lo, hi)


@task(name="decode-volume", cache_policy=NO_CACHE)
def decode_volume(store: ReconstructionStore, scene: Scene, plan: VolumePlan, device: str | None = None,
                  progress=None) -> dict:
    """Fuse the views into the planned TSDF grid, chunk by chunk, each chunk written straight into the store."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    grid, truncation, lo, hi = plan.grid, plan.truncation, plan.bounds_min, plan.bounds_max
    nz, ny, nx = grid.shape
    coords = grid.coords()
    c = min(VOLUME_CHUNK, max(grid.shape))
    u = scene.units
    axis_vars = {name: Variable((name,), coords[name] + scene.origin[k],
                                _attrs(f"{name} of voxel centres, world frame", u, axis=name.upper()))
                 for k, name in enumerate("xyz")}
    volume_vars = {
        **axis_vars,
        "tsdf": Variable(("z", "y", "x"), None, _attrs("truncated signed distance / truncation (positive in front "
                                                       "of surfaces, NaN unobserved)", "1"),
                         (c, c, c), (nz, ny, nx), np.float16),
        "weight": Variable(("z", "y", "x"), None, _attrs("sum of confidence weights of the observations", "1"),
                           (c, c, c), (nz, ny, nx), np.float32, 0.0),
        "rgb": Variable(("z", "y", "x", "channel"), None,
                        _attrs("weighted mean colour of the observations within the truncation band (0 where none), "
                               "sRGB", "1"),
                        (c, c, c, 3), (nz, ny, nx, 3), np.uint8),
    }
    volume_attrs = {"voxel_size": grid.voxel_size, "truncation": truncation, "crs": scene.crs, "units": u,
                    "origin": scene.origin.tolist()}
    regions = list(grid.chunks(c))
    stats = {"observed": 0, "near_surface": 0, "chunks": len(regions), "done": 0}
    # one writer thread, in order: the group's metadata (while the first chunk is computed), then chunk k
    # while chunk k+1 is computed (Zarr's bookkeeping, compression and I/O overlap torch's arithmetic)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="zarr-write") as writer:
        pending = [writer.submit(store.write_group, "volume", volume_vars, volume_attrs)]

        def on_chunk(region, arrays):
            tsdf = arrays["tsdf"]
            observed = np.isfinite(tsdf)
            stats["observed"] += int(observed.sum())
            stats["near_surface"] += int((np.abs(tsdf[observed]) < 1).sum())
            if pending:
                pending.pop().result()  # surfaces a write error before more work is done
            pending.append(writer.submit(_write_chunk, store, region, arrays))
            stats["done"] += 1
            if progress is not None:
                progress(stats["done"], len(regions))

        fusion.fuse_volume(grid, torch.from_numpy(scene.depth).to(dev), torch.from_numpy(scene.depth_conf).to(dev),
                           torch.from_numpy(scene.images).to(dev), torch.from_numpy(scene.cam_from_world).to(dev),
                           torch.from_numpy(scene.intrinsics).to(dev), truncation, chunk=c, on_chunk=on_chunk)
        if pending:
            pending.pop().result()
    total = nz * ny * nx
    centres = -np.einsum("nba,nb->na", scene.cam_from_world[:, :3, :3], scene.cam_from_world[:, :3, 3])
    box_lo = np.asarray(grid.origin) - grid.voxel_size / 2
    box_hi = box_lo + np.array([nx, ny, nz]) * grid.voxel_size
    mean_centre = centres.mean(0)
    outside = np.maximum(np.maximum(box_lo - mean_centre, mean_centre - box_hi), 0)
    return {"shape": [nz, ny, nx], "volume_extent": float((box_hi - box_lo).max()),
            "camera_extent": float(np.linalg.norm(np.ptp(centres, axis=0))) if len(centres) > 1 else 0.0,
            "camera_to_volume_distance": float(np.linalg.norm(outside)), "voxel_size": grid.voxel_size,
            "truncation": truncation,
            "observed_fraction": stats["observed"] / total, "occupied_fraction": stats["near_surface"] / total,
            "chunks": stats["chunks"], "bounds_min": (np.asarray(lo) + scene.origin).tolist(),
            "bounds_max": (np.asarray(hi) + scene.origin).tolist()}


def _write_chunk(store: ReconstructionStore, region, arrays: dict[str, np.ndarray]) -> None:
    store.write_regions("volume", {"tsdf": (region, arrays["tsdf"].astype(np.float16)),
                                   "weight": (region, arrays["weight"]),
                                   "rgb": (tuple(region) + (slice(None),), arrays["rgb"])})


@task(name="finalize", cache_policy=NO_CACHE)
def finalize(store: ReconstructionStore, summary: dict) -> dict:
    """Provenance and summary into the root attributes, then ``zipmap_status = "complete"`` last."""
    store.complete({"summary": summary})
    return summary


def begin_store(out: str, collection_id: str, storage_options: dict | None, attrs: dict[str, Any],
                run_id: str | None = None) -> ReconstructionStore:
    store = ReconstructionStore(join(out, f"{collection_id}.zarr"), storage_options, run_id=run_id)
    store.begin({"title": f"ZipMap reconstruction of {collection_id}", "Conventions": "CF-1.11", **attrs})
    return store


def provenance(src: str, collection_id: str, weights: str | None, params: dict, storage_options: dict | None,
               model_cfg) -> dict:
    from model.weights import bundled_checkpoint

    return {"source": redact(src), "collection_id": collection_id,
            "model_variant": Path(weights).name if weights else Path(bundled_checkpoint()).name,
            "model_config": model_cfg.to_dict(), "weights": redact(weights) if weights else "bundled",
            "weights_sha256": weights_sha256(weights), "code_version": code_version(), "parameters": params,
            "storage_options": public_options(storage_options), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                          time.gmtime())}


# ---------------------------------------------------------------------------------------------------
# the stage sequence of one collection (the flow and the CLI both run this)
def call_plain(stage, *args, **kwargs):
    """Run a Prefect task's function directly (no API, no task run)."""
    return stage.fn(*args, **kwargs)


def call_task(stage, *args, **kwargs):
    """Run a stage as a Prefect task of the current flow run."""
    return stage(*args, **kwargs)


def run_reconstruction(src: str, out: str, collection_id: str | None = None, weights: str | None = None,
                       voxel_size: float | None = None, max_voxels: int = 128, truncation_voxels: float = 3.0,
                       device: str | None = None, preset: str | None = None, max_offline_frames: int | None = None,
                       storage_options: dict | None = None, call: Callable = call_plain, refine: str = "auto",
                       log: Callable[[str], None] = lambda msg: None, progress=None, run_id: str | None = None,
                       validate_inputs: Callable | None = None, validate_outputs: Callable | None = None) -> dict:
    """Every stage for one collection; returns the summary also stored in the root attributes.

    Input problems raise before anything is written (an earlier output stays as it was); a failure
    after the store was begun marks it ``failed`` — never ``complete``. ``validate_inputs(collection,
    collection_id)`` runs after reading and ``validate_outputs(summary)`` before the store is marked
    complete; either raises to stop the run. ``refine``: pose refinement after the zip pass, ``"auto"``
    (full without given poses, coarse with them), ``"on"`` (full) or ``"off"``
    (``tasks.zip_pass.refinement_steps``).
    """
    cid = safe_id(collection_id) if collection_id else collection_id_from_url(src)
    timings: dict[str, float] = {}

    def stage(name, fn, *args, **kwargs):
        t0 = time.perf_counter()
        result = call(fn, *args, **kwargs)
        timings[name] = round(time.perf_counter() - t0, 4)
        log(f"{name:<14} {timings[name]:7.2f} s")
        return result

    started = time.perf_counter()
    coll = stage("read", read_inputs, src, storage_options)
    if validate_inputs is not None:
        validate_inputs(coll, cid)
    report = stage("check_poses", check_poses, coll)
    steps = refinement_steps(refine, report.poses_given)  # a bad mode fails before the network runs
    views, zr = stage("zip_pass", zip_pass, coll, weights, device, preset, max_offline_frames)
    if steps is not None:
        zr = stage("refine_poses", refine_poses, views, zr, steps)
    scene = stage("place_in_world", place_in_world, coll, views, zr, report)
    plan = stage("plan_volume", plan_volume, scene, voxel_size, max_voxels, truncation_voxels)
    params = {"voxel_size": voxel_size, "max_voxels": max_voxels, "truncation_voxels": truncation_voxels,
              "device": zr.device, "max_offline_frames": max_offline_frames, "preset": preset, "refine_poses": refine}
    model = get_model(weights, preset, device)
    store = begin_store(out, cid, storage_options, provenance(src, cid, weights, params, storage_options, model.cfg),
                        run_id=run_id)
    try:
        views_summary = stage("write_views", write_views, store, scene)
        volume = stage("decode_volume", decode_volume, store, scene, plan, device, progress=progress)
        summary = {
            "collection_id": cid, "source": redact(src), "output": redact(store.url), "status": "complete",
            "num_views": coll.num_frames, "pose_source": coll.source_format, "poses_given": report.poses_given,
            "metric_scale": scene.metric, "units": scene.units, "crs": scene.crs, "origin": scene.origin.tolist(),
            "zip_mode": zr.mode, "device": zr.device, "network_seconds": round(zr.seconds, 4),
            "views": views_summary, "volume": volume, "pose_checks": report.to_dict(), "timings": timings,
            "pose_refinement": zr.info.get("pose_refinement"),
        }
        summary["timings"]["total"] = round(time.perf_counter() - started, 4)
        if validate_outputs is not None:
            validate_outputs(summary)
        stage("finalize", finalize, store, summary)
    except BaseException as exc:
        store.fail(f"{type(exc).__name__}: {exc}")
        raise
    summary["timings"]["total"] = round(time.perf_counter() - started, 4)
    return summary


__all__ = ["run_reconstruction", "call_plain", "call_task", "read_inputs", "check_poses", "zip_pass", "refine_poses",
           "place_in_world", "plan_volume", "write_views", "decode_volume", "finalize", "VolumePlan", "begin_store",
           "provenance", "Scene", "code_version"]
