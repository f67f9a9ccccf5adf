"""Secrets never leave the process: ``zipmap batch`` from and to S3 (moto) with credentials in the manifest's
source URLs (user info, a signed query) and in ``--storage-options``, against a real Prefect server.

Afterwards every file under OUT (bytes, and the decoded Parquet and Zarr text), the command's stdout and
stderr, and everything the Prefect server keeps of the run (flow run and parameters, task runs, logs,
artifacts, events, block documents; through its API and, byte by byte, its database file) are searched for
the secret strings: none may appear. The command's own environment holds no AWS keys, so the collection that
completes was read and written with the ``--storage-options`` secrets, which reached the Dask workers by
reference (``credentials="env:ZIPMAP_RUN_CREDENTIALS"``), not as a flow parameter.
"""

import asyncio
import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pandas as pd
import pytest
import s3fs

from model.synthetic import write_collection

FRAMES, H, W = 4, 56, 84

OPT_KEY, OPT_SECRET = "AKIAZIPMAPOPTKEY0001", "OptSecretQ7w3Z9xLm2Vb8Nc4"  # --storage-options (moto takes any)
URL_USER, URL_PASS = "AKIAZIPMAPURLUSER002", "UrlPassW0rd9Kq/Zk8mN2pLxq"  # s3://USER:PASS@bucket/... (raw "/")
SIG_KEY, SIG, TOKEN = "AKIAZIPMAPSIGNED0003", "SigZipmap5e1f9a0b7c2d", "TokZipmapSession6Hh4Jj"  # ?X-Amz-...
SECRETS = [OPT_KEY, OPT_SECRET, URL_USER, *URL_PASS.split("/"), SIG_KEY, SIG, TOKEN]


def _leaks(blob, where: str) -> list[str]:
    data = blob if isinstance(blob, bytes) else str(blob).encode()
    return [f"{secret} in {where}" for secret in SECRETS if secret.encode() in data]


