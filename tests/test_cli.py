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
