"""One classification of I/O failures (errors.is_transient / io_error), on real exceptions only: real s3fs
calls against an endpoint that is not there, a real S3 API (moto) and a real HTTP server that throttles,
real sockets. Transient faults become TransientError (retried by batches); missing files and bad input
never do. S3 filesystems carry bounded internal retries (storage.urls.fs_options)."""

import asyncio
import http.server
import socket
import struct
import threading
import time

import fsspec
import pytest

from errors import (
    CheckpointError,
    InputError,
    PoseCheckError,
    StorageError,
    TransientError,
    ZipMapError,
    io_error,
    is_transient,
    scrub,
)
from model.synthetic import write_collection
from storage.collection import read_collection
from storage.manifest import list_collections
from storage.tables import read_manifest
from storage.urls import S3_MAX_ATTEMPTS, filesystem, fs_options
from storage.zarr_store import ReconstructionStore, read_attrs

SECRET = "s3cr3t-value"


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.fixture()
def dead_s3():
    """Storage options for an S3 endpoint where nothing listens (connections are refused)."""
    return {"key": "testing", "secret": SECRET,
            "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{_dead_port()}"}}


def _raised(fn, *args, **kwargs) -> BaseException:
    try:
        fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001
        return exc
    raise AssertionError("nothing was raised")


