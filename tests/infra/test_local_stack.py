"""The deployments on a real local stack, every part started from its own CLI on 127.0.0.1.

`prefect server start` (SQLite in a temporary PREFECT_HOME), `dask scheduler` and two `dask worker`
processes (one advertising GPU=1), a moto S3 server, and `prefect worker start` on the `zipmap` pool.
`zipmap deploy` creates the deployments; `reconstruct-batch/on-demand` is triggered through the
Prefect REST API for three generated collections on S3; the run completes, the outputs are on S3 and
open with xarray, and the run's summary artifact is read back through the API. The nightly schedule
must have produced its next scheduled run (02:00 UTC); nobody waits for it.
"""

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import s3fs
import xarray as xr

from model.synthetic import write_collection

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ok, timeout: float, procs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: process exited with {p.returncode}")
        try:
            if ok():
                return
        except Exception:  # noqa: BLE001  (not up yet)
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} did not come up within {timeout} s")


@pytest.fixture
def stack(tmp_path, s3_endpoint):
    """Start the stack; yields its environment and addresses; stops everything after."""
    logs = tmp_path / "logs"
    logs.mkdir()
    api_port, sched_port = _port(), _port()
    api = f"http://127.0.0.1:{api_port}/api"
    env = dict(os.environ)
    env.update({
        "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2", "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        "AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
        "ZIPMAP_SETTINGS": str(tmp_path / "none.toml"),
    })
    (tmp_path / "none.toml").write_text("[zipmap]\n")
    env.pop("PREFECT_PROFILES_PATH", None)
    procs = []

    def start(name, *argv):
        log = open(logs / f"{name}.log", "wb")
        p = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], env=env, stdout=log, stderr=subprocess.STDOUT,
                             cwd=tmp_path, start_new_session=True)
        procs.append((name, p))
        return p

    try:
        server = start("prefect-server", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                       str(api_port))
        scheduler = start("dask-scheduler", "dask", "scheduler", "--host", "127.0.0.1", "--port", str(sched_port),
                          "--dashboard-address", f"127.0.0.1:{_port()}")
        address = f"tcp://127.0.0.1:{sched_port}"
        for name, extra in (("dask-worker-cpu", []), ("dask-worker-gpu", ["--resources", "GPU=1"])):
            start(name, "dask", "worker", address, "--nthreads", "1", "--nworkers", "1", "--memory-limit", "4GiB",
                  "--preload", "tasks.batch", "--name", name, *extra)
        _wait("Prefect server", lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 120, [server])

        def two_workers():
            from distributed import Client

            with Client(address, timeout=5) as c:
                return len(c.scheduler_info(n_workers=-1)["workers"]) == 2

        _wait("Dask cluster", two_workers, 120, [scheduler])
        yield {"env": env, "api": api, "cluster": address, "logs": logs, "start": start}
    finally:
        for _, p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for _, p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def _wait_run(http, run_id: str, timeout: float) -> dict:
    deadline = time.time() + timeout
    while True:
        state = http.get(f"/flow_runs/{run_id}").json()["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") or time.time() > deadline:
            return state
        time.sleep(1)


def _show_logs(logs: Path) -> str:
    return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}" for f in sorted(logs.glob("*.log")))


