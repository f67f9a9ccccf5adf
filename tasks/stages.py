"""The stages of reconstructing one collection, defined once, without Prefect.

read -> check_poses -> zip_pass -> refine_poses -> place_in_world -> plan_volume -> write_views ->
decode_volume -> finalize

Each stage is a short call into ``model/`` (the algorithms) or ``storage/`` (reading, the store
schema). :data:`STAGES` lists them in order; :func:`run_reconstruction` runs the sequence through a
``call(name, *args)`` hook: :func:`call_plain` from the CLI, Prefect tasks from the flow
(``tasks.reconstruct``). The batch summary's ``t_*`` columns come from :data:`STAGE_NAMES`. Large
arrays pass between stages in memory, inside one process; only the Zarr store leaves it.
"""

from __future__ import annotations

import functools
import subprocess
import time
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from errors import StorageError, ZipMapError, io_error
from model import fusion
from model.inference import (
    Views,
    ZipResult,
    get_model,
    prepare_views,
    refine_result,
    refinement_steps,
    weights_sha256,
    zip_collection,
)
from model.placement import Scene, VolumePlan, volume_summary
from model.placement import place_in_world as place
from model.placement import plan_volume as plan_grid
from model.pose_checks import PoseCheckReport, check_distinct_images, check_given_poses
from settings import ReconstructionSettings
from storage.claims import acquire as claim_output
from storage.collection import Collection, read_collection
from storage.integrity import FINGERPRINT_KEY
from storage.schema import VOLUME_CHUNK, VolumeWriter, begin_store
from storage.schema import write_views as write_view_group
from storage.urls import collection_id_from_url, join, public_options, redact, safe_id
from storage.zarr_store import ReconstructionStore

from .integrity import fingerprint

POSE_FILES = {"zipmap": "cameras.json", "nerfstudio": "transforms.json", "colmap": "COLMAP model (images/cameras)"}

STAGES: dict[str, Callable] = {}


def stage(fn: Callable) -> Callable:
    """Register ``fn`` as the next stage of the sequence, under its function name."""
    STAGES[fn.__name__] = fn
    return fn


# --- the sequence, in order ---------------------------------------------------------------------------
@stage
def read(src: str, storage_options: dict | None = None) -> Collection:
    """Read images and given cameras (any of the three pose formats); bad input raises naming the file."""
    return read_collection(src, storage_options=storage_options, with_depth=False)


@stage
def check_poses(coll: Collection) -> PoseCheckReport:
    """Checks that need no network: no two images alike, then the given cameras' rules and physical limits
    (in the pose file's units; nothing more to check without poses)."""
    if len(coll.image_info) == coll.num_frames:  # each image's file, as read
        paths = [redact(info["path"]) for info in coll.image_info]
    else:
        paths = [join(redact(coll.url), "images", name) for name in coll.names]
    check_distinct_images(coll.images, paths)
    if coll.cam_from_world is None:
        return PoseCheckReport(poses_given=False, num_views=coll.num_frames)
    return check_given_poses(coll.cam_from_world, coll.intrinsics, coll.image_sizes(), list(coll.names),
                             pose_source(coll), units=coll.units)


@stage
def zip_pass(coll: Collection, settings: ReconstructionSettings) -> tuple[Views, ZipResult]:
    """The network over all views in one pass (the model loaded once per process)."""
    model = get_model(settings.weights, settings.preset, settings.device)
    views = prepare_views(coll.images, coll.intrinsics, model.cfg)
    return views, zip_collection(model, views, settings.max_offline_frames)


@stage
def refine_poses(views: Views, zr: ZipResult, steps: tuple[int, ...]) -> ZipResult:
    """The predicted relative poses of neighbouring frames refined by direct image alignment."""
    return refine_result(views, zr, steps)


@stage
def place_in_world(coll: Collection, views: Views, zr: ZipResult, report: PoseCheckReport) -> Scene:
    """Given poses fix the world frame and metric scale; else the first predicted camera does."""
    return place(coll.names, coll.cam_from_world, coll.units, coll.crs, views, zr, report,
                 report.source or redact(coll.url))


@stage
def plan_volume(scene: Scene, settings: ReconstructionSettings) -> VolumePlan:
    """The TSDF grid, before anything is written (a grid that cannot be made leaves the output alone)."""
    return plan_grid(scene, settings.voxel_size, settings.max_voxels, settings.truncation_voxels)


