"""The ``zipmap`` command line.

    zipmap reconstruct SRC OUT [--weights W] [--preset NAME] [--voxel-size M] [--device cpu|cuda]
    zipmap batch MANIFEST OUT [--cluster ADDRESS | --workers N] [--weights W] [--preset NAME] [--verbose]
    zipmap evaluate COLLECTION [COLLECTION ...] [--weights W] [--preset NAME] --json OUT.json
    zipmap demo [--out demo]  (generate city blocks, score the model on them, reconstruct them)
    zipmap predict --images PHOTOS --out predictions.npz [--weights W] [--preset NAME]
    zipmap manifest SRC_PREFIX OUT.parquet [--since TIME]
    zipmap generate OUT [--count N]    (synthetic collections + OUT/manifest.csv, for demos)
    zipmap deploy [--pool zipmap] [--cron "0 2 * * *"] [--param KEY=VALUE ...]
    zipmap verify FIXTURE.npz (same as python -m model.verify_reference)
    zipmap check STORE [STORE ...] [--source SRC [--max-voxels N ...]]  (an output's integrity)

``--weights`` takes our checkpoints and the four published ``.pt`` files (the variant is recognised
from the tensors; ``--preset`` overrides that). This module imports neither torch, Prefect nor Dask
at start: ``zipmap --help`` and parameter errors answer at once; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import sys

PATH_KINDS = ("street", "orbit", "aerial", "handheld")


def _error(exc: BaseException) -> int:
    from errors import scrub

    print(f"error: {scrub(exc)}", file=sys.stderr)  # never a credential, whatever the message quotes
    return 2


def _storage_options(path: str | None, credentials: str | None = None) -> dict | None:
    """The ``--storage-options`` JSON file (ConfigError naming it when unreadable), its secret values registered
    with ``errors.scrub``; with ``credentials`` (``--credentials``: env:VAR, file:PATH, block:NAME) the options
    that reference stands for merged over it (for the commands that do their I/O here, without Prefect)."""
    from errors import ConfigError, register_secrets

    options = None
    if path:
        try:
            with open(path) as f:
                options = json.load(f)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read storage options ({exc})") from None
        if not isinstance(options, dict):
            raise ConfigError(f"{path}: storage options must be a JSON object")
        register_secrets(options)
    if credentials:
        from tasks.credentials import with_credentials

        options = with_credentials(options, credentials)
    return options


def _settings(args, here: bool = True):
    """The run's :class:`settings.ReconstructionSettings` from the options, validated (no torch needed)."""
    from settings import ReconstructionSettings

    values = {k: getattr(args, k) for k in ("weights", "preset", "voxel_size", "max_voxels", "device",
                                            "max_offline_frames", "refine_poses") if hasattr(args, k)}
    settings = ReconstructionSettings(**values)
    return settings.check_here() if here else settings


def _python() -> str:
    """The interpreter running this command, as a user can type it (a hint that works as printed)."""
    import os
    import shlex

    exe = sys.executable
    try:
        rel = os.path.relpath(exe)
        exe = rel if not rel.startswith("..") else exe
    except ValueError:
        pass
    return shlex.quote(exe)


