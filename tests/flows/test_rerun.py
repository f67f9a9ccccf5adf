"""A rerun trusts an output only when it is intact and made from the same inputs, parameters and weights.

Collections are tiny (4 frames of 56x84 with max_voxels 24; where a test redoes one several times, 2
frames of 28x42 with max_voxels 8), reconstructed with the bundled model through
tasks.batch.reconstruct_one (what each batch task runs); one batch runs through the flow on a real
LocalCluster, and ``zipmap check`` as a user runs it.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import s3fs
import xarray as xr

from model.synthetic import write_collection
from storage.integrity import MANIFEST_KEY, check_store
from storage.zarr_store import read_status
from tasks.batch import reconstruct_one, reusable_summary

FRAMES, H, W = 4, 56, 84
PARAMS = {"max_voxels": 24}
SMALL = {"num_frames": 2, "height": 28, "width": 42}
TINY = {"max_voxels": 8}


def _redo(reason: str) -> str:
    """A complete row's reason without the pose warnings that may follow it (``...; warning: ...``)."""
    return reason.split("warning: ")[0].removesuffix("; ")


def _tsdf(url, opts=None):
    return xr.open_datatree(url, engine="zarr", storage_options=opts)["volume"]["tsdf"].values


def _edited(png: bytes) -> bytes:
    """The same photo a little brighter (a real change of an input's content)."""
    import io

    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels + 9, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _first_chunk(store: Path, array: str) -> Path:
    return sorted(p for p in (store / array / "c").rglob("*") if p.is_file())[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One collection and its complete output, made once for the tests that only read or copy them."""
    root = tmp_path_factory.mktemp("made")
    src = write_collection(str(root / "in" / "m0"), 1_000_800, "orbit", FRAMES, H, W)
    row = reconstruct_one("m0", src, str(root / "out"), PARAMS)
    assert row["status"] == "complete" and _redo(row["reason"]) == "", row
    return src, root / "out"


def test_rerun_skips_an_unchanged_output_and_redoes_a_changed_or_old_one(tmp_path):
    src = write_collection(str(tmp_path / "in" / "r0"), 1_000_801, "orbit", **SMALL)
    out = str(tmp_path / "out")
    store = tmp_path / "out" / "r0.zarr"
    first = reconstruct_one("r0", src, out, TINY)
    assert first["status"] == "complete" and _redo(first["reason"]) == ""

    before = (store / "zarr.json").stat().st_mtime_ns
    again = reconstruct_one("r0", src, out, TINY)  # nothing changed: skipped, the store left as it was
    assert (again["status"], again["reason"]) == ("skipped", ""), again
    assert (store / "zarr.json").stat().st_mtime_ns == before

    row = reconstruct_one("r0", src, out, {"max_voxels": 12})  # other parameters: the old output is not reused
    assert row["status"] == "complete" and _redo(row["reason"]) == "redone: parameters changed (max_voxels 8 -> 12)"
    assert max(_tsdf(str(store)).shape) == 12
    assert reconstruct_one("r0", src, out, {"max_voxels": 12})["status"] == "skipped"

    doc = json.loads((store / "zarr.json").read_text())  # a store written before manifests existed
    del doc["attributes"][MANIFEST_KEY]
    (store / "zarr.json").write_text(json.dumps(doc))
    assert reusable_summary(str(store), src, {"max_voxels": 12}, None) == (None, "redone: no manifest")


def test_a_fault_while_checking_is_retried_never_redone(s3_bucket, tmp_path):
    """The collection on S3 (its fingerprint from ETags stays the same between runs); when the object store
    cannot be listed during the check, the collection is retried and ends failed, its good output untouched."""
    bucket, opts = s3_bucket
    src = write_collection(f"s3://{bucket}/in/t0", 1_000_802, "orbit", **SMALL, storage_options=opts)
    out = str(tmp_path / "out")
    assert reconstruct_one("t0", src, out, TINY, opts)["status"] == "complete"
    assert reconstruct_one("t0", src, out, TINY, opts)["status"] == "skipped"
    store = tmp_path / "out" / "t0.zarr"
    before = (store / "zarr.json").stat().st_mtime_ns

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens here
    down = {**opts, "client_kwargs": {"endpoint_url": dead}, "config_kwargs": {"retries": {"total_max_attempts": 1}}}
    row = reconstruct_one("t0", src, out, TINY, down, attempts=2, backoff_s=0.1)
    assert row["status"] == "failed" and "(after 2 attempts" in row["reason"] and "TransientError" in row["reason"]
    assert "redone" not in row["reason"], row
    assert (store / "zarr.json").stat().st_mtime_ns == before and check_store(str(store)).ok

    fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
    fs.pipe_file(f"{bucket}/in/t0/images/001.png", _edited(fs.cat_file(f"{bucket}/in/t0/images/001.png")))
    row = reconstruct_one("t0", src, out, TINY, opts)
    assert row["status"] == "complete" and _redo(row["reason"]) == "redone: inputs changed", row


def test_batch_redoes_a_damaged_output_and_says_why(prefect_server, made, tmp_path):
    from flows.batch import run_batch
    from settings import ReconstructionSettings

    src, made_out = made
    out = tmp_path / "out"
    shutil.copytree(made_out / "m0.zarr", out / "m0.zarr")
    depth = xr.open_datatree(str(out / "m0.zarr"), engine="zarr")["views"]["depth"].values
    _first_chunk(out / "m0.zarr", "views/depth").unlink()  # readers would get NaN depth there
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame([{"collection_id": "m0", "source": src}]).to_csv(manifest, index=False)
    rows = run_batch(str(manifest), str(out), workers=1, settings=ReconstructionSettings(**PARAMS), run_id="r1")
    assert [(r["status"], _redo(r["reason"])) for r in rows] == [
        ("complete", "redone: missing chunks views/depth c/0/0/0")]
    table = pd.read_parquet(out / "_runs" / "r1" / "summary.parquet")
    assert [_redo(r) for r in table.reason] == ["redone: missing chunks views/depth c/0/0/0"]
    assert read_status(str(out / "m0.zarr")) == "complete" and check_store(str(out / "m0.zarr")).ok
    after = xr.open_datatree(str(out / "m0.zarr"), engine="zarr")["views"]["depth"].values
    # the redo gives the whole output back (a worker process's float rounding may differ in the last bit)
    assert np.isfinite(depth).all() and np.isfinite(after).all()
    np.testing.assert_allclose(after, depth, rtol=1e-5)


def test_zipmap_check_names_the_damage(made, tmp_path, capsys):
    from cli import main

    src, made_out = made
    good, damaged, writing = tmp_path / "good.zarr", tmp_path / "damaged.zarr", tmp_path / "writing.zarr"
    for copy in (good, damaged, writing):
        shutil.copytree(made_out / "m0.zarr", copy)
    for array in ("rgb", "tsdf", "weight"):  # at max_voxels 24 each volume array is one chunk
        _first_chunk(damaged, f"volume/{array}").unlink()
    doc = json.loads((writing / "zarr.json").read_text())
    doc["attributes"]["zipmap_status"] = "writing"
    (writing / "zarr.json").write_text(json.dumps(doc))

    code = ("import sys, cli\nrc = cli.main(sys.argv[1:])\n"
            "print('LOADED', sorted(m for m in ('torch', 'prefect', 'dask') if m in sys.modules))\nsys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run([sys.executable, "-c", code, "check", str(good), str(damaged), str(writing),
                             str(tmp_path / "none.zarr")], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"OK {good}", f"DAMAGED {damaged}: missing chunks volume/rgb c/0/0/0/0 (+2 more in 3 arrays)",
        f"INCOMPLETE {writing} (zipmap_status='writing')", f"MISSING {tmp_path / 'none.zarr'}: no store",
        "LOADED []"], result.stderr
    assert main(["check", str(good)]) == 0

    # --source also compares the fingerprint: the same options pass, others name what changed
    capsys.readouterr()
    assert main(["check", str(good), "--source", src, "--max-voxels", "24"]) == 0
    assert capsys.readouterr().out == f"OK {good}\n"
    assert main(["check", str(good), "--source", src, "--max-voxels", "16"]) == 1
    assert capsys.readouterr().out == f"CHANGED {good}: parameters changed (max_voxels 24 -> 16)\n"
    assert main(["check", str(good), str(damaged), "--source", src]) == 2  # one store only
    assert "error: --source compares one store" in capsys.readouterr().err
