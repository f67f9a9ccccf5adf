"""Tasks of a batch: one Prefect task per collection, run on a Dask worker.

A task takes URLs and small parameters and returns one small summary row; large data never passes
through Prefect or the Dask scheduler. Per collection:

1. skip it when its output is already complete, every chunk it recorded is there, it was made from the
   same inputs, parameters and weights (``tasks.integrity``) and it still passes the output validation
   (reruns are idempotent); otherwise it is redone and its row's reason says why (``redone: ...``);
2. read it, build its per-image table and validate that (Great Expectations suite ``images``):
   failing input is not reconstructed and its row says why;
3. reconstruct it (the stages of ``tasks.stages``, the model loaded once per worker
   process), validating the output summary (suite ``output``) before the store is marked complete —
   a failing output is marked failed, never complete.

One writer per output: before step 3 writes anything the run claims the output (``storage.claims``).
An output another run is writing is left to it: row ``skipped``, reason ``another run <id> is writing
it`` (:class:`errors.Busy`, never retried); one that run completed meanwhile is skipped as complete.

Bad input (:class:`errors.InputError`, :class:`errors.PoseCheckError`, validation failures) ends
the collection with a ``failed`` row and is never retried. Transient faults (:func:`errors.is_transient`:
object-store and network timeouts, lost or refused connections, HTTP 5xx, throttling, a checkpoint URL
that does not answer) are retried by the pipeline's one retry, ``tasks.retry.with_retries``:
:func:`reconstruct_one` runs the collection again after an exponential backoff with jitter, for at
most ``ZIPMAP_RETRY_ATTEMPTS`` attempts (default 10) and ``ZIPMAP_RETRY_PATIENCE`` seconds of waiting
in all (default 60: enough to ride out an object-store outage of tens of seconds); below it each S3
request has only botocore's few quick retries (``storage.urls.fs_options``). A collection still
failing then gets a ``failed`` row.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from errors import (
    Busy,
    InputError,
    PoseCheckError,
    ZipMapError,
    install_log_scrubbing,
    is_transient,
    register_url_secrets,
    scrub,
)
from settings import ReconstructionSettings
from storage.collection import Collection
from storage.tables import image_table
from storage.urls import join, redact
from validation import validate_images, validate_output

from .credentials import with_credentials
from .integrity import reusable
from .retry import retry_policy, with_retries
from .stages import STAGE_NAMES, run_reconstruction

STAGES = STAGE_NAMES  # the summary's t_* columns, one per stage of the sequence

# every log record and traceback of this process through errors.scrub: the flow process imports this module,
# and the Dask workers preload it (flows.batch.worker_config) or import it with their first task
install_log_scrubbing()


class ValidationFailed(ZipMapError, ValueError):
    """A Great Expectations suite failed on a collection's input or output."""


def output_row(summary: dict) -> dict:
    """The output-validation row of a reconstruction summary (see ``validation.validate_output``)."""
    vol, views = summary["volume"], summary["views"]
    return {"collection_id": summary["collection_id"], "finite_depth_fraction": views["finite_depth_fraction"],
            "depth_conf_min": views["depth_conf_min"], "depth_conf_max": views["depth_conf_max"],
            "observed_fraction": vol["observed_fraction"], "occupied_fraction": vol["occupied_fraction"],
            "volume_extent": vol["volume_extent"], "camera_extent": vol["camera_extent"],
            "camera_to_volume_distance": vol["camera_to_volume_distance"], "num_views": summary["num_views"]}


def check_output(summary: dict, record: list[dict] | None = None) -> None:
    """Suite ``output`` on a reconstruction summary; raise :class:`ValidationFailed` if it fails. ``record``
    collects the outcome (compact, see ``ValidationOutcome.compact``) for the run's report."""
    outcome = validate_output(pd.DataFrame([output_row(summary)]))
    if record is not None:
        record.append(outcome.compact())
    if not outcome.success:
        raise ValidationFailed(f"{summary['output']}: output validation failed: " + "; ".join(outcome.failures))


