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
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from errors import ConfigError
from storage.tables import read_manifest, write_table
from storage.urls import join, redact
from tasks.batch import process_collections, summary_row
from validation import manifest_row_problems, render_report, validate_manifest

SUMMARY_NAME = "summary.parquet"


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


PROFILE_ENV = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"


def worker_config() -> dict:
    """Dask configuration for the worker processes this package starts.

    Dask's statistical profiler samples every worker thread's stack every 10 ms and keeps a tree of
    the samples per second for the last 1,000 seconds; the network's deep call stacks make that
    ~0.4-0.6 MiB per collection of worker memory, growing for the first quarter hour of every batch
    (see docs/benchmarks.md). It is off unless ``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED`` says
    otherwise (the dashboard's profile page then stays empty).

    The workers also preload the batch tasks (torch, Prefect's task engine, the pipeline: a few
    seconds per process), so that cost is paid when the cluster starts, not by the first batch.
    Returned as the whole configuration: the nanny merges it over its own only at the top level."""
    worker = {"preload": list(dict.fromkeys([*dask.config.get("distributed.worker.preload", []), "tasks.batch"]))}
    if not os.environ.get(PROFILE_ENV):
        worker["profile"] = {"enabled": False}
    return dask.config.merge(dask.config.config, {"distributed": {"worker": worker}})


def task_runner(cluster: str | None = None, workers: int = 2, threads_per_worker: int = 1,
                memory_limit: str = "auto"):
    """``DaskTaskRunner`` for a scheduler address, or a new LocalCluster of ``workers`` processes
    (advertising ``GPU=1`` each when CUDA is present; Dask's profiler off, see :func:`worker_config`)."""
    from prefect_dask import DaskTaskRunner

    if cluster:
        return DaskTaskRunner(address=cluster)
    import torch

    kwargs = {"n_workers": workers, "threads_per_worker": threads_per_worker, "processes": True,
              "dashboard_address": "127.0.0.1:0", "memory_limit": memory_limit, "config": worker_config()}
    if torch.cuda.is_available():
        kwargs["resources"] = {"GPU": 1}
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)


MAX_PER_TASK = 50


