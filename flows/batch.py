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
from settings import ReconstructionSettings
from storage.tables import read_manifest, write_table
from storage.urls import join, redact
from tasks.batch import process_collections, summary_row
from tasks.retry import with_retries
from validation import ValidationOutcome, manifest_row_problems, render_report, validate_manifest

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
        close_workers(runner)
        runner.__exit__(None, None, None)


WORKER_EXIT_TIMEOUT = 60.0  # seconds a LocalCluster worker process may take to exit at the end of a batch


def close_workers(runner, timeout: float = WORKER_EXIT_TIMEOUT) -> None:
    """Close the workers of the LocalCluster behind ``runner`` (a started DaskTaskRunner), giving each worker
    process ``timeout`` seconds to exit on its own, before the cluster itself closes.

    Dask's own close gives a worker process 4 seconds and then kills it ("Worker process still alive after
    4.0 seconds, killing"); a worker that loaded torch, the model and Great Expectations takes 1-3 s just to
    finalise its interpreter, longer when two of them exit at once on a busy machine. A process still alive
    after ``timeout`` is killed (with Dask's warning). Clusters this package did not start (a scheduler
    address) are left alone."""
    import asyncio

    from distributed import LocalCluster

    cluster = getattr(runner, "_cluster", None)  # prefect-dask keeps the cluster it started here
    if not isinstance(cluster, LocalCluster) or not cluster.workers:
        return

    async def close() -> None:
        nannies = [w for w in list(cluster.workers.values()) if hasattr(w, "kill")]  # worker processes only
        await asyncio.gather(*(w.close(timeout=timeout, reason="batch-done") for w in nannies))

    try:
        runner.client.close()  # first: the futures it holds would make the scheduler miss the workers' results
        cluster.sync(close)
    except Exception as exc:  # noqa: BLE001  (the cluster's own close follows and cleans up)
        import logging

        logging.getLogger(__name__).debug("closing the workers: %s", exc)


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
                      prefix: str | None = None, since: str | None = None, preset: str | None = None,
                      refine_poses: str = "auto") -> list[dict]:
    """Every collection of ``manifest`` into ``OUT/<collection_id>.zarr``; returns the summary rows.

    ``manifest``: a CSV/Parquet URL; or leave it empty and give ``prefix``, whose collections are
    listed as ``zipmap manifest PREFIX`` does (``since``: only those changed after a time, e.g.
    ``24h``); that manifest is kept as ``OUT/_runs/<run id>/manifest.parquet``.
    ``cluster``: a Dask scheduler address; empty means a LocalCluster of ``workers`` processes
    started for the run. A DaskTaskRunner given with ``with_options`` takes precedence.
    ``gpu``: each collection task claims a ``GPU`` resource (default: when the cluster has GPU
    workers). ``collections_per_task`` > 1 groups collections into one task each (less
    orchestration per collection; the rows stay per collection); empty sizes the groups by
    :func:`plan_groups`, from the cluster's task slots. ``weights``: a checkpoint URL (the four published
    ``.pt`` files are recognised; ``preset`` overrides that); empty: the bundled model."""
    logger = get_run_logger()
    settings = ReconstructionSettings(weights=weights or None, preset=preset or None, voxel_size=voxel_size,
                                      max_voxels=max_voxels, device=device or None, refine_poses=refine_poses)
    if not cluster:  # the stages run on this machine's local cluster
        settings.check_here()
    run_id = run_id or new_run_id()
    t0 = time.perf_counter()
    if not out:
        raise ConfigError("reconstruct-batch: `out` (the output folder or URL) is required")
    run_dir = join(out, "_runs", run_id)
    if manifest:
        df = with_retries(read_manifest, manifest, storage_options, what=redact(manifest))
    elif prefix:
        from storage.manifest import list_collections

        listing = list_collections(prefix, storage_options, since=since)
        for url, reason in listing.skipped:
            logger.warning("skipped %s: %s", redact(url), reason)
        df = listing.table
        manifest = join(run_dir, "manifest.parquet")
        with_retries(write_table, df, manifest, storage_options, what=redact(manifest))
        logger.info("%d collection(s) under %s%s", len(df), redact(prefix), f" changed since {since}" if since else "")
    else:
        raise ConfigError("reconstruct-batch: give `manifest` (a CSV/Parquet URL) or `prefix` (a folder to list)")
    problems = manifest_row_problems(df)  # plain pandas: decides which rows run
    params = settings.to_dict()
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
    # the suites that ran, for the report: the manifest's, then each collection's (carried back in its row)
    sections = [("manifest", manifest_outcome)]
    for r in rows:
        sections += [(r["collection_id"] or "(no id)", ValidationOutcome.from_dict(v))
                     for v in r.pop("validations", None) or ()]
    table = pd.DataFrame(rows)
    if "started" in table:  # epoch seconds in the rows, a UTC timestamp in the table
        table["started"] = pd.to_datetime(table["started"].astype(float), unit="s", utc=True)
    table["run_id"] = run_id
    with_retries(write_table, table, join(run_dir, SUMMARY_NAME), storage_options, what="the run summary")
    report = render_report(sections, f"Batch {run_id}: {redact(manifest)}", collections=rows)
    with_retries(_write_text, join(run_dir, "validation.md"), report, storage_options,
                 what="the validation report")
    create_table_artifact(table=[_artifact_row(r) for r in rows], key="batch-summary",
                          description=f"run {run_id}: {redact(out)}")
    create_markdown_artifact(markdown=report, key="batch-validation-report")
    logger.info("batch %s: %d collections in %.1f s -> %s", run_id, len(rows), elapsed, redact(run_dir))
    return rows