class _Throttling(http.server.BaseHTTPRequestHandler):
    """Answers every request with ``status`` (an S3 XML error for 503 SlowDown) and counts the requests."""

    status = 503
    count = 0

    def _answer(self):
        type(self).count += 1
        body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                b"<Message>Please reduce your request rate.</Message></Error>") if self.status == 503 else b"busy"
        self.send_response(self.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = _answer

    def log_message(self, *args):
        pass


@pytest.fixture()
def throttling_server():
    def start(status):
        handler = type("Handler", (_Throttling,), {"status": status, "count": 0})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", handler

    servers = []
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# --- raw exceptions from real calls ----------------------------------------------------------------------

def test_refused_connection_from_s3fs_is_transient(dead_s3):
    fs, path = filesystem("s3://bucket/c/images/000.png", dead_s3)
    exc = _raised(fs.cat_file, path)
    assert type(exc).__name__ == "EndpointConnectionError"  # botocore's, not an OSError
    assert is_transient(exc)
    err = io_error(exc, "s3://bucket/c/images/000.png")
    assert isinstance(err, TransientError) and isinstance(err, StorageError) and isinstance(err, OSError)
    assert str(err).startswith("s3://bucket/c/images/000.png: cannot be read: transient")
    assert "EndpointConnectionError" in str(err) and SECRET not in str(err)


def test_missing_key_on_s3_is_input_not_transient(s3_bucket):
    bucket, opts = s3_bucket
    fs, path = filesystem(f"s3://{bucket}/nothing/here.png", opts)
    exc = _raised(fs.cat_file, path)
    assert isinstance(exc, FileNotFoundError) and not is_transient(exc)
    err = io_error(exc, f"s3://{bucket}/nothing/here.png")
    assert isinstance(err, InputError) and str(err) == f"s3://{bucket}/nothing/here.png: missing"
    assert isinstance(io_error(exc, "out", "cannot write", StorageError), StorageError)


def test_slow_down_503_is_transient_and_internal_retries_are_bounded(throttling_server):
    endpoint, handler = throttling_server(503)
    opts = {"key": "k", "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint}}
    fs, path = filesystem("s3://bucket/key", opts)
    t0 = time.perf_counter()
    exc = _raised(fs.cat_file, path)
    elapsed = time.perf_counter() - t0
    # s3fs translates the ClientError into OSError(EBUSY) caused by it; the cause holds SlowDown / 503
    assert isinstance(exc, OSError) and is_transient(exc)
    assert isinstance(io_error(exc, "s3://bucket/key"), TransientError)
    # one request, retried by botocore only: S3_MAX_ATTEMPTS requests, not s3fs's 5 x botocore's 5
    assert handler.count == S3_MAX_ATTEMPTS, handler.count
    assert elapsed < 15, elapsed


@pytest.mark.parametrize("status, transient", [(429, True), (500, True), (502, True), (404, False), (403, False)])
def test_http_status_from_fsspec_http(throttling_server, status, transient):
    endpoint, _ = throttling_server(status)
    exc = _raised(fsspec.filesystem("http", skip_instance_cache=True).cat_file, f"{endpoint}/weights.pt")
    assert is_transient(exc) is transient, repr(exc)


def test_socket_timeout_and_reset_are_transient():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)  # accepts into the backlog, never answers
        client = socket.create_connection(server.getsockname(), timeout=0.05)
        with client:
            timeout = _raised(client.recv, 10)
        assert isinstance(timeout, TimeoutError) and is_transient(timeout)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        client = socket.create_connection(server.getsockname(), timeout=5)
        conn, _ = server.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # an RST, not a FIN
        with client:
            time.sleep(0.05)
            reset = _raised(client.recv, 10)
    assert isinstance(reset, ConnectionResetError) and is_transient(reset)
    assert is_transient(_raised(asyncio.run, asyncio.wait_for(asyncio.sleep(1), 0.01)))  # asyncio.TimeoutError


def test_bad_input_and_local_errors_are_not_transient(tmp_path):
    for exc in (InputError("x"), PoseCheckError("x"), CheckpointError("x"), ValueError("x"),
                _raised(open, tmp_path / "absent.png", "rb"), _raised(open, tmp_path, "w"),
                StorageError("s3://b/out.zarr: another run took over this output")):
        assert not is_transient(exc), repr(exc)
    assert is_transient(TransientError("x"))
    try:  # a StorageError wrapping a transient fault is transient through its cause
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as inner:
            raise StorageError("s3://b/out.zarr: cannot create the output store") from inner
    except StorageError as outer:
        assert is_transient(outer)
    assert issubclass(TransientError, (ZipMapError, StorageError, OSError))


def test_scrub_removes_credentials_from_urls():
    text = "s3://AKIA:secretpw@bucket/key and https://h.example/w.pt?X-Amz-Signature=abc&X-Amz-Credential=k ok"
    assert scrub(text) == "s3://bucket/key and https://h.example/w.pt ok"
    err = io_error(ConnectionResetError("reset by https://u:pw@host/p?token=t"), "https://u:pw@host/w.pt?sig=1")
    assert isinstance(err, TransientError) and "pw" not in str(err) and "sig=" not in str(err)
    assert "https://host/w.pt" in str(err)


# --- the storage layer raises TransientError for faults, InputError for bad input ---------------------------

def test_reading_a_collection_from_an_unreachable_store_is_transient(dead_s3):
    err = _raised(read_collection, "s3://bucket/city/c0", dead_s3)
    assert isinstance(err, TransientError), repr(err)
    assert "s3://bucket/city/c0" in str(err) and SECRET not in str(err)


def test_reading_a_collection_with_a_missing_image_is_input(s3_bucket):
    bucket, opts = s3_bucket
    url = write_collection(f"s3://{bucket}/c", 5, "orbit", 2, 28, 42, storage_options=opts)
    fs = fsspec.filesystem("s3", **opts)
    fs.rm(f"{bucket}/c/cameras.json")
    fs.pipe_file(f"{bucket}/c/transforms.json", _transforms(["images/000.png", "images/001.png",
                                                             "images/gone.png"]))
    err = _raised(read_collection, url, opts)
    assert isinstance(err, InputError) and not is_transient(err)
    assert f"{url}/images/gone.png: missing" in str(err)


def test_store_manifest_and_listing_on_an_unreachable_store_are_transient(dead_s3):
    assert isinstance(_raised(read_attrs, "s3://bucket/out/c0.zarr", dead_s3), TransientError)
    store = ReconstructionStore("s3://bucket/out/c0.zarr", dead_s3)
    err = _raised(store.begin, {})
    assert isinstance(err, TransientError) and "s3://bucket/out/c0.zarr" in str(err)
    assert isinstance(_raised(read_manifest, "s3://bucket/manifest.csv", dead_s3), TransientError)
    assert isinstance(_raised(list_collections, "s3://bucket/city/", dead_s3), TransientError)


def test_remote_checkpoint_that_does_not_answer_is_transient(dead_s3, s3_bucket):
    from model.weights import local_copy

    quick = {**dead_s3, "config_kwargs": {"retries": {"mode": "standard", "total_max_attempts": 1}}}
    err = _raised(local_copy, "s3://models/zipmap.safetensors", quick)
    assert isinstance(err, TransientError) and "s3://models/zipmap.safetensors" in str(err)
    assert SECRET not in str(err)
    bucket, opts = s3_bucket
    missing = _raised(local_copy, f"s3://{bucket}/models/absent.safetensors", opts)
    assert isinstance(missing, CheckpointError) and not is_transient(missing) and "not found" in str(missing)


def test_s3_options_bound_botocore_retries_unless_told(monkeypatch):
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    opts = fs_options("s3://b/k", {"key": "k"})
    assert opts["config_kwargs"]["retries"] == {"mode": "standard", "total_max_attempts": S3_MAX_ATTEMPTS}
    mine = {"config_kwargs": {"retries": {"max_attempts": 9}, "read_timeout": 5}}
    assert fs_options("s3://b/k", mine) == mine  # the caller's own setting wins
    assert fs_options("/tmp/x", {}) == {} and fs_options("memory://x", None) == {}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    assert "config_kwargs" not in fs_options("s3://b/k", {})  # the environment's setting wins


def _transforms(paths) -> bytes:
    import json

    frames = [{"file_path": p, "transform_matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, float(k)], [0, 0, 0, 1]]}
              for k, p in enumerate(paths)]
    return json.dumps({"fl_x": 40.0, "fl_y": 40.0, "cx": 21.0, "cy": 14.0, "w": 42, "h": 28,
                       "frames": frames}).encode()