def plan_groups(n: int, slots: int, per_task: int | None = None, max_per_task: int = MAX_PER_TASK) -> list[range]:
    """Split ``n`` collections into consecutive groups, one task each.

    ``per_task`` fixes the group size. Without it the sizes are guided: each group takes
    ceil(remaining / (2 x slots)) collections (at most ``max_per_task``), so the first tasks are large
    (few Prefect task runs and Dask round trips per collection) and the last ones hold a single
    collection (the workers finish together instead of one waiting on another's long last task)."""
    if per_task:
        return [range(k, min(n, k + per_task)) for k in range(0, n, per_task)]
    groups, k = [], 0
    while k < n:
        size = min(max_per_task, max(1, -(-(n - k) // (2 * max(1, slots)))))
        groups.append(range(k, k + size))
        k += size
    return groups


def cluster_slots(runner) -> tuple[int, int]:
    """``(threads, gpus)`` of the Dask cluster behind ``runner`` (a started DaskTaskRunner): how many
    collection tasks run at once, without and with a ``GPU`` claim."""
    workers = runner.client.scheduler_info(n_workers=-1)["workers"].values()
    threads = max(1, sum(int(w.get("nthreads", 1)) for w in workers))
    return threads, int(sum(w.get("resources", {}).get("GPU", 0) for w in workers))


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


class ClusterError(ConfigError):
    """The Dask cluster named by ``cluster`` cannot be reached."""


def unreachable(address: str, exc: BaseException) -> ClusterError:
    return ClusterError(f"cannot reach the Dask scheduler at {address!r} ({type(exc).__name__}: {exc}); start it "
                        "(`dask scheduler`) or give the right address (--cluster / the `cluster` parameter); "
                        "leave it empty for a local cluster")


def check_cluster(address: str) -> None:
    """Raise :class:`ClusterError` unless a Dask scheduler answers at ``address`` (within Dask's connect
    timeout, ``distributed.comm.timeouts.connect``)."""
    from distributed import Client

    try:
        with Client(address, set_as_default=False):
            pass
    except (OSError, TimeoutError, ValueError) as exc:
        raise unreachable(address, exc) from None


@contextlib.contextmanager
def _dask_runner(cluster: str | None, workers: int):
    """The flow run's DaskTaskRunner when it was given one (``with_options``), else one started here on
    ``cluster`` (a scheduler address) or on a new LocalCluster of ``workers`` processes."""
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner

    ctx = FlowRunContext.get()
    current = getattr(ctx, "task_runner", None)
    if isinstance(current, DaskTaskRunner):
        yield current
        return
    runner = task_runner(cluster, workers)
    try:
        runner.__enter__()
    except (OSError, TimeoutError, ValueError) as exc:
        raise unreachable(cluster, exc) from None
    try:
        yield runner
    finally:
        runner.__exit__(None, None, None)


def _dashboard_link(runner) -> str | None:
    try:
        return runner.client.dashboard_link
    except Exception:  # noqa: BLE001  (a scheduler without a dashboard)
        return None


@flow(name="reconstruct-batch")
def reconstruct_batch(manifest: str | None = None, out: str = "", weights: str | None = None,
                      voxel_size: float | None = None, max_voxels: int = 128, device: str | None = None,
                      run_id: str | None = None, gpu: bool | None = None, storage_options: dict | None = None,
                      collections_per_task: int | None = None, cluster: str | None = None, workers: int = 2,
                      prefix: str | None = None, since: str | None = None) -> list[dict]:
    """Every collection of ``manifest`` into ``OUT/<collection_id>.zarr``; returns the summary rows.

    ``manifest``: a CSV/Parquet URL; or leave it empty and give ``prefix``, whose collections are
    listed as ``zipmap manifest PREFIX`` does (``since``: only those changed after a time, e.g.
    ``24h``); that manifest is kept as ``OUT/_runs/<run id>/manifest.parquet``.
    ``cluster``: a Dask scheduler address; empty means a LocalCluster of ``workers`` processes
    started for the run. A DaskTaskRunner given with ``with_options`` takes precedence.
    ``gpu``: each collection task claims a ``GPU`` resource (default: when the cluster has GPU
    workers). ``collections_per_task`` > 1 groups collections into one task each (less
    orchestration per collection; the rows stay per collection); empty sizes the groups by
    :func:`plan_groups`, from the cluster's task slots."""
    logger = get_run_logger()
    run_id = run_id or new_run_id()
    t0 = time.perf_counter()
    if not out:
        raise ConfigError("reconstruct-batch: `out` (the output folder or URL) is required")
    run_dir = join(out, "_runs", run_id)
    if manifest:
        df = read_manifest(manifest, storage_options)
    elif prefix:
        from storage.manifest import list_collections

        listing = list_collections(prefix, storage_options, since=since)
        for url, reason in listing.skipped:
            logger.warning("skipped %s: %s", redact(url), reason)
        df = listing.table
        manifest = join(run_dir, "manifest.parquet")
        write_table(df, manifest, storage_options)
        logger.info("%d collection(s) under %s%s", len(df), redact(prefix), f" changed since {since}" if since else "")
    else:
        raise ConfigError("reconstruct-batch: give `manifest` (a CSV/Parquet URL) or `prefix` (a folder to list)")
    problems = manifest_row_problems(df)  # plain pandas: decides which rows run
    params = {"weights": weights, "voxel_size": voxel_size, "max_voxels": max_voxels, "device": device}
    todo = [i for i in df.index if i not in problems]
    with _dask_runner(cluster, workers) as runner:
        link = _dashboard_link(runner)
        if link:
            logger.info("Dask dashboard: %s", link)
            create_link_artifact(link=link, link_text="Dask dashboard", key="dask-dashboard",
                                 description=f"run {run_id}")
        threads, gpus = cluster_slots(runner)
        if gpu is None:
            gpu = gpus > 0
        plan = plan_groups(len(todo), (gpus if gpu else threads), collections_per_task)
        groups = [[todo[k] for k in r] for r in plan]
        futures = []
        resources = dask.annotate(resources={"GPU": 1}) if gpu else contextlib.nullcontext()
        with resources:
            for group in groups:
                items = [(df.at[i, "collection_id"], df.at[i, "source"]) for i in group]
                futures.append(runner.submit(process_collections, parameters={
                    "items": items, "out": out, "params": params, "storage_options": storage_options,
                    "run_id": run_id}))
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


def run_batch(manifest: str | None, out: str, cluster: str | None = None, workers: int = 2,
              weights: str | None = None, voxel_size: float | None = None, max_voxels: int = 128,
              device: str | None = None, run_id: str | None = None, storage_options: dict | None = None,
              print_fn: Callable[[str], None] | None = None, collections_per_task: int | None = None,
              prefix: str | None = None, since: str | None = None) -> list[dict]:
    """``zipmap batch``: run the flow (against ``PREFECT_API_URL``, else a local server), print the
    closing table."""
    # configuration errors end here with one clear line, before a flow run (and its traceback) starts
    if manifest:
        read_manifest(manifest, storage_options)
    if cluster:
        check_cluster(cluster)
    with prefect_api(print_fn):
        rows = reconstruct_batch(manifest, out, weights, voxel_size, max_voxels, device, run_id, None,
                                 storage_options, collections_per_task, cluster=cluster, workers=workers,
                                 prefix=prefix, since=since)
    if print_fn is not None:
        print_fn(closing_table(rows))
    return rows


__all__ = ["reconstruct_batch", "run_batch", "task_runner", "worker_config", "plan_groups", "cluster_slots",
           "closing_table", "new_run_id", "ClusterError", "check_cluster", "SUMMARY_NAME"]
