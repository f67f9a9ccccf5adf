"""Transient faults are retried in one place (tasks.batch.reconstruct_one), bad input never is.

A real S3 API (moto's server; this module starts its own, so stopping it leaves the session's alone)
goes away for 40 s in the middle of a batch on a real Dask cluster and comes back on the same port:
moto keeps its backends in this process, so the new server holds the same buckets. Every collection
completes, with the outputs of a clean run.
"""

import json
import logging
import os
import socket
import threading
import time
import uuid

import numpy as np
import pandas as pd
import pytest
import s3fs
import xarray as xr

from model.synthetic import write_collection
from storage.zarr_store import read_status

FRAMES, H, W = 4, 56, 84
MAX_VOXELS = 24
OUTAGE_S = 40  # the outage: longer than any one request's own retries, shorter than the patience (60 s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Moto:
    """A moto S3 server on a fixed port of 127.0.0.1 that can be stopped and started again."""

    def __init__(self):
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = None
        self.start()

    def start(self):
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self):
        if self.server is None:
            return
        self.server.stop()
        # stop() only ends the accept loop: close the listening socket too, so that connections are
        # refused (not left waiting in the backlog) and the port can be bound again
        self.server._server.server_close()
        self.server = None


@pytest.fixture()
def own_s3():
    """This test's own S3 server and a bucket on it: ``(moto, bucket, storage_options)``."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    moto = Moto()
    opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": moto.endpoint}}
    bucket = f"outage-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**opts, skip_instance_cache=True).mkdir(bucket)
    try:
        yield moto, bucket, opts
    finally:
        moto.stop()


def _fs(opts):
    return s3fs.S3FileSystem(**opts, skip_instance_cache=True)


def test_restarted_moto_server_keeps_its_buckets(own_s3):
    moto, bucket, opts = own_s3
    _fs(opts).pipe_file(f"{bucket}/probe.txt", b"still here")
    moto.stop()
    with pytest.raises(Exception) as down:
        _fs({**opts, "config_kwargs": {"retries": {"total_max_attempts": 1}}}).cat_file(f"{bucket}/probe.txt")
    assert type(down.value).__name__ == "EndpointConnectionError"
    moto.start()
    assert _fs(opts).cat_file(f"{bucket}/probe.txt") == b"still here"


@pytest.mark.slow
def test_batch_rides_out_an_object_store_outage(prefect_server, own_s3):
    from distributed import LocalCluster

    from flows.batch import reconstruct_batch, task_runner

    moto, bucket, opts = own_s3
    fs = _fs(opts)
    ids = [f"o{i}" for i in range(4)]
    rows = [{"collection_id": cid, "source": write_collection(f"s3://{bucket}/in/{cid}", 1_000_400 + i,
                                                              ("street", "orbit", "aerial", "orbit")[i], FRAMES, H, W,
                                                              storage_options=opts)}
            for i, cid in enumerate(ids)]
    fs.pipe_file(f"{bucket}/manifest.csv", pd.DataFrame(rows).to_csv(index=False).encode())
    manifest, clean_out, out = (f"s3://{bucket}/manifest.csv", f"s3://{bucket}/clean", f"s3://{bucket}/outage")

    outage: dict = {}

    def cut_when_the_first_output_begins():
        watch = _fs(opts)
        deadline = time.time() + 300
        while time.time() < deadline:
            watch.invalidate_cache()
            if watch.find(f"{bucket}/outage"):
                outage["complete_before"] = {c for c in ids if read_status(f"{out}/{c}.zarr", opts) == "complete"}
                moto.stop()
                outage["stopped"] = time.time()
                time.sleep(OUTAGE_S)
                moto.start()
                outage["restarted"] = time.time()
                return
            time.sleep(0.05)

    public = {"client_kwargs": opts["client_kwargs"]}  # the flow takes no secrets: keys from the AWS_* variables
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit="4GiB") as cluster:
        run = reconstruct_batch.with_options(task_runner=task_runner(cluster.scheduler_address))
        clean = run(manifest, clean_out, max_voxels=MAX_VOXELS, storage_options=public)
        assert [r["status"] for r in clean] == ["complete"] * len(ids), clean
        cutter = threading.Thread(target=cut_when_the_first_output_begins)
        cutter.start()
        t0 = time.time()
        result = run(manifest, out, max_voxels=MAX_VOXELS, storage_options=public)
        cutter.join()
        elapsed = time.time() - t0

    assert "restarted" in outage, "the outage never started"
    assert [r["status"] for r in result] == ["complete"] * len(ids), [(r["status"], r["reason"]) for r in result]
    assert elapsed > OUTAGE_S
    hit = set(ids) - outage["complete_before"]
    assert hit, "every collection was complete before the outage"
    fs.invalidate_cache()
    for cid in hit:  # completed after the object store came back: they rode the outage out
        modified = fs.info(f"{bucket}/outage/{cid}.zarr/zarr.json")["LastModified"].timestamp()
        assert modified >= int(outage["restarted"]) - 1, (cid, modified, outage)
    for cid in ids:
        assert read_status(f"{out}/{cid}.zarr", opts) == "complete"
        a = xr.open_datatree(f"{clean_out}/{cid}.zarr", engine="zarr", storage_options=opts)
        b = xr.open_datatree(f"{out}/{cid}.zarr", engine="zarr", storage_options=opts)
        np.testing.assert_array_equal(a["views"]["depth"].values, b["views"]["depth"].values)
        np.testing.assert_array_equal(a["volume"]["tsdf"].values, b["volume"]["tsdf"].values)


def _transforms(paths) -> bytes:
    frames = [{"file_path": p, "transform_matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, float(k)], [0, 0, 0, 1]]}
              for k, p in enumerate(paths)]
    return json.dumps({"fl_x": 40.0, "fl_y": 40.0, "cx": 21.0, "cy": 14.0, "w": 42, "h": 28,
                       "frames": frames}).encode()


class Retries(logging.Handler):
    """The retry messages of tasks.batch (a handler on its logger: Prefect reconfigures the root logger)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        if "transient fault on attempt" in record.getMessage():
            self.messages.append(record.getMessage())

    def clear(self):
        self.messages.clear()


