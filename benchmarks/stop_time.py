"""How long ``zipmap batch`` takes to stop after a signal, and what it leaves behind.

    .venv/bin/python benchmarks/stop_time.py [--signal INT|TERM|KILL] [--collections 6] [--workers 2]

Writes small synthetic collections to a temporary folder, starts ``zipmap batch`` on them in a session of its
own, sends the signal as soon as the first store is complete, and prints the seconds until the command exited,
its exit code, the statuses of its summary rows, and the processes of its session still alive afterwards (the
Prefect server and the Dask workers it started must be gone, even after SIGKILL).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


def main() -> int:
    import pandas as pd

    from model.synthetic import write_collection
    from storage.zarr_store import read_status

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signal", default="INT", choices=["INT", "TERM", "KILL"])
    parser.add_argument("--collections", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    sig = getattr(signal, f"SIG{args.signal}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = [{"collection_id": f"c{k}", "source": write_collection(str(root / f"src{k}"), 300 + k, "orbit", 4, 56,
                                                                      84)} for k in range(args.collections)]
        pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
        out = root / "out"
        zipmap = Path(sys.executable).with_name("zipmap")
        proc = subprocess.Popen([str(zipmap), "batch", str(root / "manifest.csv"), str(out), "--max-voxels", "16",
                                 "--workers", str(args.workers), "--run-id", "stop"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        while not any(read_status(str(p)) == "complete" for p in out.glob("c*.zarr")) and proc.poll() is None:
            time.sleep(0.2)
        before = session_pids(proc.pid)
        t0 = time.monotonic()
        proc.send_signal(sig)
        proc.communicate()
        took = time.monotonic() - t0
        time.sleep(3)
        left = session_pids(proc.pid)
        summary = out / "_runs" / "stop" / "summary.parquet"
        statuses = pd.read_parquet(summary)["status"].value_counts().to_dict() if summary.exists() else None
        print(f"SIG{args.signal}: exited after {took:.1f} s with code {proc.returncode}; processes of the run before "
              f"the signal {len(before)}, left after it {len(left)}; summary rows {statuses}")
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
