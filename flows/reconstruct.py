"""Prefect flow ``reconstruct_collection``: one photo collection in, one Zarr store out.

    python -m flows.reconstruct SRC OUT [--voxel-size M] [--weights W] [--device cpu|cuda]

The same stage sequence (:func:`run_reconstruction`) runs without Prefect from ``zipmap
reconstruct``: each stage is a Prefect task, called as a task inside the flow (so the run shows
stage by stage in Prefect's UI) and through ``.fn`` from the CLI (no API server needed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from prefect import flow, get_run_logger

from storage.urls import collection_id_from_url, redact, safe_id
from tasks.reconstruct import (
    begin_store,
    check_poses,
    decode_volume,
    finalize,
    place_in_world,
    plan_volume,
    provenance,
    read_inputs,
    write_views,
    zip_pass,
)
from tasks.zip_pass import get_model


def call_plain(stage, *args, **kwargs):
    """Run a Prefect task's function directly (no API, no task run)."""
    return stage.fn(*args, **kwargs)


def call_task(stage, *args, **kwargs):
    """Run a stage as a Prefect task of the current flow run."""
    return stage(*args, **kwargs)


def run_reconstruction(src: str, out: str, collection_id: str | None = None, weights: str | None = None,
                       voxel_size: float | None = None, max_voxels: int = 128, truncation_voxels: float = 3.0,
                       device: str | None = None, preset: str | None = None, max_offline_frames: int | None = None,
                       storage_options: dict | None = None, call: Callable = call_plain,
                       log: Callable[[str], None] = lambda msg: None, progress=None) -> dict:
    """Every stage for one collection; returns the summary also stored in the root attributes.

    Input problems raise before anything is written (an earlier output stays as it was); a failure
    after the store was begun marks it ``failed`` — never ``complete``.
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
    report = stage("check_poses", check_poses, coll)
    views, zr = stage("zip_pass", zip_pass, coll, weights, device, preset, max_offline_frames)
    scene = stage("place_in_world", place_in_world, coll, views, zr, report)
    plan = stage("plan_volume", plan_volume, scene, voxel_size, max_voxels, truncation_voxels)
    params = {"voxel_size": voxel_size, "max_voxels": max_voxels, "truncation_voxels": truncation_voxels,
              "device": zr.device, "max_offline_frames": max_offline_frames, "preset": preset}
    model = get_model(weights, preset, device)
    store = begin_store(out, cid, storage_options, provenance(src, cid, weights, params, storage_options, model.cfg))
    try:
        views_summary = stage("write_views", write_views, store, scene)
        volume = stage("decode_volume", decode_volume, store, scene, plan, device, progress=progress)
        summary = {
            "collection_id": cid, "source": redact(src), "output": redact(store.url), "status": "complete",
            "num_views": coll.num_frames, "pose_source": coll.source_format, "poses_given": report.poses_given,
            "metric_scale": scene.metric, "units": scene.units, "crs": scene.crs, "origin": scene.origin.tolist(),
            "zip_mode": zr.mode, "device": zr.device, "network_seconds": round(zr.seconds, 4),
            "views": views_summary, "volume": volume, "pose_checks": report.to_dict(), "timings": timings,
        }
        summary["timings"]["total"] = round(time.perf_counter() - started, 4)
        stage("finalize", finalize, store, summary)
    except BaseException as exc:
        store.fail(f"{type(exc).__name__}: {exc}")
        raise
    summary["timings"]["total"] = round(time.perf_counter() - started, 4)
    return summary


@flow(name="reconstruct-collection")
def reconstruct_collection(src: str, out: str, collection_id: str | None = None, weights: str | None = None,
                           voxel_size: float | None = None, max_voxels: int = 128, device: str | None = None,
                           max_offline_frames: int | None = None) -> dict:
    """Reconstruct one collection (local path or URL) into ``OUT/<collection_id>.zarr``."""
    logger = get_run_logger()
    summary = run_reconstruction(src, out, collection_id, weights, voxel_size, max_voxels, device=device,
                                 max_offline_frames=max_offline_frames, call=call_task, log=logger.info)
    logger.info("complete: %s", summary["output"])
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.reconstruct", description=__doc__.split("\n")[0])
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--id", dest="collection_id")
    p.add_argument("--weights")
    p.add_argument("--voxel-size", type=float)
    p.add_argument("--device")
    args = p.parse_args(argv)
    summary = reconstruct_collection(args.src, args.out, args.collection_id, args.weights, args.voxel_size,
                                     device=args.device)
    print(json.dumps({k: summary[k] for k in ("collection_id", "output", "status")}))
    return 0


__all__ = ["reconstruct_collection", "run_reconstruction", "call_plain", "call_task"]

if __name__ == "__main__":
    sys.exit(main())
