"""Tasks of a batch: one Prefect task per collection, run on a Dask worker.

A task takes URLs and small parameters and returns one small summary row; large data never passes
through Prefect or the Dask scheduler. Per collection:

1. skip it when its output is already complete and still passes the output validation (reruns are
   idempotent);
2. read it, build its per-image table and validate that (Great Expectations suite ``images``):
   failing input is not reconstructed and its row says why;
3. reconstruct it (``flows.reconstruct.run_reconstruction`` stages, the model loaded once per worker
   process), validating the output summary (suite ``output``) before the store is marked complete —
   a failing output is marked failed, never complete.

Bad input (:class:`errors.InputError`, :class:`errors.PoseCheckError`, validation failures) ends
the task with a ``failed`` row and is never retried; transient errors (object-store I/O, a lost
connection) raise, and Prefect retries them with exponential backoff.
"""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from errors import InputError, PoseCheckError, StorageError, ZipMapError
from storage.collection import Collection
from storage.tables import image_table
from storage.urls import join, redact
from storage.zarr_store import read_attrs, read_status
from validation import validate_images, validate_output

from .reconstruct import run_reconstruction

TRANSIENT = (StorageError, ConnectionError, TimeoutError, OSError)
STAGES = ("read", "check_poses", "zip_pass", "place_in_world", "plan_volume", "write_views", "decode_volume",
          "finalize")