# --- commands -------------------------------------------------------------------------------------------
def _reconstruct(args) -> int:
    """One collection -> OUT/<id>.zarr, with stage-by-stage progress and a closing summary."""
    from errors import ZipMapError

    try:
        settings = _settings(args)
        storage_options = _storage_options(args.storage_options, args.credentials)
    except ZipMapError as exc:
        return _error(exc)
    from storage.urls import redact
    from tasks.retry import with_retries
    from tasks.stages import run_reconstruction

    def log(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    def progress(done: int, total: int) -> None:
        print(f"\r  volume chunks {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    print(f"reconstructing {redact(args.src)}", file=sys.stderr)
    try:
        summary = with_retries(run_reconstruction, args.src, args.out, settings, args.id, what=redact(args.src),
                               storage_options=storage_options, log=log, progress=progress)
    except (ZipMapError, OSError) as exc:  # OSError: a local file of ours (--json, the checkpoint cache)
        return _error(exc)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    print(format_summary(summary))
    return 0


def _batch(args) -> int:
    """A manifest of collections over a Dask cluster (Prefect flow reconstruct_batch)."""
    from errors import ZipMapError

    try:
        settings = _settings(args, here=not args.cluster)
        storage_options = _storage_options(args.storage_options)  # run_batch keeps its secrets out of Prefect
    except ZipMapError as exc:
        return _error(exc)
    from flows.batch import run_batch

    try:
        rows = run_batch(args.manifest, args.out, cluster=args.cluster, workers=args.workers, settings=settings,
                         run_id=args.run_id, storage_options=storage_options, print_fn=print, verbose=args.verbose,
                         credentials=args.credentials)
    except (ZipMapError, OSError, ValueError) as exc:
        return _error(exc)
    return _batch_exit(rows, "batch")


def _batch_exit(rows: list[dict], command: str) -> int:
    """The exit code of a batch: 130 when it was interrupted (said in one line), 1 when a collection failed."""
    from flows.batch import RUN_OUTCOME

    if RUN_OUTCOME.get("interrupted"):
        print(f"interrupted: zipmap {command} stopped; the summary of every row is at {RUN_OUTCOME.get('summary')}",
              file=sys.stderr)
        return 130
    return 1 if any(r["status"] == "failed" for r in rows) else 0


def _evaluate(args) -> int:
    from errors import ZipMapError

    try:
        settings = _settings(args)
    except ZipMapError as exc:
        return _error(exc)
    try:
        report = _score(args.collections, settings, refine=args.refine_poses == "on")
    except ZipMapError as exc:
        return _error(exc)
    from model.evaluation.evaluate import format_table, write_report

    write_report(report, args.json)
    print(format_table(report))
    print(f"report: {args.json}")
    return 0


def _score(urls: list[str], settings, refine: bool = True, storage_options: dict | None = None) -> dict:
    """Evaluate the settings' network on collections with ground truth (the production inference path)."""
    from model.evaluation.evaluate import evaluate
    from model.inference import get_model, weights_sha256
    from storage.collection import read_collection
    from storage.urls import redact

    model = get_model(settings.weights, settings.preset, settings.device)
    report = evaluate(model, (read_collection(u, storage_options) for u in urls), refine=refine)
    report.update(weights=redact(settings.weights) if settings.weights else "bundled", model_variant=model.variant,
                  weights_sha256=weights_sha256(settings.weights), pose_refinement="on" if refine else "off")
    return report


def _demo(args) -> int:
    """Generate held-out city-block collections, score the model on them, reconstruct them in a batch."""
    from errors import ZipMapError

    try:
        settings = _settings(args)
    except ZipMapError as exc:
        return _error(exc)
    from pathlib import Path

    from model.synthetic import write_collection
    from model.training.loop import HELD_OUT_SEED_START

    out = Path(args.out)
    urls = []
    for i, kind in enumerate(args.paths):
        url = out / "collections" / f"{kind}-{HELD_OUT_SEED_START + i}"
        if not (url / "cameras.json").exists():
            write_collection(str(url), HELD_OUT_SEED_START + i, kind, args.frames, args.size[0], args.size[1])
        urls.append(str(url))
    report_path = out / "report.json"
    report = _reusable_report(report_path, urls, settings)
    if report is None:
        report = _score(urls, settings)
        report["inputs"] = _evaluation_inputs(urls, settings)
        from model.evaluation.evaluate import write_report

        write_report(report, str(report_path))
        reused = ""
    else:
        reused = " (unchanged inputs: the earlier evaluation, reused)"
    from model.evaluation.evaluate import format_table

    print(format_table(report))
    print(f"collections in {out / 'collections'}, report {report_path}{reused}")
    if not args.reconstruct:
        return 0
    import pandas as pd

    from flows.batch import run_batch

    manifest = out / "manifest.csv"
    pd.DataFrame({"collection_id": [Path(u).name for u in urls], "source": urls}).to_csv(manifest, index=False)
    try:
        rows = run_batch(str(manifest), str(out / "reconstructions"), workers=args.workers, settings=settings,
                         print_fn=print, verbose=args.verbose)
    except (ZipMapError, OSError, ValueError) as exc:
        return _error(exc)
    done = [r["output"] for r in rows if r["status"] == "complete" or (r["status"] == "skipped" and not r["reason"])]
    print(f"reconstructions in {out / 'reconstructions'}; run summaries in {out / 'reconstructions' / '_runs'}")
    if done:
        code = f"import xarray as xr; print(xr.open_datatree({done[0]!r}, engine='zarr'))"
        print(f"open one with: {_python()} -c \"{code}\"")
    return _batch_exit(rows, "demo")


def _evaluation_inputs(urls: list[str], settings) -> dict:
    """What an evaluation's result depends on: the collections (their files' sizes and times), the
    checkpoint's sha256, the variant and the code version."""
    from pathlib import Path

    from model.inference import weights_sha256
    from tasks.stages import code_version

    files = {}
    for url in urls:
        for p in sorted(Path(url).rglob("*")):
            if p.is_file():
                st = p.stat()
                files[str(p)] = [st.st_size, st.st_mtime_ns]
    return {"collections": urls, "files": files, "weights_sha256": weights_sha256(settings.weights),
            "preset": settings.preset, "code_version": code_version()}


def _reusable_report(path, urls: list[str], settings) -> dict | None:
    """The report at ``path`` when it was computed from exactly these inputs, else None."""
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    return report if report.get("inputs") == _evaluation_inputs(urls, settings) else None


def _predict(args) -> int:
    """Photos -> predictions.npz through the production inference path."""
    from errors import ZipMapError

    if args.checkpoint and not args.weights:
        args.weights = args.checkpoint
    try:
        settings = _settings(args)
    except ZipMapError as exc:
        return _error(exc)
    import time

    import numpy as np

    from model.inference import get_model, predict

    try:
        if args.random_init:
            import torch

            from model import ZipMap, get_config

            torch.manual_seed(0)
            model = ZipMap(get_config(args.preset or "small")).eval()
            model.variant = args.preset or "small"
            print("warning: random weights, predictions are meaningless", file=sys.stderr)
        elif args.ema:
            from model.weights import bundled_checkpoint, load_zipmap

            model = load_zipmap(args.weights or bundled_checkpoint(), args.preset, device=args.device or "cpu",
                                use_ema=True)
        else:
            model = get_model(settings.weights, settings.preset, settings.device)
        if args.demo:
            rng = np.random.default_rng(0)
            images = [np.kron(rng.integers(0, 255, (4, 6, 3), dtype=np.uint8), np.ones((49, 47, 1), np.uint8))
                      for _ in range(6)]
        else:
            from storage.images import read_photos

            images = read_photos(args.images)[1]
        t0 = time.perf_counter()
        result = predict(model, images, args.window)
    except ZipMapError as exc:
        return _error(exc)
    elapsed = time.perf_counter() - t0
    np.savez_compressed(args.out, **result)
    h, w = result["depth"].shape[-2:]
    device = next(model.parameters()).device
    print(f"{len(images)} frames ({h}x{w}, {model.variant}) on {device} in {elapsed:.2f}s -> {args.out}")
    return 0


def _manifest(args) -> int:
    """Every collection under a prefix -> a manifest (Parquet or CSV by the extension of OUT)."""
    from errors import ZipMapError
    from storage.manifest import list_collections
    from storage.tables import write_table
    from storage.urls import redact

    try:
        options = _storage_options(args.storage_options, args.credentials)
        listing = list_collections(args.prefix, options, since=args.since)
        table = listing.table.copy()
        if not args.out.endswith(".parquet"):
            table["modified"] = table["modified"].map(lambda t: t.isoformat() if t is not None else "")
        write_table(table, args.out, options)
    except (ZipMapError, OSError, ValueError) as exc:
        return _error(exc)
    for url, reason in listing.skipped:
        print(f"skipped {redact(url)}: {reason}", file=sys.stderr)
    since = f" changed since {args.since}" if args.since else ""
    print(f"{len(table)} collection(s){since} under {redact(args.prefix)} -> {redact(args.out)}")
    return 0


def _generate(args) -> int:
    """Synthetic city-block collections (with cameras.json and depth/) at OUT, plus OUT/manifest.csv."""
    from errors import ZipMapError

    try:
        options = _storage_options(args.storage_options, args.credentials)
    except ZipMapError as exc:
        return _error(exc)
    import pandas as pd

    from model.synthetic import write_collection
    from model.training.loop import HELD_OUT_SEED_START
    from storage.tables import write_table
    from storage.urls import join, redact

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


def _check(args) -> int:
    """Each store's integrity, as a batch checks it before it skips an output: one line per store,
    ``OK``, ``DAMAGED``, ``INCOMPLETE``, ``NO MANIFEST``, ``MISSING``, ``CHANGED`` (with ``--source``) or
    ``ERROR`` (could not be checked). Exit 0 when all are OK, 2 when one could not be checked, else 1."""
    from errors import ConfigError, ZipMapError

    try:
        storage_options = _storage_options(args.storage_options, args.credentials)
        settings = _settings(args, here=False) if args.source else None
        if args.source and len(args.stores) != 1:
            raise ConfigError("--source compares one store with its collection: give one STORE")
    except ZipMapError as exc:
        return _error(exc)
    from errors import scrub
    from storage.integrity import FINGERPRINT_KEY, check_store, fingerprint_changes
    from storage.urls import redact

    codes = []
    for url in args.stores:
        try:
            check = check_store(url, storage_options)
            changes = []
            if check.ok and settings is not None:
                from tasks.integrity import fingerprint

                changes = fingerprint_changes(check.attrs.get(FINGERPRINT_KEY),
                                              fingerprint(args.source, settings, storage_options))
        except ZipMapError as exc:
            print(scrub(f"ERROR {redact(url)}: {exc}"))
            codes.append(2)
            continue
        if check.ok and not changes:
            line = f"OK {check.url}"
        elif check.ok:
            line = f"CHANGED {check.url}: {'; '.join(changes)}"
        elif check.status is None:
            line = f"MISSING {check.url}: no store"
        elif not check.complete:
            line = f"INCOMPLETE {check.url} (zipmap_status={check.status!r})"
        elif not check.has_manifest:
            line = f"NO MANIFEST {check.url}"
        else:
            line = f"DAMAGED {check.url}: {check.problem()}"
        print(line)
        codes.append(0 if line.startswith("OK ") else 1)
    return max(codes, default=0)


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
        return _error(exc)
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
        ("network", f"{s.get('model_variant', '?')}, {s['views']['height']}x{s['views']['width']} px input"),
        ("views", f"{s['num_views']}"),
        ("poses", f"{s['pose_source']}, {'metric scale' if s['metric_scale'] else 'no metric scale'}"
                  + (f", {pc['num_flagged']} view(s) flagged" if s["poses_given"] else "")),
        ("zip pass", f"{s['zip_mode']} on {s['device']}, {s['network_seconds']:.2f} s"),
        ("volume", f"{'x'.join(map(str, vol['shape']))} voxels of {vol['voxel_size']:.4g} {s['units']}, "
                   f"{vol['observed_fraction']:.1%} observed, {vol['occupied_fraction']:.1%} near surfaces"),
        ("time", ", ".join(f"{k} {v:.2f}s" for k, v in s["timings"].items())),
    ]
    rows += [("warning", w) for w in pc.get("warnings") or ()]  # e.g. a capture without baseline: never silent
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# --- the parser -----------------------------------------------------------------------------------------
class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default (``(default: ...)``), except where there is none to show."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or action.required or not action.option_strings:
            return action.help
        return super()._get_help_string(action)


def _model_options(p: argparse.ArgumentParser, device_help: str = "cpu or cuda (default: cuda when present)") -> None:
    p.add_argument("--weights", default=None,
                   help="checkpoint URL: ours (.safetensors + .json) or a published .pt (checkpoint_aff_inv.pt, "
                        "checkpoint_with_ref_view.pt, checkpoint_online.pt, checkpoint_state_query.pt); default: "
                        "the bundled model")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="network variant (main, ref_view, streaming, state_query, ...), overriding the one "
                        "recognised from the checkpoint's tensors and file name")
    p.add_argument("--device", default=None, help=device_help)