@pytest.fixture()
def retries():
    handler = Retries()
    logger = logging.getLogger("tasks.retry")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def test_missing_image_is_not_retried_but_an_unreachable_store_is(own_s3, tmp_path, retries, monkeypatch):
    from tasks.batch import reconstruct_one

    moto, bucket, opts = own_s3
    src = write_collection(f"s3://{bucket}/in/m0", 1_000_500, "orbit", 2, 28, 42, storage_options=opts)
    fs = _fs(opts)
    fs.rm(f"{bucket}/in/m0/cameras.json")
    fs.pipe_file(f"{bucket}/in/m0/transforms.json", _transforms(["images/000.png", "images/001.png",
                                                                 "images/gone.png"]))

    t0 = time.perf_counter()  # a retry would wait 20 s or more
    row = reconstruct_one("m0", src, str(tmp_path / "out"), {"max_voxels": 8}, opts, attempts=4, backoff_s=40)
    assert time.perf_counter() - t0 < 15
    assert row["status"] == "failed" and f"{src}/images/gone.png: missing" in row["reason"], row
    assert "attempts" not in row["reason"] and retries.messages == []
    assert not (tmp_path / "out").exists()  # bad input never starts an output

    # the same collection while the object store is down: every attempt is made, each logged
    moto.stop()
    quick = {**opts, "config_kwargs": {"retries": {"mode": "standard", "total_max_attempts": 1}}}
    row = reconstruct_one("m0", src, str(tmp_path / "out"), {"max_voxels": 8}, quick, attempts=3, backoff_s=0.1)
    assert row["status"] == "failed" and "(after 3 attempts" in row["reason"], row
    assert "TransientError" in row["reason"] and f"{src}" in row["reason"] and "testing" not in row["reason"]
    assert len(retries.messages) == 2
    retries.clear()
    monkeypatch.setenv("ZIPMAP_RETRY_ATTEMPTS", "2")  # read on the worker, as a batch's workers would
    monkeypatch.setenv("ZIPMAP_RETRY_BACKOFF", "0.1")
    row = reconstruct_one("m0", src, str(tmp_path / "out"), {"max_voxels": 8}, quick)
    assert "(after 2 attempts" in row["reason"] and len(retries.messages) == 1
    retries.clear()
    monkeypatch.setenv("ZIPMAP_RETRY_ATTEMPTS", "10")
    monkeypatch.setenv("ZIPMAP_RETRY_PATIENCE", "0.3")  # the waiting budget ends the retries first
    t0 = time.perf_counter()
    row = reconstruct_one("m0", src, str(tmp_path / "out"), {"max_voxels": 8}, quick)
    assert row["status"] == "failed" and "attempts" in row["reason"] and len(retries.messages) < 9
    assert time.perf_counter() - t0 < 20
