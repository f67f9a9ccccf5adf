"""The zipmap command line: evaluate writes the documented JSON layout and prints a table."""

import json

from cli import main
from model.evaluation.metrics import METRIC_KEYS
from model.synthetic import write_collection


def test_evaluate_command(tmp_path, capsys):
    a = write_collection(str(tmp_path / "a" / "blk"), 1_000_700, "aerial", 3, 56, 84)
    b = write_collection(str(tmp_path / "b" / "blk"), 1_000_701, "street", 3, 56, 84)  # same folder name
    out = tmp_path / "report.json"
    assert main(["evaluate", a, b, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"overall", "collections", "baseline"}
    assert set(report["overall"]) == set(METRIC_KEYS) == set(report["baseline"]["overall"])
    assert sorted(report["collections"]) == ["blk", "blk#1"]
    printed = capsys.readouterr().out
    assert "OVERALL" in printed and "baseline" in printed and str(out) in printed


def test_demo_scores_and_reconstructs(prefect_server, tmp_path, capsys):
    from storage.zarr_store import read_status

    assert main(["demo", "--out", str(tmp_path), "--paths", "street", "--frames", "4", "--size", "56", "84",
                 "--workers", "1"]) == 0
    out = capsys.readouterr().out
    store = tmp_path / "reconstructions" / "street-1000000.zarr"
    assert read_status(str(store)) == "complete" and "xr.open_datatree" in out
    assert json.loads((tmp_path / "report.json").read_text())["collections"]
    # the LocalCluster the run started had a dashboard, linked from the run
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def links():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
                any_=["dask-dashboard"])))

    assert any("http://127.0.0.1:" in a.data and "/status" in a.data for a in asyncio.run(links()))


def test_generate_writes_collections_and_a_manifest_to_s3(s3_bucket, tmp_path, capsys):
    from storage.collection import read_collection
    from storage.tables import read_manifest

    bucket, opts = s3_bucket
    options = tmp_path / "opts.json"
    options.write_text(json.dumps(opts))
    out = f"s3://{bucket}/demo"
    assert main(["generate", out, "--count", "3", "--frames", "2", "--size", "28", "42",
                 "--storage-options", str(options)]) == 0
    assert "3 collection(s)" in capsys.readouterr().out
    manifest = read_manifest(f"{out}/manifest.csv", opts)
    assert list(manifest["collection_id"]) == ["street-1000000", "orbit-1000001", "aerial-1000002"]
    coll = read_collection(manifest["source"][1], opts)
    assert coll.num_frames == 2 and coll.source_format == "zipmap"
    assert coll.image_sizes() == [(28, 42)] * 2  # (height, width)