def check_images(coll: Collection, collection_id: str, record: list[dict] | None = None) -> None:
    """Suite ``images`` on a collection's per-image table; like :func:`check_output`."""
    outcome = validate_images(image_table(coll, collection_id))
    if record is not None:
        record.append(outcome.compact())
    if not outcome.success:
        raise ValidationFailed(f"{redact(coll.url)}: input validation failed: " + "; ".join(outcome.failures))


def reusable_summary(url: str, source: str, params: dict | None, storage_options: dict | None,
                     record: list[dict] | None = None) -> tuple[dict | None, str]:
    """``(stored summary, "")`` of an output a rerun may skip: complete, every recorded chunk there, made from
    the same inputs, parameters and weights (:func:`tasks.integrity.reusable`), and still passing the output
    validation (``record``: as for :func:`check_output`); else ``(None, why it is redone)``, the reason ``""``
    when there is no output yet. Transient faults raise: retry, do not recompute over a good output."""
    try:
        settings = ReconstructionSettings.from_dict(params)
    except ZipMapError:
        return None, ""  # the run says what is wrong with them
    attrs, reason = reusable(url, source, settings, storage_options)
    if attrs is None:
        return None, reason
    try:
        summary = attrs.get("summary")
        if not summary:
            return None, "redone: no summary"
        check_output(summary, record)
        return summary, ""
    except ValidationFailed:
        return None, "redone: output validation failed"
    except (KeyError, TypeError) as exc:
        return None, f"redone: unreadable summary ({type(exc).__name__}: {exc})"


def summary_row(collection_id: str, source: str, status: str, reason: str = "", summary: dict | None = None,
                output: str = "", seconds: float = 0.0, started: float = float("nan"),
                validations: list[dict] | None = None) -> dict[str, Any]:
    """One row of the run summary: id, status, reason, start (epoch s; the flow stores it as a UTC timestamp),
    timings per stage (NaN for a skipped collection: nothing ran), metrics, output URL, and ``validations``:
    the compact outcomes of the suites that ran on it (``images``, ``output``), which the flow takes out of the
    row for its report. Every text in it passes through :func:`errors.scrub` (``source`` and ``output`` as
    redacted URLs): no credentials of a source URL or of the storage options reach the summary."""
    register_url_secrets(source)  # a reason may quote a fragment of them (s3fs: bucket "KEY:SECRET@bucket")
    row: dict[str, Any] = {"collection_id": scrub(collection_id), "source": redact(source), "status": status,
                           "reason": scrub(reason), "output": redact(output), "started": started,
                           "seconds": round(seconds, 3), "validations": list(validations or [])}
    timings = {} if status == "skipped" else (summary or {}).get("timings", {})
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
    checks: list[dict] = []  # the suites that ran, compact, for the run's report
    done, redo = reusable_summary(url, source, params, storage_options, checks)
    if done is not None:
        return summary_row(collection_id, source, "skipped", summary=done, output=url, started=started,
                           validations=checks)
    checks.clear()  # a stale output that failed its check is reconstructed (and checked) again
    meanwhile: list[dict] = []

    def recheck() -> dict | None:  # under the output's claim: did another run complete it since the check above?
        record: list[dict] = []
        found, _ = reusable_summary(url, source, params, storage_options, record)
        if found is not None:
            meanwhile.append(found)
            checks.extend(record)
        return found

    try:
        summary = run_reconstruction(source, out, ReconstructionSettings.from_dict(params), collection_id,
                                     storage_options=storage_options, run_id=run_id,
                                     validate_inputs=partial(check_images, record=checks),
                                     validate_outputs=partial(check_output, record=checks), recheck=recheck)
    except Busy as exc:  # another run holds the output's claim (storage.claims): the output is left to it
        return summary_row(collection_id, source, "skipped", exc.reason, output=url,
                           seconds=time.perf_counter() - t0, started=started, validations=checks)
    except (InputError, PoseCheckError, ValidationFailed) as exc:
        return summary_row(collection_id, source, "failed", str(exc), seconds=time.perf_counter() - t0,
                           started=started, validations=checks)
    except ZipMapError as exc:
        if is_transient(exc):
            raise
        return summary_row(collection_id, source, "failed", str(exc), seconds=time.perf_counter() - t0,
                           started=started, validations=checks)
    if meanwhile:
        return summary_row(collection_id, source, "skipped", summary=summary, output=url, started=started,
                           validations=checks)
    notes = ([redo] if redo else []) + [f"warning: {w}" for w in (summary.get("pose_checks") or {}).get("warnings")
                                         or ()]  # e.g. a capture without baseline: complete, never silently
    return summary_row(collection_id, source, "complete", "; ".join(notes), summary=summary, output=url,
                       seconds=time.perf_counter() - t0, started=started, validations=checks)


