"""The ``zipmap`` command line.

    zipmap evaluate COLLECTION [COLLECTION ...] [--weights W] --json OUT.json
    zipmap reconstruct SRC OUT [--weights W] [--voxel-size M] [--device cpu|cuda]
    zipmap batch MANIFEST OUT [--cluster ADDRESS | --workers N] [--weights W]
    zipmap manifest SRC_PREFIX OUT.parquet [--since TIME]
    zipmap generate OUT [--count N]    (synthetic collections + OUT/manifest.csv, for demos)
    zipmap deploy [--pool zipmap] [--cron "0 2 * * *"] [--param KEY=VALUE ...]
    zipmap demo [--out demo]  (generate city blocks, reconstruct them with the bundled model, score)
    zipmap predict ...        (same as python -m model.predict)
    zipmap verify FIXTURE.npz (same as python -m model.verify_reference)
"""

from __future__ import annotations

import argparse
import sys

import torch


def _evaluate(args) -> int:
    from model.evaluation.evaluate import evaluate, format_table, write_report
    from model.weights import bundled_checkpoint, load_zipmap

    weights = args.weights or bundled_checkpoint()
    model = load_zipmap(weights, args.preset, device=args.device)
    report = evaluate(model, args.collections, refine=args.refine_poses == "on")
    report["weights"] = weights
    report["pose_refinement"] = args.refine_poses
    write_report(report, args.json)
    print(format_table(report))
    print(f"report: {args.json}")
    return 0


def _demo(args) -> int:
    """Generate held-out city-block collections, reconstruct them with the bundled model, score them."""
    from pathlib import Path

    from model.evaluation.evaluate import evaluate, format_table, write_report
    from model.synthetic import write_collection
    from model.training.loop import HELD_OUT_SEED_START
    from model.weights import bundled_checkpoint, load_zipmap

    out = Path(args.out)
    urls = []
    for i, kind in enumerate(args.paths):
        url = out / "collections" / f"{kind}-{HELD_OUT_SEED_START + i}"
        if not (url / "cameras.json").exists():
            write_collection(str(url), HELD_OUT_SEED_START + i, kind, args.frames, args.size[0], args.size[1])
        urls.append(str(url))
    weights = args.weights or bundled_checkpoint()
    report = evaluate(load_zipmap(weights, device=args.device), urls)
    report["weights"] = weights
    write_report(report, str(out / "report.json"))
    print(format_table(report))
    print(f"collections in {out / 'collections'}, report {out / 'report.json'}")
    if args.reconstruct:
        import pandas as pd

        from flows.batch import run_batch

        manifest = out / "manifest.csv"
        pd.DataFrame({"collection_id": [Path(u).name for u in urls], "source": urls}).to_csv(manifest, index=False)
        rows = run_batch(str(manifest), str(out / "reconstructions"), workers=args.workers, weights=args.weights,
                         device=args.device, print_fn=print)
        done = [r["output"] for r in rows if r["status"] in ("complete", "skipped")]
        print(f"reconstructions in {out / 'reconstructions'}; run summaries in {out / 'reconstructions' / '_runs'}")
        if done:
            print(f"open one with: python -c \"import xarray as xr; print(xr.open_datatree('{done[0]}', "
                  f"engine='zarr'))\"")
    return 0


