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
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable

import dask
import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from errors import ConfigError, register_secrets, register_url_secrets, scrub, scrub_all
from settings import ReconstructionSettings
from storage.tables import read_manifest, write_table
from storage.urls import join, redact, split_secrets
from tasks.batch import process_collections, summary_row
from tasks.credentials import CREDENTIALS_ENV, refuse_plain_secrets, secret_names, with_credentials
from tasks.retry import with_retries
from validation import ValidationOutcome, manifest_row_problems, render_report, validate_manifest

SUMMARY_NAME = "summary.parquet"


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


# --- stopping on Ctrl-C or SIGTERM ------------------------------------------------------------------------
# The first SIGINT or SIGTERM sets STOP: the batch submits nothing more (queued collections are cancelled),
# gives the collections already running STOP_GRACE_S seconds to finish, marks the rest failed, writes the
# summary, stops the processes it started and returns; `zipmap batch` then exits with 130. A second signal
# stops at once (KeyboardInterrupt).
class _Flag:
    """A plain flag (set by a signal handler, read by the flow). Not a threading.Event: Prefect ships the flow
    function, and with it the globals it uses, to the Dask workers, and a lock cannot be pickled."""

    def __init__(self):
        self._set = False

    def set(self) -> None:
        self._set = True

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set


STOP = _Flag()
STOP_GRACE_ENV = "ZIPMAP_STOP_GRACE"
STOP_GRACE_S = 10.0
INTERRUPTED = "interrupted"


def stop_grace() -> float:
    try:
        return max(0.0, float(os.environ.get(STOP_GRACE_ENV, STOP_GRACE_S)))
    except ValueError:
        return STOP_GRACE_S


