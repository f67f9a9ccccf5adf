"""Prefect flow ``reconstruct_collection``: one photo collection in, one Zarr store out.

    python -m flows.reconstruct SRC OUT [--voxel-size M] [--weights W] [--device cpu|cuda]

The same stage sequence (:func:`run_reconstruction`) runs without Prefect from ``zipmap
reconstruct``: each stage is a Prefect task, called as a task inside the flow (so the run shows
stage by stage in Prefect's UI) and through ``.fn`` from the CLI (no API server needed).
"""

from __future__ import annotations

import argparse
import json
import sys

from prefect import flow, get_run_logger

from tasks.reconstruct import call_plain, call_task, run_reconstruction


@flow(name="reconstruct-collection")
def reconstruct_collection(src: str, out: str, collection_id: str | None = None, weights: str | None = None,
                           voxel_size: float | None = None, max_voxels: int = 128, device: str | None = None,
                           max_offline_frames: int | None = None, refine_poses: str = "auto") -> dict:
    """Reconstruct one collection (local path or URL) into ``OUT/<collection_id>.zarr``."""
    logger = get_run_logger()
    summary = run_reconstruction(src, out, collection_id, weights, voxel_size, max_voxels, device=device,
                                 max_offline_frames=max_offline_frames, call=call_task, log=logger.info,
                                 refine=refine_poses)
    logger.info("complete: %s", summary["output"])
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.reconstruct", description=__doc__.split("\n")[0])
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--id", dest="collection_id")
    p.add_argument("--weights")
    p.add_argument("--voxel-size", type=float)
    p.add_argument("--device")
    args = p.parse_args(argv)
    summary = reconstruct_collection(args.src, args.out, args.collection_id, args.weights, args.voxel_size,
                                     device=args.device)
    print(json.dumps({k: summary[k] for k in ("collection_id", "output", "status")}))
    return 0


__all__ = ["reconstruct_collection", "run_reconstruction", "call_plain", "call_task"]

if __name__ == "__main__":
    sys.exit(main())
