"""Orchestration overhead and memory of ``reconstruct_batch`` on a local Dask cluster.

    python benchmarks/batch.py --collections 100 --frames 4 --size 56 84 --voxels 24 --workers 2
    python benchmarks/batch.py --collections 1000 --frames 2 --size 28 42 --voxels 8 --workers 2

Generates the collections (once; reused from ``--work``), writes a manifest, starts a Prefect
server (SubprocessASGIServer) and a LocalCluster of ``--workers`` single-threaded processes, and
runs the batch flow. Reported:

- wall time of the flow run and collections per minute;
- orchestration overhead = 1 - (sum of the per-collection task times) / (workers x wall), i.e. the
  share of worker capacity not spent inside the collection tasks (Prefect, Dask, manifest,
  summary, cluster idle at the start and the end);
- memory: the resident set of every worker sampled every 0.5 s; the peak per worker, and the
  resident set after each tenth of the collections, to show whether it grows per collection.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--collections", type=int, default=100)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--size", type=int, nargs=2, default=[56, 84])
    p.add_argument("--voxels", type=int, default=24)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", default="/tmp/zipmap-batch-bench")
    p.add_argument("--runs", type=int, default=1,
                   help="batches run one after the other on the same cluster (later ones: warm workers, new output)")
    p.add_argument("--per-task", type=int, default=0, help="collections per task (0 = auto, about 32 tasks)")
    args = p.parse_args(argv)

    from distributed import Client, LocalCluster
    from prefect.server.api.server import SubprocessASGIServer

    from model.synthetic import write_collection

    work = Path(args.work)
    src = work / f"collections-{args.frames}x{args.size[0]}x{args.size[1]}"
    rows = []
    for i in range(args.collections):
        url = src / f"c{i:05d}"
        if not (url / "cameras.json").exists():
            write_collection(str(url), 2_000_000 + i, ("street", "orbit", "aerial", "handheld")[i % 4], args.frames,
                             *args.size)
        rows.append({"collection_id": f"c{i:05d}", "source": str(url)})
    manifest = work / f"manifest-{args.collections}.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    out = work / f"out-{int(time.time())}"

    server = SubprocessASGIServer()
    server.start(timeout=120)
    os.environ["PREFECT_API_URL"] = server.api_url
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from flows.batch import reconstruct_batch, task_runner, worker_config

    reports = []
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      config=worker_config()) as cl, \
            Client(cl.scheduler_address) as client:
        for run in range(args.runs):
            samples: list[tuple[float, dict]] = []
            stop = threading.Event()

            def sample(stop=stop, samples=samples):
                while not stop.is_set():
                    info = client.scheduler_info(n_workers=-1)["workers"]
                    samples.append((time.time(), {w: v["metrics"]["memory"] for w, v in info.items()}))
                    stop.wait(0.5)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            flow = reconstruct_batch.with_options(task_runner=task_runner(cl.scheduler_address))
            t0 = time.time()
            result = flow(str(manifest), f"{out}-{run}", max_voxels=args.voxels,
                          collections_per_task=args.per_task or None)
            wall = time.time() - t0
            stop.set()
            sampler.join()
            reports.append(summarise(args, run, result, t0, wall, samples))
            print(json.dumps(reports[-1]), flush=True)
    server.stop()
    return 0


def summarise(args, run, result, t0, wall, samples) -> dict:
    table = pd.DataFrame(result)
    busy = float(table["seconds"].sum())
    overhead = 1 - busy / (args.workers * wall)
    # where the idle worker time goes: before the first collection starts, after the last one ends,
    # and between collections (Prefect task runs, Dask scheduling, uneven ends of the two workers)
    started = table["started"].astype(float)
    ended = started + table["seconds"].astype(float)
    startup = float(started.min() - t0)
    tail = float(t0 + wall - ended.max())
    between = args.workers * wall - busy - args.workers * startup - args.workers * tail
    peaks = {}
    for _, mem in samples:
        for w, m in mem.items():
            peaks[w] = max(peaks.get(w, 0), m)
    # resident set over time (max over workers), in tenths of the run
    tenths = []
    for k in range(1, 11):
        t_k = t0 + wall * k / 10
        near = [max(mem.values()) for t, mem in samples if abs(t - t_k) < 1.0 and mem]
        tenths.append(round(max(near) / 2**20) if near else None)
    return {"run": run + 1, "workers_warm": run > 0, "collections": args.collections, "frames": args.frames,
            "size": args.size, "voxels": args.voxels, "workers": args.workers, "per_task": args.per_task or "auto",
            "wall_s": round(wall, 2), "collections_per_min": round(60 * args.collections / wall, 1),
            "task_seconds_sum": round(busy, 2), "overhead_share": round(overhead, 4),
            "first_start_s": round(startup, 2), "after_last_end_s": round(tail, 2),
            "idle_worker_s_between": round(between, 2),
            "statuses": table["status"].value_counts().to_dict(),
            "peak_rss_mib_per_worker": [round(v / 2**20) for v in peaks.values()],
            "rss_mib_by_tenth": tenths}


    return 0


if __name__ == "__main__":
    sys.exit(main())
