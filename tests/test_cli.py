"""The zipmap command line: evaluate writes the documented JSON layout and prints a table."""

import json

import pytest

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


def test_demo_reuses_an_unchanged_evaluation(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path), "--paths", "orbit", "--frames", "3", "--size", "56", "84",
            "--no-reconstruct"]
    assert main(args) == 0
    first = (tmp_path / "report.json").read_text()
    assert "reused" not in capsys.readouterr().out
    assert main(args) == 0
    assert "earlier evaluation, reused" in capsys.readouterr().out
    assert (tmp_path / "report.json").read_text() == first
    # a changed input is evaluated again
    (tmp_path / "collections" / "orbit-1000000" / "depth" / "000.npy").write_bytes(
        (tmp_path / "collections" / "orbit-1000000" / "depth" / "001.npy").read_bytes())
    assert main(args) == 0
    assert "reused" not in capsys.readouterr().out


# --- startup and parameter checks (no torch, Prefect or Dask before a command needs them) ----------------
def _fresh(code: str, *args: str, cwd=None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def test_import_cli_loads_neither_torch_nor_prefect():
    result = _fresh("import sys, cli; print(sorted(m for m in ('torch', 'prefect', 'dask', 'distributed') "
                    "if m in sys.modules))")
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_help_of_every_command_without_heavy_imports():
    from cli import COMMANDS, build_parser

    code = ("import sys, cli\n"
            "try:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('LOADED', sorted(m for m in ('torch', 'prefect', 'dask') if m in sys.modules))")
    for command in [None, *COMMANDS, "verify"]:
        result = _fresh(code, *([command] if command else []), "--help")
        assert result.returncode == 0 and "usage: zipmap" in result.stdout, (command, result.stderr)
        assert "LOADED []" in result.stdout, command
    # every option has help text; those with a default show it
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict)).choices
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, (name, action.option_strings)
        text = sub.format_help()
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
                assert f"(default: {action.default})" in " ".join(text.split()) or "default:" in (action.help or ""), (
                    name, action.option_strings)


@pytest.mark.parametrize("args, message", [
    (["reconstruct", "SRC", "OUT", "--voxel-size", "-1"], "voxel size must be a positive number"),
    (["reconstruct", "SRC", "OUT", "--max-voxels", "0"], "max voxels must be an integer"),
    (["reconstruct", "SRC", "OUT", "--device", "tpu"], "device must be cpu, cuda or cuda:N"),
    (["reconstruct", "SRC", "OUT", "--preset", "huge"], "unknown preset 'huge'"),
    (["reconstruct", "SRC", "OUT", "--weights", "/nowhere/checkpoint_aff_inv.pt"], "checkpoint file not found"),
    (["batch", "M.csv", "OUT", "--voxel-size", "-1"], "voxel size must be a positive number"),
    (["batch", "M.csv", "OUT", "--weights", "/nowhere/x.pt"], "checkpoint file not found"),
    (["evaluate", "C", "--json", "r.json", "--preset", "huge"], "unknown preset"),
    (["demo", "--device", "tpu"], "device must be"),
    (["predict", "--weights", "/nowhere/x.pt"], "checkpoint file not found"),
])
def test_parameter_errors_are_one_line_before_any_work(tmp_path, args, message):
    """Checked in a fresh process: one line, exit 2, no torch / Prefect / Dask loaded, nothing written."""
    code = ("import sys, cli\nrc = cli.main(sys.argv[1:])\n"
            "print('LOADED', sorted(m for m in ('torch', 'prefect', 'dask') if m in sys.modules))\nsys.exit(rc)")
    result = _fresh(code, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "LOADED []" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_ctrl_c_during_reconstruct_is_one_line_and_never_complete(tmp_path):
    """Ctrl-C during the zip pass of ``zipmap reconstruct``, from a fresh process: exit 130, one line, no
    traceback, no complete output. (Interrupts that land inside Zarr's writes or at interpreter exit can
    still print asyncio noise: issue 17's clean interrupts.)"""
    import signal
    import subprocess
    import sys

    from model.synthetic import write_collection
    from storage.zarr_store import read_status

    src = write_collection(str(tmp_path / "street-1"), 1_000_000, "street", 16, 112, 168)
    p = subprocess.Popen([sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", "reconstruct", src,
                          str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "check_poses" not in seen:  # the zip pass (about 2 s of network) has just begun
        line = p.stderr.readline()
        assert line, seen
        seen += line
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in err, seen + err
    assert err.strip().splitlines()[-1].startswith("interrupted: zipmap reconstruct stopped")
    assert read_status(str(tmp_path / "out" / "street-1.zarr")) is None  # nothing begun, nothing complete