def _out_files(fs, bucket: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {path: fs.cat_file(path) for path in fs.find(f"{bucket}/out")}


def _decoded_outputs(files: dict[str, bytes], opts: dict, bucket: str) -> str:
    """The text inside the outputs that a byte search of compressed files could miss: the Parquet summary's
    cells and every attribute and text array of the stores."""
    import xarray as xr

    texts = [pd.read_parquet(io.BytesIO(data)).to_csv() for path, data in files.items() if path.endswith(".parquet")]
    for store in sorted({p.split(".zarr/")[0] + ".zarr" for p in files if ".zarr/" in p}):
        tree = xr.open_datatree(f"s3://{store}", engine="zarr", storage_options=opts, consolidated=False)
        for node in tree.subtree:
            texts.append(json.dumps(node.attrs, default=str))
            for var in node.variables.values():
                texts.append(json.dumps(var.attrs, default=str))
                if var.dtype.kind in "OUS":
                    texts.append(" ".join(map(str, var.values.ravel().tolist())))
    return "\n".join(texts)


async def _prefect_record(api: str, run_id: str, since: str) -> dict:
    """Everything the Prefect server keeps of the batch run ``run_id``, as JSON text per kind."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    async with get_client() as client:
        runs, offset = [], 0
        while True:
            page = await client.read_flow_runs(limit=200, offset=offset)
            runs += page
            offset += len(page)
            if len(page) < 200:
                break
        ours = [r for r in runs if (r.parameters or {}).get("run_id") == run_id]
        if not ours:
            return {"flow_run": None}
        run = ours[0]
        by_run = FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        tasks = await client.read_task_runs(flow_run_filter=by_run)
        logs, offset = [], 0
        while True:
            page = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
                                          limit=200, offset=offset)
            logs += page
            offset += len(page)
            if len(page) < 200:
                break
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
        blocks = await client.read_block_documents(include_secrets=True)
    events = []
    with httpx.Client(timeout=30) as http:
        page = http.post(f"{api}/events/filter", json={"filter": {"occurred": {"since": since}}, "limit": 50}).json()
        while True:
            assert "events" in page, page
            events += page["events"]
            if not page.get("next_page"):
                break
            page = http.get(page["next_page"]).json()
    dump = json.dumps
    return {"flow_run": run, "parameters": run.parameters,
            "flow_runs": dump([r.model_dump(mode="json") for r in runs]),
            "task_runs": dump([t.model_dump(mode="json") for t in tasks]), "task_names": [t.name for t in tasks],
            "logs": dump([lg.model_dump(mode="json") for lg in logs]),
            "artifacts": dump([a.model_dump(mode="json") for a in artifacts]),
            "artifact_keys": {a.key for a in artifacts},
            "blocks": dump([b.model_dump(mode="json") for b in blocks], default=str),
            "events": dump(events), "event_names": [(e["event"], e["resource"].get("prefect.resource.id"))
                                                   for e in events]}


def _ids(task_names: list[str]) -> set[str]:
    return {cid for name in task_names for cid in name.split(", ")}


def _database_bytes() -> bytes:
    """The Prefect test server's SQLite database (and its write-ahead log), byte for byte."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    assert url.startswith("sqlite"), url
    path = Path(url.split(":///", 1)[1])
    return b"".join(Path(f"{path}{suffix}").read_bytes() for suffix in ("", "-wal")
                    if Path(f"{path}{suffix}").exists())


@pytest.mark.slow
def test_zipmap_batch_keeps_every_secret_out_of_outputs_logs_and_prefect(prefect_server, s3_bucket, tmp_path):
    from prefect.settings import PREFECT_API_URL

    bucket, opts = s3_bucket
    endpoint = opts["client_kwargs"]["endpoint_url"]
    fs = s3fs.S3FileSystem(**opts)
    write_collection(f"s3://{bucket}/in/c0", 1_000_700, "orbit", FRAMES, H, W, storage_options=opts)
    signed = (f"s3://{bucket}/in/c0?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={SIG_KEY}%2F20261204%2F"
              f"us-east-1%2Fs3%2Faws4_request&X-Amz-Security-Token={TOKEN}&X-Amz-Signature={SIG}")
    rows = [{"collection_id": "c0", "source": f"s3://{bucket}/in/c0"},
            {"collection_id": "c1", "source": f"s3://{URL_USER}:{URL_PASS}@{bucket}/in/c0"},
            {"collection_id": "c2", "source": signed}]
    fs.pipe_file(f"{bucket}/manifest.csv", pd.DataFrame(rows).to_csv(index=False).encode())
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"key": OPT_KEY, "secret": OPT_SECRET, "client_kwargs": {"endpoint_url": endpoint}}))

    api = PREFECT_API_URL.value()
    run_id = f"secrets-{uuid.uuid4().hex[:8]}"
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}  # no AWS keys at all
    env.update(HOME=str(home), TMPDIR=str(home / "tmp"), PREFECT_API_URL=api, PREFECT_HOME=str(home / "prefect"),
               PREFECT_LOGGING_LEVEL="INFO", PREFECT_SERVER_ANALYTICS_ENABLED="false", AWS_DEFAULT_REGION="us-east-1")
    script = Path(sys.executable).with_name("zipmap")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cli"]
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    proc = subprocess.run([*command, "batch", f"s3://{bucket}/manifest.csv", f"s3://{bucket}/out", "--workers", "1",
                           "--max-voxels", "24", "--run-id", run_id, "--storage-options", str(options), "--verbose"],
                          cwd=home, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-6000:]  # two rows failed
    assert "1 complete, 2 failed" in proc.stdout, output[-6000:]

    files = _out_files(fs, bucket)
    # Prefect: wait until the server has the run's task runs, the workers' log lines and the events
    record: dict = {}
    deadline = time.time() + 120
    while time.time() < deadline:
        record = asyncio.run(_prefect_record(api, run_id, since))
        run = record["flow_run"]
        if run is not None and _ids(record["task_names"]) == {"c0", "c1", "c2"} and \
                "c1 failed: " in record["logs"] and \
                ("prefect.flow-run.Completed", f"prefect.flow-run.{run.id}") in record["event_names"] and \
                any(name.startswith("prefect.task-run.") for name, _ in record["event_names"]):
            break
        time.sleep(2)
    run = record["flow_run"]
    assert run is not None, "no flow run of this batch on the Prefect server"

    # no secret anywhere: stdout, stderr, every file under OUT, Prefect's records and database
    leaks = _leaks(proc.stdout, "stdout") + _leaks(proc.stderr, "stderr")
    leaks += [leak for path, data in files.items() for leak in _leaks(data, path)]
    leaks += _leaks(_decoded_outputs(files, opts, bucket), "the decoded outputs")
    for kind in ("flow_runs", "task_runs", "logs", "artifacts", "events", "blocks"):
        leaks += _leaks(record[kind], f"Prefect {kind}")
    leaks += _leaks(_database_bytes(), "the Prefect database file")
    assert not leaks, leaks

    # ... and the searches saw what they should: the flow got the public options and a reference, never the
    # values; its task runs (named by collection id), the workers' log lines, artifacts and events are there
    assert record["parameters"]["storage_options"] == {"client_kwargs": {"endpoint_url": endpoint}}
    assert record["parameters"]["credentials"] == "env:ZIPMAP_RUN_CREDENTIALS"
    assert _ids(record["task_names"]) == {"c0", "c1", "c2"}, record["task_names"]
    assert "c1 failed: " in record["logs"] and "c2 failed: " in record["logs"]
    assert {"batch-summary", "batch-validation-report"} <= record["artifact_keys"]
    assert ("prefect.flow-run.Completed", f"prefect.flow-run.{run.id}") in record["event_names"]
    # c0 complete with the --storage-options keys (the command's environment had none); the URL with
    # credentials is refused in one line, the signed URL fails (S3 has no such object), both reasons masked
    summary = pd.read_parquet(io.BytesIO(files[f"{bucket}/out/_runs/{run_id}/summary.parquet"]))
    status = dict(zip(summary.collection_id, summary.status))
    reason = dict(zip(summary.collection_id, summary.reason))
    assert status == {"c0": "complete", "c1": "failed", "c2": "failed"}, summary[["collection_id", "reason"]]
    assert "credentials in an S3 URL are not used" in reason["c1"], reason["c1"]  # refused before any request
    assert reason["c2"] and "X-Amz" not in reason["c2"] and f"s3://{bucket}/in/c0" in set(summary.source)
    assert f"{bucket}/out/c0.zarr/zarr.json" in files and f"{bucket}/out/_runs/{run_id}/validation.md" in files