def _volume_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--voxel-size", type=float, default=None,
                   help="voxel edge in world units (default: the longest side gets --max-voxels voxels)")
    p.add_argument("--max-voxels", type=int, default=128, help="voxels on the longest side when no --voxel-size")
    p.add_argument("--refine-poses", choices=["auto", "on", "off"], default="auto",
                   help="refine the predicted poses of neighbouring frames by direct image alignment with the "
                        "predicted depth (auto: fully when the collection has no poses, on the coarse image "
                        "levels when it has: enough for the metric scale and the pose report; on: fully)")


def _storage_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-options", default=None, metavar="FILE.json",
                   help="fsspec/s3fs options as JSON (endpoint_url, key, secret, ...); default: the AWS_* "
                        "environment variables")
    p.add_argument("--credentials", default=None, metavar="REF",
                   help="secret storage options by reference, never on the command line: env:VAR (a JSON object in "
                        "that variable), file:PATH (a JSON file) or block:NAME (a Prefect Secret block); merged over "
                        "--storage-options")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zipmap", description="ZipMap Pipeline command line", formatter_class=_Help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=_Help)

    rec = command("reconstruct", "one collection -> OUT/<collection_id>.zarr (views and a TSDF volume)")
    rec.add_argument("src", help="collection folder or URL (cameras.json, transforms.json, COLMAP, or images only)")
    rec.add_argument("out", help="output folder or URL; the store is OUT/<collection_id>.zarr")
    _model_options(rec)
    _volume_options(rec)
    rec.add_argument("--id", default=None, help="collection id (default: the source's last path component)")
    rec.add_argument("--max-offline-frames", type=int, default=None,
                     help="above this many frames, zip in streaming windows of this size (default: from free memory)")
    rec.add_argument("--json", default=None, help="also write the summary as JSON here")
    _storage_option(rec)

    bat = command("batch", "every collection of a manifest (CSV/Parquet: collection_id, source) over a Dask "
                           "cluster -> OUT/<collection_id>.zarr, OUT/_runs/<run id>/")
    bat.add_argument("manifest", help="manifest URL (.csv or .parquet)")
    bat.add_argument("out", help="output folder or URL")
    where = bat.add_mutually_exclusive_group()
    where.add_argument("--cluster", default=None, help="Dask scheduler address (default: a LocalCluster)")
    where.add_argument("--workers", type=int, default=2, help="worker processes of the LocalCluster")
    _model_options(bat, "cpu or cuda (default: cuda where the worker has it)")
    _volume_options(bat)
    bat.add_argument("--run-id", default=None, help="id of this run's summary folder (default: UTC time + random "
                                                    "suffix)")
    _storage_option(bat)
    bat.add_argument("--verbose", action="store_true", help="show Prefect's and Dask's INFO logs")

    ev = command("evaluate", "score a model on collections with cameras and depth/ (ground truth)")
    ev.add_argument("collections", nargs="+", help="collection folders or URLs")
    _model_options(ev)
    ev.add_argument("--json", required=True, help="where to write the JSON report")
    ev.add_argument("--refine-poses", choices=["on", "off"], default="on",
                    help="refine the predicted poses by direct image alignment (off scores the network alone)")

    demo = command("demo", "generate city-block collections, score the model on them and reconstruct them")
    demo.add_argument("--out", default="demo", help="folder for collections, report and reconstructions")
    demo.add_argument("--paths", nargs="+", default=list(PATH_KINDS), choices=PATH_KINDS, help="camera-path kinds")
    demo.add_argument("--frames", type=int, default=16, help="frames per collection")
    demo.add_argument("--size", type=int, nargs=2, default=[112, 168], metavar=("H", "W"), help="image size")
    _model_options(demo)
    demo.add_argument("--no-reconstruct", dest="reconstruct", action="store_false",
                      help="only score; skip the batch that writes the Zarr reconstructions")
    demo.add_argument("--workers", type=int, default=2, help="Dask worker processes for the batch")
    demo.add_argument("--verbose", action="store_true", help="show Prefect's and Dask's INFO logs of the batch")

    pr = command("predict", "run the network on photos and save its raw predictions (.npz)")
    pr.add_argument("--images", nargs="*", default=[], help="image files or one folder (local or URL)")
    pr.add_argument("--out", default="predictions.npz", help="the .npz to write")
    _model_options(pr)
    pr.add_argument("--checkpoint", default=None, help="the same as --weights")
    pr.add_argument("--window", type=int, default=None,
                    help="streaming window in frames (0 = offline; default: the variant's own mode)")
    pr.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    pr.add_argument("--random-init", action="store_true", help="no checkpoint: random weights (smoke test)")
    pr.add_argument("--demo", action="store_true", help="generate images instead of reading them")

    man = command("manifest", "list every collection under a folder or prefix into a manifest")
    man.add_argument("prefix", help="folder or URL (s3://bucket/city/) to search, at any depth")
    man.add_argument("out", help="manifest to write (.parquet, else CSV)")
    man.add_argument("--since", default=None, metavar="TIME",
                     help="only collections changed after TIME: ISO 8601 (2026-11-24T02:00Z; UTC if no zone) "
                          "or an age (90m, 24h, 7d)")
    _storage_option(man)

    gen = command("generate", "write synthetic city-block collections and their manifest to a folder/URL")
    gen.add_argument("out", help="folder or URL (s3://bucket/demo)")
    gen.add_argument("--count", type=int, default=4, help="number of collections")
    gen.add_argument("--paths", nargs="+", default=list(PATH_KINDS), choices=PATH_KINDS, help="camera-path kinds")
    gen.add_argument("--frames", type=int, default=16, help="frames per collection")
    gen.add_argument("--size", type=int, nargs=2, default=[112, 168], metavar=("H", "W"), help="image size")
    _storage_option(gen)

    dep = command("deploy", "create the Prefect deployments against PREFECT_API_URL")
    dep.add_argument("--pool", default=None, help="process work pool (default: the setting work_pool, zipmap)")
    dep.add_argument("--cron", default=None, help='nightly schedule (default: the setting nightly_cron, "0 2 * * *")')
    dep.add_argument("--timezone", default=None, help="of the schedule (default: the setting timezone, UTC)")
    dep.add_argument("--param", action="append", metavar="KEY=VALUE",
                     help="default parameter of the batch deployments (manifest, prefix, since, out, cluster, "
                          "weights, preset, workers, ...); repeatable")
    dep.add_argument("--settings", default=None, metavar="FILE.toml",
                     help="settings file (default: $ZIPMAP_SETTINGS or ./zipmap.toml)")
    dep.add_argument("--no-create-pool", dest="create_pool", action="store_false",
                     help="fail if the work pool does not exist instead of creating it")

    command("verify", "check parity with a reference fixture (see python -m model.verify_reference -h)")

    chk = command("check", "check outputs: complete, every chunk they recorded there (exit 0 only when all are OK)")
    chk.add_argument("stores", nargs="+", metavar="STORE", help="stores (OUT/<collection_id>.zarr), paths or URLs")
    chk.add_argument("--source", default=None, metavar="SRC",
                     help="also compare the store's fingerprint with this collection and the options below (the "
                          "run's own: inputs, parameters, weights); one STORE only")
    chk.add_argument("--weights", default=None, help="with --source: the run's checkpoint (default: the bundled model)")
    chk.add_argument("--preset", default=None, metavar="NAME", help="with --source: the run's --preset")
    _volume_options(chk)
    chk.add_argument("--max-offline-frames", type=int, default=None, help="with --source: the run's value")
    _storage_option(chk)
    return parser


