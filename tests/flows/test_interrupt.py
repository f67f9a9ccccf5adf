"""Ctrl-C and SIGTERM stop ``zipmap batch`` cleanly.

A real ``zipmap batch`` (its own Prefect server, a LocalCluster of two worker processes) gets SIGINT or SIGTERM
once its first collection is complete. It must exit within 30 s with code 130, leave a summary with every
manifest row (the finished ones complete, the others failed with an ``interrupted`` reason), leave no store
marked ``writing``, and leave no process of its own behind (the server and the workers included: every process
of its session is checked by PID).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from model.synthetic import write_collection
from storage.zarr_store import read_status

N = 6
EXIT_WITHIN_S = 30.0


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    rows = []
    for k in range(N):
        src = write_collection(str(root / f"src{k}"), scene_seed=300 + k, path_kind="orbit", num_frames=4,
                               height=56, width=84)
        rows.append({"collection_id": f"c{k}", "source": src})
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _session_pids(sid: int) -> list[int]:
    """PIDs of the live processes in session ``sid`` (zombies excluded)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            pids.append(int(entry.name))
    return pids


def _complete_stores(out: Path) -> int:
    return sum(read_status(str(p)) == "complete" for p in out.glob("c*.zarr"))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_batch_stops_cleanly_on_a_signal(tmp_path, manifest, sig):
    home, tmp, out = tmp_path / "home", tmp_path / "tmp", tmp_path / "out"
    home.mkdir()
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(HOME=str(home), TMPDIR=str(tmp), ZIPMAP_STOP_GRACE="5")
    script = Path(sys.executable).with_name("zipmap")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cli"]
    proc = subprocess.Popen([*command, "batch", str(manifest), str(out), "--max-voxels", "16", "--workers", "2",
                             "--run-id", "run", "--refine-poses", "off"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while _complete_stores(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, f"the batch ended before it could be interrupted:\n{proc.stderr.read()}"
        assert _complete_stores(out) < N, "every collection was done before the signal"
        started = time.monotonic()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert took < EXIT_WITHIN_S, f"took {took:.1f} s to stop\n{stderr}"
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr

    summary = pd.read_parquet(out / "_runs" / "run" / "summary.parquet")
    assert sorted(summary["collection_id"]) == [f"c{k}" for k in range(N)]  # every row
    for _, row in summary.iterrows():
        status = read_status(str(out / f"{row['collection_id']}.zarr"))
        assert status != "writing", row["collection_id"]
        if row["status"] == "complete":
            assert status == "complete"
        else:
            assert row["status"] == "failed" and row["reason"].startswith("interrupted"), row.to_dict()
            assert status in (None, "failed")
    assert (summary["status"] == "failed").any()  # it really was cut short
    assert all(f"c{k}" in stdout for k in range(N)), stdout  # the closing table lists every collection

    time.sleep(1.0)  # children that got SIGTERM on the way out have a moment to go
    left = _session_pids(proc.pid)  # the batch's session: the CLI, the Prefect server, the Dask workers
    assert not left, f"processes of the run left behind: {left}"