def reconstruct_one(collection_id: str, source: str, out: str, params: dict | None = None,
                    storage_options: dict | None = None, run_id: str | None = None, attempts: int | None = None,
                    backoff_s: float | None = None, patience_s: float | None = None) -> dict:
    """One collection -> its summary row, transient faults retried (:func:`with_retries`); anything else
    ends in a ``failed`` row at once (one collection never takes others down). A rerun skips an output
    already complete, so a retry never redoes finished work."""
    t_first = time.perf_counter()
    try:
        return with_retries(_process, collection_id, source, out, params, storage_options, run_id,
                            what=collection_id, attempts=attempts, backoff_s=backoff_s, patience_s=patience_s)
    except Exception as exc:  # noqa: BLE001
        seconds = time.perf_counter() - t_first
        tried = f" (after {exc.retried} attempts in {seconds:.0f} s)" if is_transient(exc) else ""
        return summary_row(collection_id, source, "failed", f"{type(exc).__name__}: {exc}{tried}", seconds=seconds)


MAX_RUN_NAME = 100  # characters of a task run name listing collection ids


def collections_run_name(parameters: dict) -> str:
    """The task run name of a group of collections: their ids (``c0, c1, c2``); a long list is cut after a few
    ids and says how many there are (``c0, c1, c2, ... c49 (50 collections)``)."""
    ids = [scrub(item[0]) for item in parameters.get("items") or ()]
    name = ", ".join(ids)
    if len(name) <= MAX_RUN_NAME or len(ids) == 1:
        return name or "no collections"
    tail = f" ... {ids[-1][:40]} ({len(ids)} collections)"
    head = []
    for cid in ids[:-1]:
        if len(", ".join([*head, cid])) + len(tail) > MAX_RUN_NAME:
            break
        head.append(cid)
    return (", ".join(head) or ids[0][:40]) + tail


@task(name="reconstruct-collections", cache_policy=NO_CACHE, task_run_name=collections_run_name)
def process_collections(items: list[tuple[str, str]], out: str, params: dict | None = None,
                        storage_options: dict | None = None, run_id: str | None = None,
                        credentials: str | None = None) -> list[dict]:
    """Several collections in one task (fewer Prefect and Dask round trips per collection): one row each.
    If the worker dies midway, the rerun skips what was already completed. ``credentials``: a reference
    (``env:``, ``file:``, ``block:``, see :mod:`tasks.credentials`) resolved here, on the worker, and merged
    over ``storage_options``; a failed collection's reason is also logged (scrubbed) to the task run."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        logger = get_run_logger()
    except MissingContextError:  # called as a plain function (``process_collections.fn``)
        logger = logging.getLogger(__name__)
    for _, src in items:  # before anything can quote them
        register_url_secrets(src)
    options = with_credentials(storage_options, credentials)
    rows = []
    for cid, src in items:
        rows.append(reconstruct_one(cid, src, out, params, options, run_id))
        if rows[-1]["status"] == "failed":
            logger.warning("%s failed: %s", cid, rows[-1]["reason"])
    return rows


__all__ = ["process_collections", "reconstruct_one", "retry_policy", "summary_row", "output_row",
           "check_output", "check_images", "reusable_summary", "is_transient", "ValidationFailed", "STAGES",
           "collections_run_name", "with_retries"]
