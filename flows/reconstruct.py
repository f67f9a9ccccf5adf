"""Prefect flow ``reconstruct_collection``: one photo collection in, one Zarr store out.

    python -m flows.reconstruct SRC OUT [--voxel-size M] [--weights W] [--preset NAME] [--device cpu|cuda]

The stage sequence (:mod:`tasks.stages`) runs here with each stage a Prefect task (so the run shows
stage by stage in Prefect's UI), and without Prefect from ``zipmap reconstruct``.
"""

from __future__ import annotations

import argparse
import json
import sys

from prefect import flow, get_run_logger

from settings import ReconstructionSettings
from storage.urls import redact
from tasks.credentials import refuse_plain_secrets, with_credentials
from tasks.reconstruct import call_task, run_reconstruction
from tasks.retry import with_retries


@flow(name="reconstruct-collection")
def reconstruct_collection(src: str, out: str, collection_id: str | None = None, weights: str | None = None,
                           voxel_size: float | None = None, max_voxels: int = 128, device: str | None = None,
                           max_offline_frames: int | None = None, refine_poses: str = "auto",
                           preset: str | None = None, storage_options: dict | None = None,
                           credentials: str | None = None) -> dict:
    """Reconstruct one collection (local path or URL) into ``OUT/<collection_id>.zarr``. ``weights``: a
    checkpoint URL (the published ``.pt`` files are recognised; ``preset`` overrides); empty: bundled.
    ``storage_options``: public fsspec options only (secret values there, or URLs with credentials, are refused
    in one line: Prefect keeps a run's parameters); ``credentials``: the secret ones by reference, ``env:VAR``,
    ``file:PATH`` or ``block:NAME`` (:mod:`tasks.credentials`)."""
    refuse_plain_secrets("reconstruct-collection", storage_options, src=src, out=out, weights=weights)
    storage_options = with_credentials(storage_options, credentials)
    settings = ReconstructionSettings(weights=weights or None, preset=preset or None, voxel_size=voxel_size,
                                      max_voxels=max_voxels, device=device or None,
                                      max_offline_frames=max_offline_frames, refine_poses=refine_poses).check_here()
    logger = get_run_logger()
    summary = with_retries(run_reconstruction, src, out, settings, collection_id, what=redact(src), call=call_task,
                           log=logger.info, storage_options=storage_options)
    logger.info("complete: %s", summary["output"])
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.reconstruct", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("src", help="collection folder or URL")
    p.add_argument("out", help="output folder or URL")
    p.add_argument("--id", dest="collection_id", help="collection id (default: the source's last path component)")
    p.add_argument("--weights", help="checkpoint URL (default: the bundled model)")
    p.add_argument("--preset", help="network variant, overriding the one recognised from the checkpoint")
    p.add_argument("--voxel-size", type=float, help="voxel edge in world units")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    args = p.parse_args(argv)
    summary = reconstruct_collection(args.src, args.out, args.collection_id, args.weights, args.voxel_size,
                                     device=args.device, preset=args.preset)
    print(json.dumps({k: summary[k] for k in ("collection_id", "output", "status")}))
    return 0


__all__ = ["reconstruct_collection", "run_reconstruction", "call_task"]

if __name__ == "__main__":
    sys.exit(main())