def test_credentials_from_a_prefect_secret_block(prefect_server):
    """``block:NAME``: a Prefect Secret block holding the storage options (as JSON text or an object)."""
    from prefect.blocks.system import Secret

    from errors import ConfigError, scrub
    from tasks.credentials import resolve_credentials

    creds = {"key": "AKIABLOCKKEY00000001", "secret": "BlockSecretR2d2C3po9"}
    Secret(value=json.dumps(creds)).save("zipmap-test-creds-json", overwrite=True)
    Secret(value=creds).save("zipmap-test-creds-object", overwrite=True)
    assert resolve_credentials("block:zipmap-test-creds-json") == creds
    assert resolve_credentials("block:zipmap-test-creds-object") == creds
    assert scrub("BlockSecretR2d2C3po9") == "***"
    with pytest.raises(ConfigError) as info:
        resolve_credentials("block:zipmap-no-such-block")
    assert "block:zipmap-no-such-block" in str(info.value) and "\n" not in str(info.value)


def test_flows_refuse_secret_parameters_in_one_line(prefect_server):
    """Given secret values as parameters anyway (a deployment run, a Python caller), each flow refuses before
    any I/O, in one line that says how to pass them, quoting none of them (the values Prefect recorded with
    the run cannot be taken back: hence the split in ``zipmap batch``)."""
    from errors import ConfigError
    from flows.batch import reconstruct_batch
    from flows.reconstruct import reconstruct_collection

    secret = {"key": "AKIAFLOWREFUSED00001", "secret": "FlowRefusedS3cretV4l", "client_kwargs": {"endpoint_url": "x"}}
    for call in (lambda: reconstruct_batch("s3://b/m.csv", "s3://b/out", storage_options=secret),
                 lambda: reconstruct_collection("s3://b/in/c0", "s3://b/out", storage_options=secret),
                 lambda: reconstruct_batch("s3://AKIAFLOWUSER0000002:FlowUrlPassW0rd@b/m.csv", "s3://b/out")):
        with pytest.raises(ConfigError) as info:
            call()
        text = str(info.value)
        assert "\n" not in text and "credentials=env:VARNAME" in text and "block:NAME" in text, text
        assert "AKIAFLOW" not in text and "FlowRefused" not in text and "FlowUrlPass" not in text