def _sigterm_interrupts() -> None:
    """SIGTERM (a scheduler stopping the job, ``kill``) ends a command as Ctrl-C does: one line, exit 130, an
    output it had begun marked failed (``zipmap batch`` installs its own clean stop over this)."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (main() called from a thread): leave the default
        pass


COMMANDS = {"reconstruct": _reconstruct, "batch": _batch, "evaluate": _evaluate, "demo": _demo,
            "predict": _predict, "manifest": _manifest, "generate": _generate, "deploy": _deploy,
            "check": _check}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "verify" and not {"-h", "--help"} & set(argv[1:2]):
        from model.verify_reference import main as verify_main

        return verify_main(argv[1:])
    args = build_parser().parse_args(argv)
    _sigterm_interrupts()
    from errors import install_log_scrubbing

    install_log_scrubbing()  # log lines and tracebacks of every command through errors.scrub
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback (a store begun is already marked failed)
        print(f"\ninterrupted: zipmap {args.command} stopped; an output it had begun is marked failed, never "
              "complete", file=sys.stderr)
        return 130
    finally:  # an error is said in one line: zarr's abandoned asyncio writes (a full disk, Ctrl-C) must not add
        # "Task exception was never retrieved" tracebacks at interpreter exit
        import logging

        logging.getLogger("asyncio").setLevel(logging.CRITICAL)


if __name__ == "__main__":
    sys.exit(main())