@stage
def write_views(store: ReconstructionStore, scene: Scene) -> dict:
    """``/views`` of the store; returns the numbers the output validation reads."""
    r = scene.report
    write_view_group(store, names=scene.names, depth=scene.depth, depth_conf=scene.depth_conf, images=scene.images,
                     world_points=scene.world_points(), origin=scene.origin, intrinsics=scene.intrinsics,
                     world_to_camera=scene.absolute(scene.cam_from_world),
                     predicted_world_to_camera=scene.absolute(scene.predicted_cam_from_world),
                     rotation_error=r.rotation_error_deg, position_error=r.position_error, pose_flagged=r.flagged,
                     units=scene.units)
    S, h, w = scene.depth.shape
    valid = scene.depth > 0
    return {"num_views": S, "height": h, "width": w, "finite_depth_fraction": float(np.isfinite(scene.depth).mean()),
            "depth_median": float(np.median(scene.depth[valid])) if valid.any() else float("nan"),
            "depth_conf_min": float(scene.depth_conf.min()), "depth_conf_max": float(scene.depth_conf.max())}


@stage
def decode_volume(store: ReconstructionStore, scene: Scene, plan: VolumePlan, device: str | None = None,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Fuse the views into the planned TSDF grid chunk by chunk, each chunk written straight into the store."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    grid = plan.grid
    c = min(VOLUME_CHUNK, max(grid.shape))
    coords = grid.coords()
    axes = {name: coords[name] + scene.origin[k] for k, name in enumerate("xyz")}
    group_attrs = {"voxel_size": grid.voxel_size, "truncation": plan.truncation, "crs": scene.crs,
                   "units": scene.units, "origin": scene.origin.tolist()}
    regions = list(grid.chunks(c))
    stats = {"observed": 0, "near_surface": 0, "done": 0}
    with VolumeWriter(store, axes, grid.shape, c, group_attrs, scene.units) as writer:
        def on_chunk(region, arrays):
            tsdf = arrays["tsdf"]
            observed = np.isfinite(tsdf)
            stats["observed"] += int(observed.sum())
            stats["near_surface"] += int((np.abs(tsdf[observed]) < 1).sum())
            writer.write(region, arrays)
            stats["done"] += 1
            if progress is not None:
                progress(stats["done"], len(regions))

        def tensor(a):
            return torch.from_numpy(a).to(dev)

        fusion.fuse_volume(grid, tensor(scene.depth), tensor(scene.depth_conf), tensor(scene.images),
                           tensor(scene.cam_from_world), tensor(scene.intrinsics), plan.truncation, chunk=c,
                           on_chunk=on_chunk)
    return volume_summary(scene, plan, stats["observed"], stats["near_surface"], len(regions))


@stage
def finalize(store: ReconstructionStore, summary: dict) -> dict:
    """The summary into the root attributes, then ``zipmap_status = "complete"``, last."""
    store.complete({"summary": summary})
    return summary


STAGE_NAMES: tuple[str, ...] = tuple(STAGES)


# --- running the sequence -------------------------------------------------------------------------------
def call_plain(name: str, *args, **kwargs):
    """Run a stage directly (no Prefect)."""
    return STAGES[name](*args, **kwargs)


def pose_source(coll: Collection) -> str:
    return join(redact(coll.url), POSE_FILES.get(coll.source_format, "poses"))


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


def provenance(src: str, collection_id: str, settings: ReconstructionSettings, model, views: Views, scene: Scene,
               zr: ZipResult, storage_options: dict | None) -> dict[str, Any]:
    """The root attributes a store begins with: where it came from, which network and checkpoint (variant,
    input size, weights URL and sha256), the settings, and the world frame (origin, units, metric scale)."""
    from model.weights import bundled_checkpoint

    weights = settings.weights or bundled_checkpoint()
    return {"source": redact(src), "collection_id": collection_id, "model_variant": model.variant,
            "model_config": model.cfg.to_dict(), "input_size": list(views.images.shape[-2:]),
            "weights": redact(weights), "weights_bundled": settings.weights is None,
            "weights_sha256": weights_sha256(settings.weights), "code_version": code_version(),
            "parameters": {**settings.to_dict(), "weights": redact(weights), "device": zr.device},
            "storage_options": public_options(storage_options), "origin": scene.origin.tolist(),
            "units": scene.units, "crs": scene.crs, "metric_scale": scene.metric,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def run_reconstruction(src: str, out: str, settings: ReconstructionSettings | None = None,
                       collection_id: str | None = None, storage_options: dict | None = None,
                       call: Callable = call_plain, log: Callable[[str], None] = lambda msg: None,
                       progress: Callable[[int, int], None] | None = None, run_id: str | None = None,
                       validate_inputs: Callable | None = None, validate_outputs: Callable | None = None,
                       recheck: Callable[[], dict | None] | None = None) -> dict:
    """Every stage for one collection; returns the summary also stored in the root attributes.

    ``settings`` were validated when they were made. Input problems raise before anything is written
    (an earlier output stays as it was); a failure after the store was begun marks it ``failed``,
    never ``complete``. ``validate_inputs(collection, collection_id)`` runs after reading and
    ``validate_outputs(summary)`` before the store is marked complete; either raises to stop the run.

    One writer per output: after the input checks, before the zip pass, the run claims the output
    (``storage.claims``; :class:`errors.Busy` when another run holds it) and holds the claim until it
    returns; the store is begun, written and marked complete only under it. ``recheck()`` runs once the
    claim is held: a summary it returns (another run completed the output meanwhile) is returned as it
    is, and nothing is written.
    """
    settings = settings or ReconstructionSettings()
    cid = safe_id(collection_id) if collection_id else collection_id_from_url(src)
    timings: dict[str, float] = {}

    def run(name, *args, **kwargs):
        t0 = time.perf_counter()
        result = call(name, *args, **kwargs)
        timings[name] = round(time.perf_counter() - t0, 4)
        log(f"{name:<14} {timings[name]:7.2f} s")
        return result

    started = time.perf_counter()
    made_from = fingerprint(src, settings, storage_options)  # listed before reading: a later change shows on a rerun
    coll = run("read", src, storage_options)
    if validate_inputs is not None:
        validate_inputs(coll, cid)
    report = run("check_poses", coll)
    steps = refinement_steps(settings.refine_poses, report.poses_given)
    get_model(settings.weights, settings.preset, settings.device)  # a bad checkpoint fails before anything is written
    run_id = run_id or uuid.uuid4().hex
    claim = claim_output(out, cid, run_id, storage_options)  # errors.Busy: another run is writing this output
    try:
        if recheck is not None and (done := recheck()) is not None:
            claim.release()
            return done
        views, zr = run("zip_pass", coll, settings)
        if steps is not None:
            zr = run("refine_poses", views, zr, steps)
        scene = run("place_in_world", coll, views, zr, report)
        plan = run("plan_volume", scene, settings)
        model = get_model(settings.weights, settings.preset, settings.device)
        store = begin_store(out, cid, {**provenance(src, cid, settings, model, views, scene, zr, storage_options),
                                       FINGERPRINT_KEY: made_from},
                            storage_options, run_id=run_id, claim=claim)
    except BaseException:
        claim.release()
        raise
    try:
        views_summary = run("write_views", store, scene)
        volume = run("decode_volume", store, scene, plan, settings.device, progress=progress)
        summary = {
            "collection_id": cid, "source": redact(src), "output": redact(store.url), "status": "complete",
            "num_views": coll.num_frames, "pose_source": coll.source_format, "poses_given": report.poses_given,
            "metric_scale": scene.metric, "units": scene.units, "crs": scene.crs, "origin": scene.origin.tolist(),
            "model_variant": model.variant, "zip_mode": zr.mode, "device": zr.device,
            "network_seconds": round(zr.seconds, 4), "views": views_summary, "volume": volume,
            "pose_checks": report.to_dict(), "timings": timings, "pose_refinement": zr.info.get("pose_refinement"),
        }
        summary["timings"]["total"] = round(time.perf_counter() - started, 4)
        if validate_outputs is not None:
            validate_outputs(summary)
        run("finalize", store, summary)
    except BaseException as exc:
        store.fail(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, OSError) and not isinstance(exc, ZipMapError):  # a full disk, a lost mount: name the store
            raise io_error(exc, redact(store.url), "cannot be written", StorageError) from exc
        raise
    finally:
        claim.release()
    summary["timings"]["total"] = round(time.perf_counter() - started, 4)
    return summary


__all__ = ["STAGES", "STAGE_NAMES", "stage", "run_reconstruction", "call_plain", "provenance", "code_version",
           "Scene", "VolumePlan"] + list(STAGES)
