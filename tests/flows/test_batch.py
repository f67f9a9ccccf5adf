"""The batch flow for real: Prefect (test harness server), a Dask cluster of worker processes, S3 on moto.

Collections are tiny (4 frames of 56x84, coarse volumes) so each takes a second or two.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import s3fs
import xarray as xr

from model.synthetic import write_collection
from storage.zarr_store import read_attrs, read_status

pytestmark = pytest.mark.slow

FRAMES, H, W = 4, 56, 84
PARAMS = {"max_voxels": 24}


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    """Two real worker processes (Nannies restart a killed worker); they inherit the S3 variables."""
    from distributed import LocalCluster

    os.environ["AWS_ENDPOINT_URL"] = s3_endpoint
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit="4GiB") as c:
        yield c


def _collections(bucket, opts, n=6):
    rows = []
    for i in range(n):
        kind = ("street", "orbit", "aerial")[i % 3]
        url = write_collection(f"s3://{bucket}/in/c{i}", 1_000_100 + i, kind, FRAMES, H, W, storage_options=opts)
        if i % 2:  # every other collection without poses (images only)
            s3fs.S3FileSystem(**opts).rm(f"{bucket}/in/c{i}/cameras.json")
        rows.append({"collection_id": f"c{i}", "source": url})
    return rows


def _manifest(bucket, opts, rows, name="manifest.csv"):
    fs = s3fs.S3FileSystem(**opts)
    fs.pipe_file(f"{bucket}/{name}", pd.DataFrame(rows).to_csv(index=False).encode())
    fs.invalidate_cache()
    return f"s3://{bucket}/{name}"


def _run(manifest, out, cluster, run_id=None):
    from flows.batch import reconstruct_batch, task_runner

    flow = reconstruct_batch.with_options(task_runner=task_runner(cluster.scheduler_address))
    return flow(manifest, out, max_voxels=PARAMS["max_voxels"], run_id=run_id)


def test_batch_on_dask_and_s3_with_bad_rows(prefect_server, s3_bucket, cluster):
    bucket, opts = s3_bucket
    rows = _collections(bucket, opts)
    fs = s3fs.S3FileSystem(**opts)
    fs.pipe_file(f"{bucket}/in/c2/images/001.png", b"\x89PNG\r\n\x1a\nthis is not a png")  # broken input
    rows.append({"collection_id": "c3", "source": rows[3]["source"]})  # duplicated id
    rows.append({"collection_id": "../escape", "source": rows[0]["source"]})  # unsafe id
    manifest = _manifest(bucket, opts, rows)
    out = f"s3://{bucket}/out"
    result = {}
    for r in _run(manifest, out, cluster, run_id="run-1"):
        result.setdefault(r["collection_id"], r)  # the first row of an id (its repeat is checked below)
    statuses = [r["status"] for r in _run_summary(fs, bucket, "run-1").to_dict("records")]
    assert len(statuses) == len(rows) == 8
    for cid in ("c0", "c1", "c3", "c4", "c5"):
        assert result[cid]["status"] == "complete", result[cid]
        url = f"{out}/{cid}.zarr"
        assert read_status(url, opts) == "complete"
        tree = xr.open_datatree(url, engine="zarr", storage_options=opts)
        assert tree["views"]["depth"].shape[0] == FRAMES
    assert result["c2"]["status"] == "failed" and "c2/images/001.png" in result["c2"]["reason"]
    assert read_status(f"{out}/c2.zarr", opts) is None  # bad input never starts an output
    table = _run_summary(fs, bucket, "run-1")
    dup = table[(table.collection_id == "c3") & (table.status == "failed")]
    assert len(dup) == 1 and "repeats" in dup.reason.iloc[0]
    escape = table[table.collection_id == "../escape"]
    assert escape.status.iloc[0] == "failed" and "../escape" in escape.reason.iloc[0]
    assert not fs.exists(f"{bucket}/escape.zarr") and not fs.exists(f"{bucket}/out/../escape.zarr")
    assert {"collection_id", "status", "reason", "output", "t_zip_pass", "t_decode_volume", "num_views"} <= set(
        table.columns)
    assert isinstance(table.started.dtype, pd.DatetimeTZDtype) and str(table.started.dt.tz) == "UTC"
    assert table.started[table.status == "complete"].notna().all() and escape.started.isna().all()
    assert (table.started.dropna() - pd.Timestamp.now(tz="UTC")).abs().max() < pd.Timedelta(hours=1)
    assert table[table.status == "complete"].t_zip_pass.notna().all()
    # validation.md: every suite that ran (the manifest's; each collection's images and output suites), FAILED
    report = fs.cat_file(f"{bucket}/out/_runs/run-1/validation.md").decode()
    assert report.splitlines()[2].startswith("**Result: FAILED**")
    assert "| manifest | manifest | FAILED |" in report  # the unsafe id
    for cid in ("c0", "c1", "c3", "c4", "c5"):
        assert f"| {cid} | images | passed |" in report and f"| {cid} | output | passed |" in report
    assert "| c2 | images |" not in report  # its broken image failed the read: no suite ran on it
    assert "| c2 | failed |" in report and "| ../escape | failed |" in report  # the collections table
    # task runs are named by the collection ids of their group
    assert any("c2" in name.split(", ") for name in _task_run_names("c2"))
    assert "testing" not in json.dumps(read_attrs(f"{out}/c0.zarr", opts))
    artifact = _latest_artifact("batch-summary")
    assert "c0" in str(artifact.data) and "complete" in str(artifact.data)

    # a rerun recomputes nothing: every complete output is skipped and left as it was
    before = {cid: fs.info(f"{bucket}/out/{cid}.zarr/zarr.json")["LastModified"] for cid in ("c0", "c1")}
    again = {}
    for r in _run(manifest, out, cluster, run_id="run-2"):
        again.setdefault(r["collection_id"], r["status"])
    assert all(again[c] == "skipped" for c in ("c0", "c1", "c3", "c4", "c5")), again
    assert again["c2"] == "failed"
    table = _run_summary(fs, bucket, "run-2")
    skipped = table[table.status == "skipped"]
    assert len(skipped) == 5 and skipped.filter(like="t_").isna().all().all()  # nothing ran in this run
    assert skipped.num_views.eq(FRAMES).all()  # the output's own numbers are still there
    report = fs.cat_file(f"{bucket}/out/_runs/run-2/validation.md").decode()
    assert "| c0 | output | passed |" in report and "| c0 | images |" not in report  # the skip check ran
    fs.invalidate_cache()
    assert before == {cid: fs.info(f"{bucket}/out/{cid}.zarr/zarr.json")["LastModified"] for cid in ("c0", "c1")}


def _latest_artifact(key):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            return found[-1]

    return asyncio.run(read())


def _task_run_names(like):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    async def read():
        async with get_client() as client:
            found = await client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=like)))
            return [t.name for t in found]

    return asyncio.run(read())


def _run_summary(fs, bucket, run_id):
    import io

    fs.invalidate_cache()
    return pd.read_parquet(io.BytesIO(fs.cat_file(f"{bucket}/out/_runs/{run_id}/summary.parquet")))


def test_killed_worker_batch_completes_with_clean_outputs(prefect_server, s3_bucket, cluster, tmp_path):
    bucket, opts = s3_bucket
    rows = _collections(bucket, opts, n=6)
    manifest = _manifest(bucket, opts, rows)
    clean_out, out = f"s3://{bucket}/clean", f"s3://{bucket}/killed"
    assert all(r["status"] == "complete" for r in _run(manifest, clean_out, cluster))

    killed = []

    def kill_one_worker_when_busy():
        from distributed import Client

        with Client(cluster.scheduler_address) as client:
            pids = client.run(os.getpid)  # worker address -> process id
            deadline = time.time() + 120
            while time.time() < deadline:
                busy = [w for w, tasks in client.processing().items() if tasks]
                if busy:  # a collection task is running on this worker: kill it mid-task
                    pid = pids[busy[0]]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
                time.sleep(0.2)

    killer = threading.Thread(target=kill_one_worker_when_busy)
    killer.start()
    result = _run(manifest, out, cluster)
    killer.join()
    assert killed, "no worker was killed (the batch finished first?)"
    assert all(r["status"] == "complete" for r in result), result
    for r in rows:
        a = xr.open_datatree(f"{clean_out}/{r['collection_id']}.zarr", engine="zarr", storage_options=opts)
        b = xr.open_datatree(f"{out}/{r['collection_id']}.zarr", engine="zarr", storage_options=opts)
        np.testing.assert_array_equal(a["views"]["depth"].values, b["views"]["depth"].values)
        np.testing.assert_array_equal(a["volume"]["tsdf"].values, b["volume"]["tsdf"].values)


def test_gpu_workers_get_one_collection_at_a_time(prefect_server, tmp_path):
    """On a cluster whose worker advertises GPU=1, collection tasks claim the GPU: they run one at a
    time although the worker has two threads, and the batch completes (no task waits forever)."""
    from distributed import LocalCluster

    from flows.batch import reconstruct_batch

    rows = [{"collection_id": f"g{i}", "source": write_collection(str(tmp_path / "in" / f"g{i}"), 1_000_200 + i,
                                                                  "orbit", FRAMES, H, W)} for i in range(3)]
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None,
                      resources={"GPU": 1}, memory_limit="4GiB") as gpu_cluster:
        # the flow connects to the cluster itself and sees its GPU worker (gpu left to its default)
        result = reconstruct_batch(str(manifest), str(tmp_path / "out"), max_voxels=16,
                                   cluster=gpu_cluster.scheduler_address)
    assert [r["status"] for r in result] == ["complete"] * 3
    spans = sorted((r["started"], r["started"] + r["seconds"]) for r in result)
    assert all(b[0] >= a[1] - 0.05 for a, b in zip(spans, spans[1:])), spans  # never two at once


def test_local_cluster_workers_keep_no_profile(tmp_path, monkeypatch):
    """The LocalCluster ``task_runner`` builds runs its workers without Dask's statistical profiler,
    whose per-second stack trees grew worker memory by ~0.5 MiB per collection; the variable
    DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED turns it back on."""
    from distributed import Client, LocalCluster

    from flows.batch import PROFILE_ENV, task_runner, worker_config

    kwargs = task_runner(None, workers=1).cluster_kwargs
    assert kwargs["config"]["distributed"]["worker"]["profile"]["enabled"] is False
    src = write_collection(str(tmp_path / "in"), 1_000_300, "orbit", 2, 28, 42)

    def work():
        from tasks.batch import reconstruct_one

        return reconstruct_one("p0", src, str(tmp_path / "out"), {"max_voxels": 8})["status"]

    def profiled(dask_worker):
        return len(dask_worker.profile_history), dask_worker.profile_recent["count"]

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit="4GiB", config=kwargs["config"]) as cl, Client(cl) as client:
        assert client.submit(work, pure=False).result() == "complete"
        time.sleep(1.5)  # more than one profile cycle
        assert client.run(profiled) == {w: (0, 0) for w in client.scheduler_info()["workers"]}
        assert all(client.run(lambda: "tasks.batch" in sys.modules).values())  # preloaded
        from errors import log_scrubbing_installed

        assert all(client.run(log_scrubbing_installed).values())  # their log records go through errors.scrub
    monkeypatch.setenv(PROFILE_ENV, "True")
    assert worker_config()["distributed"]["worker"]["profile"]["enabled"] is True  # Dask's own setting


def _zipmap_batch(tmp_path, name, manifest, *args):
    """``zipmap batch`` in a fresh process, as a new user runs it: a fresh HOME, no Prefect variables (so no
    PREFECT_API_URL: the command starts its own Prefect server) and temporary files in a folder of its own.
    Returns the finished process, the HOME and the temporary folder."""
    home, tmp = tmp_path / name / "home", tmp_path / name / "tmp"
    home.mkdir(parents=True)
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(HOME=str(home), TMPDIR=str(tmp))
    script = Path(sys.executable).with_name("zipmap")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cli"]
    proc = subprocess.run([*command, "batch", str(manifest), str(tmp_path / "out"), "--max-voxels", "16",
                           "--run-id", name, *args], cwd=tmp_path / name, env=env, capture_output=True, text=True,
                          timeout=900)
    return proc, home, tmp


NOISE = re.compile(r"Traceback|\bERROR\b|\bINFO\b|still alive|killing")


def test_zipmap_batch_is_quiet_and_keeps_out_of_the_users_prefect_home(tmp_path):
    """A new user's ``zipmap batch`` (no Prefect server configured): the run's own temporary Prefect server
    keeps its database outside ~/.prefect and removes it afterwards; stderr carries no traceback, no ERROR
    and, without --verbose, no INFO line; the LocalCluster's workers stop without being killed. The
    validation report lists every suite that ran and says FAILED when a collection failed (with --verbose,
    the INFO lines are back, the task runs named by collection id)."""
    good = write_collection(str(tmp_path / "in" / "q0"), 1_000_400, "orbit", FRAMES, H, W)
    bad = write_collection(str(tmp_path / "in" / "q1"), 1_000_401, "street", FRAMES, H, W)
    cameras = json.loads((Path(bad) / "cameras.json").read_text())
    cameras["frames"][1]["cx"] = 10.0 * W  # the principal point outside the image: fails the images suite
    (Path(bad) / "cameras.json").write_text(json.dumps(cameras))
    manifest = tmp_path / "in" / "manifest.csv"
    pd.DataFrame([{"collection_id": "q0", "source": good}, {"collection_id": "q1", "source": bad}]).to_csv(
        manifest, index=False)

    proc, home, tmp = _zipmap_batch(tmp_path, "quiet", manifest, "--workers", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr[-5000:]  # a collection failed
    assert "1 complete, 1 failed" in proc.stdout
    noisy = [line for line in proc.stderr.splitlines() if NOISE.search(line)]
    assert not noisy, proc.stderr[-5000:]
    # nothing in the user's Prefect home (importing prefect makes the empty folder) and no server left behind
    assert sorted(home.rglob("*")) in ([], [home / ".prefect"]), sorted(home.rglob("*"))
    assert not list(tmp.glob("zipmap-prefect-*"))
    report = (tmp_path / "out" / "_runs" / "quiet" / "validation.md").read_text()
    assert report.splitlines()[2].startswith("**Result: FAILED**"), report[:500]
    for line in ("| manifest | manifest | passed |", "| q0 | images | passed |", "| q0 | output | passed |",
                 "| q1 | images | FAILED |", "| q1 | failed |"):
        assert line in report, line
    assert "| q1 | output |" not in report  # failing input is not reconstructed
    assert "cx must be < width" in report.split("## q1 images: FAILED")[1]  # its failure lines

    # every collection failed: still FAILED (it said PASSED); --verbose shows Prefect's and Dask's INFO lines
    only_bad = tmp_path / "in" / "bad.csv"
    pd.DataFrame([{"collection_id": "q1", "source": bad}]).to_csv(only_bad, index=False)
    proc, home, tmp = _zipmap_batch(tmp_path, "verbose", only_bad, "--workers", "1", "--verbose")
    assert proc.returncode == 1, proc.stdout + proc.stderr[-5000:]
    assert "| INFO " in proc.stderr and "distributed." in proc.stderr and "Task run 'q1'" in proc.stderr
    assert not re.search(r"Traceback|still alive", proc.stderr), proc.stderr[-5000:]
    assert sorted(home.rglob("*")) in ([], [home / ".prefect"])
    report = (tmp_path / "out" / "_runs" / "verbose" / "validation.md").read_text()
    assert report.splitlines()[2].startswith("**Result: FAILED**") and "| q1 | images | FAILED |" in report
