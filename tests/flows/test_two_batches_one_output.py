"""Issue 17, one writer per output: two ``zipmap batch`` processes of one manifest into one OUT at once.

Each collection is written by one run only: it is ``complete`` in exactly one run's summary (the other
run skipped it: ``another run <id> is writing it``, or complete by the time it held the claim), and
every store is that run's alone and equals a clean single run's.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from model.synthetic import write_collection
from storage.claims import read_claim
from storage.zarr_store import read_attrs

pytestmark = pytest.mark.slow

FRAMES, H, W = 4, 56, 84
MAX_VOXELS = 16


def _zipmap_batch(tmp_path, name, manifest, out, api_url) -> subprocess.Popen:
    """``zipmap batch`` in a fresh process of its own (own HOME and temporary folder), on the tests' Prefect
    server (starting one per run would double the time)."""
    home, tmp = tmp_path / name / "home", tmp_path / name / "tmp"
    home.mkdir(parents=True)
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(HOME=str(home), TMPDIR=str(tmp), PREFECT_API_URL=api_url, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    script = Path(sys.executable).with_name("zipmap")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cli"]
    return subprocess.Popen([*command, "batch", str(manifest), str(out), "--max-voxels", str(MAX_VOXELS),
                             "--run-id", name, "--workers", "1"], cwd=tmp_path / name, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_batches_of_one_manifest_into_one_output(prefect_server, tmp_path):
    from prefect.settings import PREFECT_API_URL

    ids = ["w0", "w1"]
    rows = [{"collection_id": cid, "source": write_collection(str(tmp_path / "in" / cid), 1_000_700 + i,
                                                              ("street", "orbit")[i], FRAMES, H, W)}
            for i, cid in enumerate(ids)]
    manifest, out = tmp_path / "manifest.csv", tmp_path / "out"
    pd.DataFrame(rows).to_csv(manifest, index=False)

    runs = {name: _zipmap_batch(tmp_path, name, manifest, out, PREFECT_API_URL.value()) for name in ("run-a", "run-b")}

    # meanwhile, a clean single run of each collection (one torch thread, as on a Dask worker)
    import torch

    from tasks.batch import reconstruct_one

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clean = [reconstruct_one(cid, row["source"], str(tmp_path / "clean"), {"max_voxels": MAX_VOXELS})
                 for cid, row in zip(ids, rows)]
    finally:
        torch.set_num_threads(threads)
    assert [r["status"] for r in clean] == ["complete"] * len(ids), clean

    for name, proc in runs.items():
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, (name, stdout, stderr[-5000:])
    summaries = {name: pd.read_parquet(out / "_runs" / name / "summary.parquet").set_index("collection_id")
                 for name in runs}
    for cid in ids:
        seen = {name: (s.at[cid, "status"], s.at[cid, "reason"]) for name, s in summaries.items()}
        complete = [name for name, (status, _) in seen.items() if status == "complete"]
        assert len(complete) == 1, seen  # never complete in both
        winner, = complete
        loser, = set(runs) - {winner}
        assert seen[loser] in {("skipped", f"another run {winner} is writing it"), ("skipped", "")}, seen
        attrs = read_attrs(str(out / f"{cid}.zarr"))
        assert attrs["zipmap_status"] == "complete" and attrs["zipmap_run_id"] == winner
        assert read_claim(str(out), cid) is None  # released

        a = xr.open_datatree(str(tmp_path / "clean" / f"{cid}.zarr"), engine="zarr")
        b = xr.open_datatree(str(out / f"{cid}.zarr"), engine="zarr")
        for group, names in (("views", ("depth", "depth_conf", "world_to_camera")),
                             ("volume", ("tsdf", "weight", "rgb"))):
            for var in names:
                np.testing.assert_array_equal(a[group][var].values, b[group][var].values, err_msg=f"{cid} {var}")