def _artifact_row(row: dict) -> dict:
    """A summary row for the table artifact (JSON): NaN as null, ``started`` as UTC ISO 8601."""
    out = {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
    if out.get("started") is not None:
        out["started"] = pd.Timestamp(out["started"], unit="s", tz="UTC").isoformat()
    return out


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
def _environ(values: dict[str, str]):
    """Set environment variables (inherited by the processes started meanwhile); restore them afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def prefect_api(log: Callable[[str], None] | None = None):
    """Make sure flow and Dask workers talk to one Prefect API: the one ``PREFECT_API_URL`` names, else a
    local server started for this run (ephemeral mode would start one per worker process).

    That server is the run's own: its SQLite database, like everything else Prefect keeps on disk during the
    run (``PREFECT_HOME``: local results, the memo store), lies in a temporary folder, never in the user's
    ``~/.prefect`` (whose database another server or run may hold, "database is locked"), and is removed
    afterwards; its analytics heartbeat is off. The flow process (Prefect settings) and the worker processes
    started meanwhile (environment) all point at it."""
    from prefect.settings import PREFECT_API_URL

    if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value():
        yield None
        return
    import shutil
    import tempfile

    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import (
        PREFECT_HOME,
        PREFECT_PROFILES_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_DATABASE_CONNECTION_URL,
        temporary_settings,
    )

    home = tempfile.mkdtemp(prefix="zipmap-prefect-")
    database = "sqlite+aiosqlite:///" + os.path.join(home, "prefect.db")
    settings = {PREFECT_HOME: home, PREFECT_SERVER_DATABASE_CONNECTION_URL: database,
                PREFECT_SERVER_ANALYTICS_ENABLED: False,
                PREFECT_PROFILES_PATH: str(PREFECT_PROFILES_PATH.value())}  # the user's profiles still apply
    env = {"PREFECT_HOME": home, "PREFECT_SERVER_DATABASE_CONNECTION_URL": database,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_PROFILES_PATH": str(PREFECT_PROFILES_PATH.value())}
    server = None
    try:
        with _environ(env), temporary_settings(updates=settings):
            server = SubprocessASGIServer()
            server.start(timeout=120)
            if log:
                log(f"started a local Prefect server for this run at {server.api_url}")
            with _environ({"PREFECT_API_URL": server.api_url}), temporary_settings(
                    updates={PREFECT_API_URL: server.api_url}):
                try:
                    yield server.api_url
                finally:
                    _flush_api_logs()  # ship the run's last logs before the server goes
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(home, ignore_errors=True)


QUIET_ENV = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING", "DASK_LOGGING__DISTRIBUTED": "warning"}


@contextlib.contextmanager
def quiet_logs(verbose: bool = False):
    """Unless ``verbose``: Prefect's console output and Dask's ``distributed`` loggers at WARNING, in this
    process and in the processes started meanwhile (the temporary Prefect server, LocalCluster workers:
    through :data:`QUIET_ENV`, where the user has not set those variables). Prefect's run logs still reach
    its API (the UI shows them). Restored afterwards."""
    if verbose:
        yield
        return
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.root] + [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    handlers = {h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}
    if os.environ.get("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"):
        handlers = set()
    distributed = logging.getLogger("distributed")
    saved = [(h, h.level) for h in handlers] + [(distributed, distributed.level)]
    for h in handlers:
        h.setLevel(max(h.level, logging.WARNING))
    if not os.environ.get("DASK_LOGGING__DISTRIBUTED") and distributed.getEffectiveLevel() < logging.WARNING:
        distributed.setLevel(logging.WARNING)
    try:
        with _environ({k: v for k, v in QUIET_ENV.items() if not os.environ.get(k)}):
            yield
    finally:
        for obj, level in saved:
            obj.setLevel(level)


def run_batch(manifest: str | None, out: str, cluster: str | None = None, workers: int = 2,
              settings: ReconstructionSettings | None = None, run_id: str | None = None,
              storage_options: dict | None = None,
              print_fn: Callable[[str], None] | None = None, collections_per_task: int | None = None,
              prefix: str | None = None, since: str | None = None, verbose: bool = False) -> list[dict]:
    """``zipmap batch``: run the flow (against ``PREFECT_API_URL``, else a local server), print the
    closing table. Prefect's and Dask's INFO lines only with ``verbose`` (see :func:`quiet_logs`)."""
    # configuration errors end here with one clear line, before a flow run (and its traceback) starts
    settings = settings or ReconstructionSettings()
    if not cluster:
        settings.check_here()
    if manifest:
        with_retries(read_manifest, manifest, storage_options, what=redact(manifest))
    if cluster:
        check_cluster(cluster)
    with quiet_logs(verbose), prefect_api(print_fn):
        rows = reconstruct_batch(manifest, out, settings.weights, settings.voxel_size, settings.max_voxels,
                                 settings.device, run_id, None, storage_options, collections_per_task,
                                 cluster=cluster, workers=workers, prefix=prefix, since=since, preset=settings.preset,
                                 refine_poses=settings.refine_poses)
    if print_fn is not None:
        print_fn(closing_table(rows))
    return rows


__all__ = ["reconstruct_batch", "run_batch", "task_runner", "worker_config", "plan_groups", "cluster_slots",
           "closing_table", "new_run_id", "ClusterError", "check_cluster", "SUMMARY_NAME", "prefect_api", "quiet_logs"]
