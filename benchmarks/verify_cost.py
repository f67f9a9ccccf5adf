"""What it costs a rerun to trust a complete output, against what the output cost to make (issue 17's target:
verification under 5 % of the reconstruction time).

    python benchmarks/verify_cost.py [--frames 16] [--size 112 168] [--voxels 128 ...] [--repeats 20]
                                     [--out /tmp/zipmap-verify-bench]

A held-out collection is generated and reconstructed into a local store with the bundled model through
``tasks.stages.run_reconstruction`` (once to warm up, at a coarse grid, then timed at each ``--voxels``:
``--max-voxels``, the voxels on the longest side), and then the checks are timed, each ``--repeats`` times
(median), one row per grid:

- ``check_store``: the integrity check of ``zipmap check`` (root attributes, one listing of the store,
  every recorded chunk key and the chunk counts and bytes);
- ``reusable``: the whole skip decision of a batch rerun but the output suite (status, the fingerprint:
  one listing of the collection, the parameters, the checkpoint's sha256 as remembered per process, and
  ``check_store``);
- ``reusable_summary``: what a batch task runs before it skips: ``reusable`` plus the output suite
  (Great Expectations) on the stored summary;
- ``manifest``: recording the manifest when the store is completed (``ReconstructionStore.manifest``).

The checkpoint's sha256, computed once per worker process, is timed separately (``weights_sha256_cold``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.synthetic import write_collection  # noqa: E402
from model.weights import bundled_checkpoint  # noqa: E402
from settings import ReconstructionSettings  # noqa: E402
from storage.integrity import check_store  # noqa: E402
from storage.zarr_store import ReconstructionStore, read_attrs  # noqa: E402
from tasks.batch import reusable_summary  # noqa: E402
from tasks.integrity import reusable  # noqa: E402
from tasks.stages import run_reconstruction  # noqa: E402


def median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(src: str, out: str, voxels: int, args) -> dict:
    """Reconstruct ``src`` at ``voxels`` voxels on the longest side, then time the checks of its store."""
    settings = ReconstructionSettings(max_voxels=voxels)
    t0 = time.perf_counter()
    summary = run_reconstruction(src, out, settings)
    reconstruction = time.perf_counter() - t0
    url = summary["output"]
    params = settings.to_dict()

    assert check_store(url).ok and reusable(url, src, settings)[0] is not None
    assert reusable_summary(url, src, params, None)[0] is not None
    timed = {
        "check_store": median_s(lambda: check_store(url), args.repeats),
        "reusable": median_s(lambda: reusable(url, src, settings), args.repeats),
        "reusable_summary": median_s(lambda: reusable_summary(url, src, params, None), args.repeats),
        "manifest": median_s(lambda: ReconstructionStore(url).manifest(), args.repeats),
    }

    def cold_sha() -> None:
        digest = hashlib.sha256()
        with open(bundled_checkpoint(), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)

    timed["weights_sha256_cold"] = median_s(cold_sha, max(3, args.repeats // 4))
    manifest = read_attrs(url)["zipmap_manifest"]["arrays"]
    files = [f for f in Path(url).rglob("*") if f.is_file()]
    row = {"frames": args.frames, "size": args.size, "volume": summary["volume"]["shape"],
           "arrays": len(manifest), "chunks": sum(a["num_chunks"] for a in manifest.values()),
           "store_files": len(files), "store_mb": round(sum(f.stat().st_size for f in files) / 2**20, 2),
           "reconstruction_s": round(reconstruction, 3),
           **{f"{k}_ms": round(v * 1000, 2) for k, v in timed.items()},
           **{f"{k}_share_pct": round(100 * v / reconstruction, 3) for k, v in timed.items()}}
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, nargs=2, default=[112, 168], metavar=("H", "W"))
    p.add_argument("--voxels", type=int, nargs="+", default=[128])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default="/tmp/zipmap-verify-bench")
    args = p.parse_args(argv)

    src = str(Path(args.out) / "collections" / "orbit-1000000")
    if not (Path(src) / "cameras.json").exists():
        write_collection(src, 1_000_000, "orbit", args.frames, *args.size)
    out = str(Path(args.out) / "out")
    run_reconstruction(src, out, ReconstructionSettings(max_voxels=16))  # warm-up: model load, first calls
    for voxels in args.voxels:
        print(json.dumps(measure(src, str(Path(args.out) / f"out-{voxels}"), voxels, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