def _reconstruct(args) -> int:
    """One collection -> OUT/<id>.zarr, with stage-by-stage progress and a closing summary."""
    import json

    from errors import ZipMapError
    from flows.reconstruct import run_reconstruction

    def log(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    def progress(done: int, total: int) -> None:
        print(f"\r  volume chunks {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    from storage.urls import redact

    storage_options = None
    if args.storage_options:
        try:
            with open(args.storage_options) as f:
                storage_options = json.load(f)
        except (OSError, ValueError) as exc:
            print(f"error: {args.storage_options}: cannot read storage options ({exc})", file=sys.stderr)
            return 2
    print(f"reconstructing {redact(args.src)}", file=sys.stderr)
    try:
        summary = run_reconstruction(args.src, args.out, args.id, args.weights, args.voxel_size, args.max_voxels,
                                     device=args.device, max_offline_frames=args.max_offline_frames,
                                     storage_options=storage_options, log=log, progress=progress,
                                     refine=args.refine_poses)
    except ZipMapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    print(format_summary(summary))
    return 0


def _load_storage_options(path: str | None):
    import json

    if not path:
        return None
    with open(path) as f:
        return json.load(f)


def _batch(args) -> int:
    """A manifest of collections over a Dask cluster (Prefect flow reconstruct_batch)."""
    from errors import ZipMapError
    from flows.batch import run_batch

    try:
        rows = run_batch(args.manifest, args.out, cluster=args.cluster, workers=args.workers, weights=args.weights,
                         voxel_size=args.voxel_size, max_voxels=args.max_voxels, device=args.device,
                         run_id=args.run_id, storage_options=_load_storage_options(args.storage_options),
                         print_fn=print)
    except (ZipMapError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if any(r["status"] == "failed" for r in rows) else 0


def _manifest(args) -> int:
    """Every collection under a prefix -> a manifest (Parquet or CSV by the extension of OUT)."""
    from errors import ZipMapError
    from storage.manifest import list_collections
    from storage.tables import write_table
    from storage.urls import redact

    options = _load_storage_options(args.storage_options)
    try:
        listing = list_collections(args.prefix, options, since=args.since)
        table = listing.table.copy()
        if not args.out.endswith(".parquet"):
            table["modified"] = table["modified"].map(lambda t: t.isoformat() if t is not None else "")
        write_table(table, args.out, options)
    except (ZipMapError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for url, reason in listing.skipped:
        print(f"skipped {redact(url)}: {reason}", file=sys.stderr)
    since = f" changed since {args.since}" if args.since else ""
    print(f"{len(table)} collection(s){since} under {redact(args.prefix)} -> {redact(args.out)}")
    return 0


def _generate(args) -> int:
    """Synthetic city-block collections (with cameras.json and depth/) at OUT, plus OUT/manifest.csv."""
    import pandas as pd

    from model.synthetic import write_collection
    from model.training.loop import HELD_OUT_SEED_START
    from storage.tables import write_table
    from storage.urls import join, redact

    options = _load_storage_options(args.storage_options)
    rows = []
    for i in range(args.count):
        kind = args.paths[i % len(args.paths)]
        cid = f"{kind}-{HELD_OUT_SEED_START + i}"
        url = write_collection(join(args.out, cid), HELD_OUT_SEED_START + i, kind, args.frames, args.size[0],
                               args.size[1], storage_options=options)
        rows.append({"collection_id": cid, "source": url})
        print(f"{cid}: {redact(url)}")
    manifest = write_table(pd.DataFrame(rows), join(args.out, "manifest.csv"), options)
    print(f"{len(rows)} collection(s); manifest {redact(manifest)}")
    return 0


def _deploy(args) -> int:
    """The Prefect deployments (reconstruct-batch/nightly, reconstruct-batch/on-demand,
    reconstruct-collection/on-demand) in the process work pool, against PREFECT_API_URL."""
    from errors import ZipMapError
    from flows.deploy import deploy, parse_params
    from settings import load_settings

    try:
        settings = load_settings(args.settings)
        ids = deploy(settings, pool=args.pool, cron=args.cron, timezone=args.timezone,
                     parameters=parse_params(args.param), create_pool=args.create_pool)
    except (ZipMapError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pool = args.pool or settings.work_pool
    for name, ident in ids.items():
        print(f"deployment {name}  ({ident})")
    print(f"work pool {pool!r}: start a worker with `prefect worker start --pool {pool}`; run a batch with "
          "`prefect deployment run reconstruct-batch/on-demand --param manifest=URL --param out=URL`")
    return 0


def format_summary(s: dict) -> str:
    vol, pc = s["volume"], s["pose_checks"]
    rows = [
        ("collection", s["collection_id"]), ("output", s["output"]), ("status", s["status"]),
        ("views", f"{s['num_views']} ({s['views']['height']}x{s['views']['width']} px at the network)"),
        ("poses", f"{s['pose_source']}, {'metric scale' if s['metric_scale'] else 'no metric scale'}"
                  + (f", {pc['num_flagged']} view(s) flagged" if s["poses_given"] else "")),
        ("zip pass", f"{s['zip_mode']} on {s['device']}, {s['network_seconds']:.2f} s"),
        ("volume", f"{'x'.join(map(str, vol['shape']))} voxels of {vol['voxel_size']:.4g} {s['units']}, "
                   f"{vol['observed_fraction']:.1%} observed, {vol['occupied_fraction']:.1%} near surfaces"),
        ("time", ", ".join(f"{k} {v:.2f}s" for k, v in s["timings"].items())),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "predict":
        from model.predict import main as predict_main

        return predict_main(argv[1:])
    if argv and argv[0] == "verify":
        from model.verify_reference import main as verify_main

        return verify_main(argv[1:])
    parser = argparse.ArgumentParser(prog="zipmap", description="ZipMap Pipeline command line")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="score a model on collections with cameras.json and depth/")
    ev.add_argument("collections", nargs="+", help="collection folders or URLs")
    ev.add_argument("--weights", default=None, help="checkpoint URL (default: the bundled model)")
    ev.add_argument("--preset", default=None, help="preset for .pt checkpoints (default: JSON beside the file)")
    ev.add_argument("--json", required=True, help="where to write the JSON report")
    ev.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ev.add_argument("--refine-poses", choices=["on", "off"], default="on",
                    help="refine the predicted poses by direct image alignment (default on; off scores the "
                         "network alone)")
    demo = sub.add_parser("demo", help="generate city-block collections, reconstruct and score them")
    demo.add_argument("--out", default="demo")
    demo.add_argument("--paths", nargs="+", default=["street", "orbit", "aerial", "handheld"])
    demo.add_argument("--frames", type=int, default=16)
    demo.add_argument("--size", type=int, nargs=2, default=[112, 168], metavar=("H", "W"))
    demo.add_argument("--weights", default=None, help="checkpoint URL (default: the bundled model)")
    demo.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    demo.add_argument("--no-reconstruct", dest="reconstruct", action="store_false",
                      help="only score; skip the batch that writes the Zarr reconstructions")
    demo.add_argument("--workers", type=int, default=2, help="Dask worker processes for the batch")
    rec = sub.add_parser("reconstruct", help="one collection -> OUT/<collection_id>.zarr (views and a TSDF volume)")
    rec.add_argument("src", help="collection folder or URL (cameras.json, transforms.json, COLMAP, or images only)")
    rec.add_argument("out", help="output folder or URL; the store is OUT/<collection_id>.zarr")
    rec.add_argument("--weights", default=None, help="checkpoint URL (default: the bundled model)")
    rec.add_argument("--voxel-size", type=float, default=None,
                     help="voxel edge in world units (default: the longest side gets --max-voxels voxels)")
    rec.add_argument("--max-voxels", type=int, default=128, help="voxels on the longest side when no --voxel-size")
    rec.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when present")
    rec.add_argument("--id", default=None, help="collection id (default: the source's last path component)")
    rec.add_argument("--max-offline-frames", type=int, default=None,
                     help="above this many frames, zip in streaming windows of this size")
    rec.add_argument("--json", default=None, help="also write the summary as JSON here")
    rec.add_argument("--refine-poses", choices=["auto", "on", "off"], default="auto",
                     help="refine the predicted poses of neighbouring frames by direct image alignment with the "
                          "predicted depth (auto: fully when the collection has no poses, on the coarse image "
                          "levels when it has: enough for the metric scale and the pose report; on: fully)")
    rec.add_argument("--storage-options", default=None, metavar="FILE.json",
                     help="fsspec/s3fs options as JSON (endpoint_url, key, secret, ...); default: the AWS_* "
                          "environment variables")
    bat = sub.add_parser("batch", help="every collection of a manifest (CSV/Parquet: collection_id, source) "
                                       "over a Dask cluster -> OUT/<collection_id>.zarr, OUT/_runs/<run id>/")
    bat.add_argument("manifest", help="manifest URL (.csv or .parquet)")
    bat.add_argument("out", help="output folder or URL")
    where = bat.add_mutually_exclusive_group()
    where.add_argument("--cluster", default=None, help="Dask scheduler address (default: a LocalCluster)")
    where.add_argument("--workers", type=int, default=2, help="worker processes of the LocalCluster")
    bat.add_argument("--weights", default=None, help="checkpoint URL (default: the bundled model)")
    bat.add_argument("--voxel-size", type=float, default=None)
    bat.add_argument("--max-voxels", type=int, default=128)
    bat.add_argument("--device", choices=["cpu", "cuda"], default=None)
    bat.add_argument("--run-id", default=None, help="default: UTC time + random suffix")
    bat.add_argument("--storage-options", default=None, metavar="FILE.json")
    man = sub.add_parser("manifest", help="list every collection under a folder or prefix into a manifest")
    man.add_argument("prefix", help="folder or URL (s3://bucket/city/) to search, at any depth")
    man.add_argument("out", help="manifest to write (.parquet, else CSV)")
    man.add_argument("--since", default=None, metavar="TIME",
                     help="only collections changed after TIME: ISO 8601 (2026-11-24T02:00Z; UTC if no zone) "
                          "or an age (90m, 24h, 7d)")
    man.add_argument("--storage-options", default=None, metavar="FILE.json")
    gen = sub.add_parser("generate", help="write synthetic city-block collections and their manifest to a folder/URL")
    gen.add_argument("out", help="folder or URL (s3://bucket/demo)")
    gen.add_argument("--count", type=int, default=4)
    gen.add_argument("--paths", nargs="+", default=["street", "orbit", "aerial", "handheld"],
                     choices=["street", "orbit", "aerial", "handheld"])
    gen.add_argument("--frames", type=int, default=16)
    gen.add_argument("--size", type=int, nargs=2, default=[112, 168], metavar=("H", "W"))
    gen.add_argument("--storage-options", default=None, metavar="FILE.json")
    dep = sub.add_parser("deploy", help="create the Prefect deployments against PREFECT_API_URL")
    dep.add_argument("--pool", default=None, help="process work pool (default: the setting work_pool, zipmap)")
    dep.add_argument("--cron", default=None, help='nightly schedule (default: the setting nightly_cron, "0 2 * * *")')
    dep.add_argument("--timezone", default=None, help="of the schedule (default: the setting timezone, UTC)")
    dep.add_argument("--param", action="append", metavar="KEY=VALUE",
                     help="default parameter of the batch deployments (manifest, prefix, since, out, cluster, "
                          "weights, workers, ...); repeatable")
    dep.add_argument("--settings", default=None, metavar="FILE.toml", help="settings file (default: $ZIPMAP_SETTINGS "
                                                                          "or ./zipmap.toml)")
    dep.add_argument("--no-create-pool", dest="create_pool", action="store_false",
                     help="fail if the work pool does not exist instead of creating it")
    sub.add_parser("predict", help="run the network on photos (see python -m model.predict -h)")
    sub.add_parser("verify", help="check parity with a reference fixture")
    args = parser.parse_args(argv)
    return {"evaluate": _evaluate, "demo": _demo, "reconstruct": _reconstruct,
            "batch": _batch, "manifest": _manifest, "deploy": _deploy,
            "generate": _generate}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