class ValidationFailed(ZipMapError, ValueError):
    """A Great Expectations suite failed on a collection's input or output."""


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: I/O and connection trouble, never bad input."""
    return isinstance(exc, TRANSIENT) and not isinstance(exc, (InputError, PoseCheckError, ValueError))


def _retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001
        return is_transient(exc)
    return False


def output_row(summary: dict) -> dict:
    """The output-validation row of a reconstruction summary (see ``validation.validate_output``)."""
    vol, views = summary["volume"], summary["views"]
    return {"collection_id": summary["collection_id"], "finite_depth_fraction": views["finite_depth_fraction"],
            "depth_conf_min": views["depth_conf_min"], "depth_conf_max": views["depth_conf_max"],
            "observed_fraction": vol["observed_fraction"], "occupied_fraction": vol["occupied_fraction"],
            "volume_extent": vol["volume_extent"], "camera_extent": vol["camera_extent"],
            "camera_to_volume_distance": vol["camera_to_volume_distance"], "num_views": summary["num_views"]}


def check_output(summary: dict) -> None:
    outcome = validate_output(pd.DataFrame([output_row(summary)]))
    if not outcome.success:
        raise ValidationFailed(f"{summary['output']}: output validation failed: " + "; ".join(outcome.failures))


def check_images(coll: Collection, collection_id: str) -> None:
    outcome = validate_images(image_table(coll, collection_id))
    if not outcome.success:
        raise ValidationFailed(f"{redact(coll.url)}: input validation failed: " + "; ".join(outcome.failures))


def completed_summary(url: str, storage_options: dict | None) -> dict | None:
    """The stored summary of a complete output that still passes the output validation, else None."""
    try:
        if read_status(url, storage_options) != "complete":
            return None
        summary = (read_attrs(url, storage_options) or {}).get("summary")
        if not summary:
            return None
        check_output(summary)
        return summary
    except (ZipMapError, KeyError, TypeError):
        return None


def summary_row(collection_id: str, source: str, status: str, reason: str = "", summary: dict | None = None,
                output: str = "", seconds: float = 0.0, started: float = float("nan")) -> dict[str, Any]:
    """One row of the run summary: id, status, reason, start (epoch s), timings per stage, metrics, output URL."""
    row: dict[str, Any] = {"collection_id": collection_id, "source": redact(source), "status": status,
                           "reason": reason, "output": redact(output), "started": started,
                           "seconds": round(seconds, 3)}
    timings = (summary or {}).get("timings", {})
    for stage in STAGES:
        row[f"t_{stage}"] = float(timings.get(stage, np.nan))
    vol, views = (summary or {}).get("volume", {}), (summary or {}).get("views", {})
    row.update(num_views=int((summary or {}).get("num_views", 0)), zip_mode=(summary or {}).get("zip_mode", ""),
               device=(summary or {}).get("device", ""),
               observed_fraction=float(vol.get("observed_fraction", np.nan)),
               occupied_fraction=float(vol.get("occupied_fraction", np.nan)),
               depth_median=float(views.get("depth_median", np.nan)),
               flagged_views=int((summary or {}).get("pose_checks", {}).get("num_flagged", 0)))
    return row


def _process(collection_id: str, source: str, out: str, params: dict | None, storage_options: dict | None,
             run_id: str | None) -> dict:
    t0, started = time.perf_counter(), time.time()
    url = join(out, f"{collection_id}.zarr")
    done = completed_summary(url, storage_options)
    if done is not None:
        return summary_row(collection_id, source, "skipped", summary=done, output=url, started=started)
    try:
        summary = run_reconstruction(source, out, collection_id, storage_options=storage_options, run_id=run_id,
                                     validate_inputs=check_images, validate_outputs=check_output,
                                     **(params or {}))
    except (InputError, PoseCheckError, ValidationFailed) as exc:
        return summary_row(collection_id, source, "failed", str(exc), seconds=time.perf_counter() - t0,
                           started=started)
    except ZipMapError as exc:
        if is_transient(exc):
            raise
        return summary_row(collection_id, source, "failed", str(exc), seconds=time.perf_counter() - t0,
                           started=started)
    return summary_row(collection_id, source, "complete", summary=summary, output=url,
                       seconds=time.perf_counter() - t0, started=started)


def reconstruct_one(collection_id: str, source: str, out: str, params: dict | None = None,
                    storage_options: dict | None = None, run_id: str | None = None, attempts: int = 3,
                    backoff_s: float = 2.0) -> dict:
    """One collection -> its summary row; transient errors are retried with exponential backoff and
    jitter, anything else ends in a ``failed`` row (one collection never takes others down)."""
    for attempt in range(attempts):
        t0 = time.perf_counter()
        try:
            return _process(collection_id, source, out, params, storage_options, run_id)
        except Exception as exc:  # noqa: BLE001
            if is_transient(exc) and attempt + 1 < attempts:
                time.sleep(backoff_s * 2 ** attempt * (0.5 + random.random()))
                continue
            tried = f" (after {attempt + 1} attempts)" if is_transient(exc) else ""
            return summary_row(collection_id, source, "failed", f"{type(exc).__name__}: {exc}{tried}",
                               seconds=time.perf_counter() - t0)
    raise AssertionError("unreachable")


@task(name="reconstruct-collection", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_jitter_factor=0.5, retry_condition_fn=_retry_transient, cache_policy=NO_CACHE)
def process_collection(collection_id: str, source: str, out: str, params: dict | None = None,
                       storage_options: dict | None = None, run_id: str | None = None) -> dict:
    """One collection of a batch -> its summary row (``complete``, ``failed`` or ``skipped``); transient
    errors raise and Prefect retries them."""
    return _process(collection_id, source, out, params, storage_options, run_id)


@task(name="reconstruct-collections", cache_policy=NO_CACHE)
def process_collections(items: list[tuple[str, str]], out: str, params: dict | None = None,
                        storage_options: dict | None = None, run_id: str | None = None) -> list[dict]:
    """Several collections in one task (fewer Prefect and Dask round trips per collection): one row each.
    If the worker dies midway, the rerun skips what was already completed."""
    return [reconstruct_one(cid, src, out, params, storage_options, run_id) for cid, src in items]


__all__ = ["process_collection", "process_collections", "reconstruct_one", "summary_row", "output_row",
           "check_output", "check_images", "completed_summary", "is_transient", "ValidationFailed", "STAGES"]