def test_deployments_on_a_local_stack(stack, s3_bucket):
    env, api = stack["env"], stack["api"]
    bucket, opts = s3_bucket
    rows = [{"collection_id": f"s{i}", "source": write_collection(f"s3://{bucket}/survey/s{i}", 1_000_400 + i,
                                                                  ("street", "orbit", "aerial")[i], 4, 56, 84,
                                                                  storage_options=opts)} for i in range(3)]
    fs = s3fs.S3FileSystem(**opts)
    fs.pipe_file(f"{bucket}/manifest.csv", pd.DataFrame(rows).to_csv(index=False).encode())

    deploy = subprocess.run([str(BIN / "zipmap"), "deploy", "--param", "max_voxels=16"], env=env,
                            capture_output=True, text=True, timeout=180)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    for name in ("reconstruct-batch/nightly", "reconstruct-batch/on-demand", "reconstruct-collection/on-demand"):
        assert f"deployment {name}" in deploy.stdout
    stack["start"]("prefect-worker", "prefect", "worker", "start", "--pool", "zipmap", "--type", "process")

    with httpx.Client(base_url=api, timeout=30) as http:
        on_demand = http.get("/deployments/name/reconstruct-batch/on-demand").json()
        assert on_demand["work_pool_name"] == "zipmap" and on_demand["entrypoint"] == "flows.batch.reconstruct_batch"
        params = {"manifest": f"s3://{bucket}/manifest.csv", "out": f"s3://{bucket}/out",
                  "cluster": stack["cluster"]}
        run = http.post(f"/deployments/{on_demand['id']}/create_flow_run", json={"parameters": params}).json()
        state = _wait_run(http, run["id"], 600)
        assert state["type"] == "COMPLETED", f"{state}\n{_show_logs(stack['logs'])}"

        # the stages show as task runs of the flow run, the summary as a table artifact
        tasks = http.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}}).json()
        assert tasks and all(t["state"]["type"] == "COMPLETED" for t in tasks)
        artifacts = http.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}).json()
        by_key = {a["key"]: a for a in artifacts}
        assert by_key["batch-summary"]["type"] == "table"
        table = by_key["batch-summary"]["data"]
        table = pd.DataFrame(json.loads(table) if isinstance(table, str) else table)
        assert sorted(table["collection_id"]) == ["s0", "s1", "s2"] and set(table["status"]) == {"complete"}
        assert "http://127.0.0.1:" in by_key["dask-dashboard"]["data"]  # a link artifact (stored as markdown)

        # one collection through reconstruct-collection/on-demand: its stages show as task runs
        single = http.get("/deployments/name/reconstruct-collection/on-demand").json()
        run1 = http.post(f"/deployments/{single['id']}/create_flow_run", json={"parameters": {
            "src": rows[0]["source"], "out": f"s3://{bucket}/single", "max_voxels": 16}}).json()
        state = _wait_run(http, run1["id"], 300)
        assert state["type"] == "COMPLETED", f"{state}\n{_show_logs(stack['logs'])}"
        names = [t["name"] for t in http.post("/task_runs/filter", json={
            "flow_runs": {"id": {"any_": [run1["id"]]}}}).json()]
        for stage in ("read-collection", "check-poses", "zip-pass", "place-in-world", "write-views", "plan-volume",
                      "decode-volume", "finalize"):
            assert any(n.startswith(stage) for n in names), (stage, names)

        # the nightly schedule: its next run is scheduled for 02:00 UTC
        nightly = http.get("/deployments/name/reconstruct-batch/nightly").json()
        assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
        deadline = time.time() + 60
        scheduled = []
        while not scheduled and time.time() < deadline:
            scheduled = http.post("/flow_runs/filter", json={
                "deployments": {"id": {"any_": [nightly["id"]]}},
                "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}).json()
            time.sleep(1)
        assert scheduled, "no scheduled run for reconstruct-batch/nightly"
        first = min(dt.datetime.fromisoformat(r["expected_start_time"]) for r in scheduled)
        now = dt.datetime.now(dt.UTC)
        assert (first.hour, first.minute) == (2, 0) and now < first <= now + dt.timedelta(days=1)

    for url in [f"s3://{bucket}/out/{r['collection_id']}.zarr" for r in rows] + [f"s3://{bucket}/single/s0.zarr"]:
        tree = xr.open_datatree(url, engine="zarr", storage_options=opts)
        assert tree.attrs["zipmap_status"] == "complete"
        assert tree["volume"]["tsdf"].ndim == 3
    assert fs.exists(f"{bucket}/out/_runs")
    shutil.rmtree(stack["logs"], ignore_errors=True)