def _on_stop_signal(signum, frame) -> None:
    if STOP.is_set():
        raise KeyboardInterrupt
    STOP.set()
    name = signal.Signals(signum).name
    print(f"\n{name}: stopping: no new collections; running ones get {stop_grace():.0f} s to finish, then the "
          "summary is written (again to stop at once)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT and SIGTERM set :data:`STOP` (see above) while inside; the previous handlers come back afterwards.
    Only in the main thread (elsewhere Python cannot handle signals; nothing changes). Prefect installs its own
    SIGTERM handler for the length of a flow run, so the flow body enters this again."""
    if threading.current_thread() is not threading.main_thread():
        yield STOP
        return
    saved = {sig: signal.signal(sig, _on_stop_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield STOP
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _die_with_parent() -> None:
    """In a child process before exec (Linux): SIGTERM it when the process that started it dies, even by
    ``kill -9``, so the run's own Prefect server never outlives the run."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001  (not Linux: the server is still stopped on every normal or signalled exit)
        pass


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
    rows = [{**r, "collection_id": scrub(r["collection_id"] or "")} for r in rows]
    width = max([len(r["collection_id"]) for r in rows] + [13])
    lines = [f"{'collection_id':<{width}}  {'status':<8}  {'seconds':>7}  reason / output"]
    for r in rows:
        detail = r["reason"] if r["status"] == "failed" else \
            (f"{r['output']} ({r['reason']})" if r.get("reason") else r["output"])  # e.g. busy, redone, a warning
        detail = scrub(detail)  # scrubbed whole, then cut
        lines.append(f"{r['collection_id'][:width]:<{width}}  {r['status']:<8}  {r['seconds']:>7.1f}  "
                     f"{detail[:160]}")
    counts = pd.Series([r["status"] for r in rows]).value_counts().to_dict() if rows else {}
    lines.append(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no collections")
    return scrub("\n".join(lines))


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
        if STOP.is_set():  # interrupted: a worker busy with a collection is killed, as said; no warning about it
            import logging

            logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
        close_workers(runner, STOP_CLOSE_TIMEOUT if STOP.is_set() else WORKER_EXIT_TIMEOUT)
        runner.__exit__(None, None, None)


WORKER_EXIT_TIMEOUT = 60.0  # seconds a LocalCluster worker process may take to exit at the end of a batch
STOP_CLOSE_TIMEOUT = 3.0  # ... and after an interrupt (a worker still busy with a collection is killed then)


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


def _executing(runner) -> set | None:
    """Keys of the tasks the workers of ``runner``'s cluster are executing now (not merely queued); None when
    the workers cannot be asked."""
    def executing(dask_worker) -> list:
        return [str(ts.key) for ts in getattr(dask_worker.state, "executing", ())]

    try:
        return {key for keys in runner.client.run(executing).values() for key in keys}
    except Exception:  # noqa: BLE001
        return None


def _collect(runner, groups: list[list[int]], futures: list, df: pd.DataFrame, logger) -> dict[int, dict]:
    """The rows of the submitted groups, by manifest index, as they finish. On :data:`STOP` the groups not yet
    executing are cancelled and the executing ones get :func:`stop_grace` seconds; groups without rows then are
    left out (the caller writes :func:`interrupted_row` for them)."""
    by_index: dict[int, dict] = {}
    pending = dict(enumerate(futures))
    deadline = None
    while pending:
        if STOP.is_set() and deadline is None:
            deadline = time.monotonic() + stop_grace()
            executing = _executing(runner)
            queued = [] if executing is None else [  # unknown: every task counts as running (the grace bounds it)
                k for k, future in pending.items()
                if str(future.wrapped_future.key) not in executing and not future.wrapped_future.done()]
            for k in queued:
                pending.pop(k).wrapped_future.cancel()
            logger.warning("interrupted: %d queued task(s) cancelled; waiting up to %.0f s for %d running",
                           len(queued), stop_grace(), len(pending))
        if deadline is not None and time.monotonic() >= deadline:
            break
        done = [k for k, future in pending.items() if future.wrapped_future.done()]
        for k in done:
            future, group = pending.pop(k), groups[k]
            try:
                for i, row in zip(group, future.result()):
                    by_index[i] = row
            except Exception as exc:  # the task itself failed (a worker lost too often)  # noqa: BLE001
                if STOP.is_set():
                    continue  # killed by the interrupt: interrupted_row tells what became of each collection
                for i in group:
                    by_index[i] = summary_row(df.at[i, "collection_id"], df.at[i, "source"], "failed",
                                              f"{type(exc).__name__}: {exc}")
        if pending and not done:
            time.sleep(0.2)
    return by_index


def interrupted_row(collection_id: str, source: str, out: str, storage_options: dict | None, run_id: str) -> dict:
    """The row of a collection the interrupted run did not see to its end, from what its store says: complete
    by this run (it finished after all), begun by this run (now marked failed: the worker that wrote it is
    gone) or not touched."""
    from storage.zarr_store import RUN_KEY, STATUS_KEY, ReconstructionStore, read_attrs

    url = join(out, f"{collection_id}.zarr")
    try:
        attrs = read_attrs(url, storage_options) or {}
    except Exception:  # noqa: BLE001
        attrs = {}
    ours = attrs.get(RUN_KEY) == run_id
    if ours and attrs.get(STATUS_KEY) == "complete":
        return summary_row(collection_id, source, "complete", summary=attrs.get("summary"), output=url)
    if ours:
        ReconstructionStore(url, storage_options, run_id=run_id).fail(f"{INTERRUPTED}: the run was stopped")
        return summary_row(collection_id, source, "failed", f"{INTERRUPTED}: stopped while it was being written "
                           "(its store is marked failed)", output=url)
    return summary_row(collection_id, source, "failed", f"{INTERRUPTED}: the run was stopped before it was done")



@flow(name="reconstruct-batch")
def reconstruct_batch(manifest: str | None = None, out: str = "", weights: str | None = None,
                      voxel_size: float | None = None, max_voxels: int = 128, device: str | None = None,
                      run_id: str | None = None, gpu: bool | None = None, storage_options: dict | None = None,
                      collections_per_task: int | None = None, cluster: str | None = None, workers: int = 2,
                      prefix: str | None = None, since: str | None = None, preset: str | None = None,
                      refine_poses: str = "auto", credentials: str | None = None) -> list[dict]:
    """Every collection of ``manifest`` into ``OUT/<collection_id>.zarr``; returns the summary rows.

    ``storage_options``: public fsspec options only (endpoint_url, region, ...): Prefect keeps a run's
    parameters, so secret values there (key, secret, token, ...) or URLs with credentials are refused in one
    line. ``credentials``: a reference to the secret ones, ``env:VAR`` / ``file:PATH`` / ``block:NAME``
    (:mod:`tasks.credentials`), resolved here and on each worker.

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
    refuse_plain_secrets("reconstruct-batch", storage_options, manifest=manifest, out=out, prefix=prefix,
                         weights=weights)
    public, storage_options = storage_options, with_credentials(storage_options, credentials)  # the I/O's own
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
    for src in df["source"] if "source" in df else ():  # before the report or a log line can quote them
        if isinstance(src, str):
            register_url_secrets(src)
    problems = manifest_row_problems(df)  # plain pandas: decides which rows run
    params = settings.to_dict()
    todo = [i for i in df.index if i not in problems]
    with stop_on_signals(), _dask_runner(cluster, workers) as runner:
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
                if STOP.is_set():  # interrupted: nothing more is submitted
                    break
                items = [(df.at[i, "collection_id"], df.at[i, "source"]) for i in group]
                futures.append(runner.submit(process_collections, parameters={
                    "items": items, "out": out, "params": params, "storage_options": public,
                    "credentials": credentials, "run_id": run_id}))
        manifest_outcome = validate_manifest(df)  # the full suite, for the report, while the workers run
        by_index = _collect(runner, groups, futures, df, logger)
    rows = []
    for i, row in df.iterrows():
        if i in problems:
            cid, src = row["collection_id"], row["source"]
            rows.append(summary_row(cid if isinstance(cid, str) else "", src if isinstance(src, str) else "",
                                    "failed", f"manifest row {i + 1}: {problems[i]}"))
        elif i in by_index:
            rows.append(by_index[i])
        else:  # interrupted before it ended
            rows.append(interrupted_row(row["collection_id"], row["source"], out, storage_options, run_id))
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
    report = render_report(sections, f"Batch {run_id}: {redact(manifest)}", collections=rows)
    saved = save_run_files(run_dir, run_id, table, report, storage_options)
    RUN_OUTCOME.update(run_id=run_id, summary=saved["summary"], fallback=saved.get("fallback"),
                       interrupted=STOP.is_set())
    if saved.get("fallback"):
        logger.warning(saved["fallback"])
    create_table_artifact(table=[_artifact_row(r) for r in rows], key="batch-summary",
                          description=f"run {run_id}: {redact(out)}")
    create_markdown_artifact(markdown=report, key="batch-validation-report")
    logger.info("batch %s: %d collections in %.1f s -> %s", run_id, len(rows), elapsed, redact(run_dir))
    return rows


FALLBACK_ENV = "ZIPMAP_FALLBACK_DIR"
RUN_OUTCOME: dict = {}  # what the last batch of this process did with its summary: run_batch reports it


def fallback_dir() -> str:
    """Where a run's summary goes when OUT cannot take it (a full disk, a lost bucket): ``$ZIPMAP_FALLBACK_DIR``,
    else ``$XDG_STATE_HOME/zipmap/runs`` (``~/.local/state/zipmap/runs``)."""
    if os.environ.get(FALLBACK_ENV):
        return os.environ[FALLBACK_ENV]
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "zipmap", "runs")


def save_run_files(run_dir: str, run_id: str, table: pd.DataFrame, report: str,
                   storage_options: dict | None) -> dict:
    """``summary.parquet`` and ``validation.md`` into ``run_dir``; if that fails, into :func:`fallback_dir` /
    run id on this machine. Returns ``{"summary": where the summary is, "fallback": the one line saying so, if
    it came to that}``. The rows are never lost: a table is written whole or not at all (never a 0-byte file)."""
    patience = 5.0 if STOP.is_set() else None  # after an interrupt, do not wait out a long outage
    target = join(run_dir, SUMMARY_NAME)
    try:
        with_retries(write_table, table, target, storage_options, what="the run summary", patience_s=patience)
        with_retries(_write_text, join(run_dir, "validation.md"), report, storage_options,
                     what="the validation report", patience_s=patience)
        return {"summary": target}
    except Exception as exc:  # noqa: BLE001  (any failure: the rows go to the fallback, said in one line)
        reason = str(exc)
    local = os.path.join(fallback_dir(), run_id)
    os.makedirs(local, exist_ok=True)
    write_table(table, os.path.join(local, SUMMARY_NAME))
    with open(os.path.join(local, "validation.md"), "w") as f:
        f.write(report)
    where = os.path.join(local, SUMMARY_NAME)
    return {"summary": where, "fallback": f"the run summary could not be written to {redact(run_dir)} ({reason}); "
                                          f"it is at {where}"}


def _artifact_row(row: dict) -> dict:
    """A summary row for the table artifact (JSON): NaN as null, ``started`` as UTC ISO 8601, text scrubbed."""
    out = {k: (None if isinstance(v, float) and v != v else scrub_all(v)) for k, v in row.items()}
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
            server = _run_server_class()()
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


def _run_server_class():
    """Prefect's temporary-server class, its process started so that it dies with this one (:func:`_die_with_parent`):
    a batch killed by SIGKILL leaves no server behind. The command line is Prefect's own (uvicorn serving the API
    factory on 127.0.0.1, no UI)."""
    import subprocess

    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class RunServer(SubprocessASGIServer):
        _instances: dict = {}

        def _run_uvicorn_command(self) -> subprocess.Popen:
            env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                   "PREFECT__SERVER_FINAL": "1", **get_current_settings().to_environment_variables(exclude_unset=True)}
            command = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                       "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                       "--log-level", "error", "--lifespan", "on"]
            return subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)

    return RunServer


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


def secrets_by_reference(storage_options: dict | None, credentials: str | None,
                         cluster: str | None) -> tuple[dict | None, dict[str, str], str | None]:
    """``(public storage options, environment, credentials reference)`` for a batch given ``storage_options``
    that may hold secrets (``zipmap batch --storage-options FILE.json``).

    Prefect records a flow run's parameters when the run is created, so the split happens here, before: the
    secret part stays in this process, in the environment variable :data:`tasks.credentials.CREDENTIALS_ENV`
    (set for the length of the run, after the Prefect server started; the LocalCluster workers started
    meanwhile inherit it), and the flow gets ``credentials="env:ZIPMAP_RUN_CREDENTIALS"``. Refused in one line:
    secrets together with ``credentials``, and secrets with a ``cluster`` address (its workers would not see
    this process's environment: a Prefect Secret block, ``block:NAME``, or their own environment serve)."""
    public, secret = split_secrets(storage_options)
    if not secret:
        return storage_options, {}, credentials
    register_secrets(secret)
    names = ", ".join(secret_names(secret))
    if credentials:
        raise ConfigError(f"--storage-options holds secret values ({names}) and --credentials is given too: give "
                          "the secrets one way")
    if cluster:
        raise ConfigError(f"--storage-options holds secret values ({names}), which the workers of --cluster {cluster} "
                          "cannot be handed without Prefect keeping them: save them in a Prefect Secret block and pass "
                          "--credentials block:NAME, or set them in the workers' environment (AWS_* variables, or a "
                          "JSON object in a variable, --credentials env:VAR); keep only public options in the file")
    return public, {CREDENTIALS_ENV: json.dumps(secret)}, f"env:{CREDENTIALS_ENV}"


def run_batch(manifest: str | None, out: str, cluster: str | None = None, workers: int = 2,
              settings: ReconstructionSettings | None = None, run_id: str | None = None,
              storage_options: dict | None = None,
              print_fn: Callable[[str], None] | None = None, collections_per_task: int | None = None,
              prefix: str | None = None, since: str | None = None, verbose: bool = False,
              credentials: str | None = None) -> list[dict]:
    """``zipmap batch``: run the flow (against ``PREFECT_API_URL``, else a local server), print the
    closing table. Prefect's and Dask's INFO lines only with ``verbose`` (see :func:`quiet_logs`).
    Secrets in ``storage_options`` never become flow parameters (:func:`secrets_by_reference`)."""
    # configuration errors end here with one clear line, before a flow run (and its traceback) starts
    settings = settings or ReconstructionSettings()
    if not cluster:
        settings.check_here()
    refuse_plain_secrets("zipmap batch", None, manifest=manifest, out=out, prefix=prefix, weights=settings.weights)
    options = with_credentials(storage_options, credentials)  # this process's own I/O
    storage_options, secret_env, credentials = secrets_by_reference(storage_options, credentials, cluster)
    if manifest:
        with_retries(read_manifest, manifest, options, what=redact(manifest))
    if cluster:
        check_cluster(cluster)
    STOP.clear()
    RUN_OUTCOME.clear()
    # the first Ctrl-C or SIGTERM from here on stops the batch cleanly (see STOP); the Prefect server and the
    # workers started below are stopped on the way out
    with stop_on_signals(), quiet_logs(verbose), prefect_api(print_fn), _environ(secret_env):
        rows = reconstruct_batch(manifest, out, settings.weights, settings.voxel_size, settings.max_voxels,
                                 settings.device, run_id, None, storage_options, collections_per_task,
                                 cluster=cluster, workers=workers, prefix=prefix, since=since, preset=settings.preset,
                                 refine_poses=settings.refine_poses, credentials=credentials)
    if print_fn is not None:
        print_fn(closing_table(rows))
        if RUN_OUTCOME.get("fallback"):
            print_fn(scrub(RUN_OUTCOME["fallback"]))
    return rows


__all__ = ["reconstruct_batch", "run_batch", "task_runner", "worker_config", "plan_groups", "cluster_slots",
           "closing_table", "new_run_id", "ClusterError", "check_cluster", "SUMMARY_NAME", "prefect_api", "quiet_logs",
           "STOP", "RUN_OUTCOME", "stop_on_signals", "interrupted_row", "save_run_files", "fallback_dir"]
