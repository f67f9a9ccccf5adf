"""Prefect flow ``reconstruct_batch``: a manifest of collections fanned out over a Dask cluster.

    zipmap batch MANIFEST OUT [--cluster ADDRESS | --workers N] [--weights W]

The manifest (CSV or Parquet, columns at least ``collection_id`` and ``source``) is validated
(Great Expectations suite ``manifest`` plus per-row checks: safe and unique ids, a source); bad rows
fail with their reason, the rest run, one Prefect task per collection (``tasks.batch``) on a Dask
cluster through prefect-dask's ``DaskTaskRunner`` — a ``LocalCluster`` by default, or any scheduler
address. Workers with a GPU advertise the ``GPU`` resource and every collection task claims one
there. The run writes ``OUT/_runs/<run id>/summary.parquet`` (one row per manifest row),
``OUT/_runs/<run id>/validation.md`` (the human-readable validation report), a Prefect table
artifact with the same rows, and returns the rows.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable

import dask
import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from storage.tables import read_manifest, write_table
from storage.urls import join, redact
from tasks.batch import process_collections, summary_row
from validation import manifest_row_problems, render_report, validate_manifest

SUMMARY_NAME = "summary.parquet"


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def gpu_workers(address: str | None) -> int:
    """How many workers of the cluster at ``address`` offer a ``GPU`` resource (0 without an address)."""
    if not address:
        return 0
    from distributed import Client

    with Client(address, timeout=30) as client:
        return sum(1 for w in client.scheduler_info(n_workers=-1)["workers"].values()
                   if w.get("resources", {}).get("GPU", 0) > 0)


def task_runner(cluster: str | None = None, workers: int = 2, threads_per_worker: int = 1,
                memory_limit: str = "auto"):
    """``DaskTaskRunner`` for a scheduler address, or a new LocalCluster of ``workers`` processes
    (advertising ``GPU=1`` each when CUDA is present)."""
    from prefect_dask import DaskTaskRunner

    if cluster:
        return DaskTaskRunner(address=cluster)
    import torch

    kwargs = {"n_workers": workers, "threads_per_worker": threads_per_worker, "processes": True,
              "dashboard_address": None, "memory_limit": memory_limit}
    if torch.cuda.is_available():
        kwargs["resources"] = {"GPU": 1}
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)


def closing_table(rows: list[dict]) -> str:
    """The terminal's closing table: one line per collection, then counts."""
    width = max([len(r["collection_id"] or "") for r in rows] + [13])
    lines = [f"{'collection_id':<{width}}  {'status':<8}  {'seconds':>7}  reason / output"]
    for r in rows:
        detail = r["reason"] if r["status"] == "failed" else r["output"]
        lines.append(f"{(r['collection_id'] or '')[:width]:<{width}}  {r['status']:<8}  {r['seconds']:>7.1f}  "
                     f"{detail[:160]}")
    counts = pd.Series([r["status"] for r in rows]).value_counts().to_dict() if rows else {}
    lines.append(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no collections")
    return "\n".join(lines)


@flow(name="reconstruct-batch")
def reconstruct_batch(manifest: str, out: str, weights: str | None = None, voxel_size: float | None = None,
                      max_voxels: int = 128, device: str | None = None, run_id: str | None = None,
                      gpu: bool = False, storage_options: dict | None = None,
                      collections_per_task: int | None = 1) -> list[dict]:
    """Every collection of ``manifest`` into ``OUT/<collection_id>.zarr``; returns the summary rows.

    Run it with a Dask task runner (``reconstruct_batch.with_options(task_runner=task_runner(...))``,
    as ``zipmap batch`` does); ``gpu`` makes each collection task claim a ``GPU`` resource.
    ``collections_per_task`` > 1 groups collections into one task each (less orchestration per
    collection; the rows stay per collection); ``None`` picks about 32 tasks per batch."""
    logger = get_run_logger()
    run_id = run_id or new_run_id()
    t0 = time.perf_counter()
    df = read_manifest(manifest, storage_options)
    problems = manifest_row_problems(df)  # plain pandas: decides which rows run
    params = {"weights": weights, "voxel_size": voxel_size, "max_voxels": max_voxels, "device": device}
    todo = [i for i in df.index if i not in problems]
    per_task = collections_per_task or max(1, -(-len(todo) // 32))
    groups = [todo[k:k + per_task] for k in range(0, len(todo), per_task)]
    futures = []
    resources = dask.annotate(resources={"GPU": 1}) if gpu else contextlib.nullcontext()
    with resources:
        for group in groups:
            items = [(df.at[i, "collection_id"], df.at[i, "source"]) for i in group]
            futures.append(process_collections.submit(items, out, params, storage_options, run_id))
    manifest_outcome = validate_manifest(df)  # the full suite, for the report, while the workers run
    by_index: dict[int, dict] = {}
    for group, future in zip(groups, futures):
        try:
            for i, row in zip(group, future.result()):
                by_index[i] = row
        except Exception as exc:  # the task itself failed (a worker lost too often)  # noqa: BLE001
            for i in group:
                by_index[i] = summary_row(df.at[i, "collection_id"], df.at[i, "source"], "failed",
                                          f"{type(exc).__name__}: {exc}")
    rows = []
    for i, row in df.iterrows():
        if i in problems:
            cid, src = row["collection_id"], row["source"]
            rows.append(summary_row(cid if isinstance(cid, str) else "", src if isinstance(src, str) else "",
                                    "failed", f"manifest row {i + 1}: {problems[i]}"))
        else:
            rows.append(by_index[i])
    elapsed = time.perf_counter() - t0
    run_dir = join(out, "_runs", run_id)
    table = pd.DataFrame(rows)
    table["run_id"] = run_id
    write_table(table, join(run_dir, SUMMARY_NAME), storage_options)
    report = render_report([("manifest", manifest_outcome)], f"Batch {run_id}: {redact(manifest)}")
    report += "\n\n## Collections\n\n" + _rows_markdown(rows)
    _write_text(join(run_dir, "validation.md"), report, storage_options)
    create_table_artifact(table=[{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
                                 for r in rows], key="batch-summary", description=f"run {run_id}: {redact(out)}")
    create_markdown_artifact(markdown=report, key="batch-validation-report")
    logger.info("batch %s: %d collections in %.1f s -> %s", run_id, len(rows), elapsed, redact(run_dir))
    return rows


def _rows_markdown(rows: list[dict]) -> str:
    lines = ["| collection_id | status | reason |", "|---|---|---|"]
    for r in rows:
        reason = (r["reason"] or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r['collection_id']} | {r['status']} | {reason} |")
    return "\n".join(lines)


def _write_text(url: str, text: str, storage_options: dict | None) -> None:
    from storage.urls import filesystem

    fs, path = filesystem(url, storage_options)
    fs.pipe_file(path, text.encode())


def _flush_api_logs() -> None:
    import logging

    from prefect.logging.handlers import APILogHandler

    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    for handler in {h for lg in loggers for h in getattr(lg, "handlers", []) if isinstance(h, APILogHandler)}:
        handler.flush()


@contextlib.contextmanager
def prefect_api(log: Callable[[str], None] | None = None):
    """Make sure flow and Dask workers talk to one Prefect API: the one ``PREFECT_API_URL`` names, else a
    local server started for this run (ephemeral mode would start one per worker process)."""
    from prefect.settings import PREFECT_API_URL

    if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value():
        yield None
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=120)
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by the worker processes started below
    if log:
        log(f"started a local Prefect server for this run at {server.api_url}")
    try:
        yield server.api_url
    finally:
        _flush_api_logs()  # ship the run's last logs before the server goes
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def run_batch(manifest: str, out: str, cluster: str | None = None, workers: int = 2, weights: str | None = None,
              voxel_size: float | None = None, max_voxels: int = 128, device: str | None = None,
              run_id: str | None = None, storage_options: dict | None = None,
              print_fn: Callable[[str], None] | None = None, collections_per_task: int | None = None,
              ) -> list[dict]:
    """``zipmap batch``: choose the task runner, run the flow, print the closing table."""
    import torch

    gpu = gpu_workers(cluster) > 0 if cluster else torch.cuda.is_available()
    runner = task_runner(cluster, workers)
    with prefect_api(print_fn):
        rows = reconstruct_batch.with_options(task_runner=runner)(manifest, out, weights, voxel_size, max_voxels,
                                                                  device, run_id, gpu, storage_options,
                                                                  collections_per_task)
    if print_fn is not None:
        print_fn(closing_table(rows))
    return rows


__all__ = ["reconstruct_batch", "run_batch", "task_runner", "closing_table", "new_run_id", "SUMMARY_NAME"]
