"""The Great Expectations suites on hand-made tables: clean tables pass, and each kind of bad row fails with a
line that names it (the collection id, or the image file name)."""

import ast
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from validation import (
    IMAGE_COLUMNS,
    OUTPUT_COLUMNS,
    manifest_row_problems,
    render_html,
    render_report,
    validate_images,
    validate_manifest,
    validate_output,
)

ROOT = Path(__file__).resolve().parents[2]


def _one(lines: list[str], column: str) -> str:
    """The one line about ``column``."""
    found = [line for line in lines if line.startswith(f"{column}:")]
    assert len(found) == 1, lines
    return found[0]


# --- manifest ---------------------------------------------------------------------------------------------------


def _manifest(ids, sources=None) -> pd.DataFrame:
    sources = sources if sources is not None else [f"s3://bucket/in/{i}" for i in range(len(ids))]
    return pd.DataFrame({"collection_id": ids, "source": sources, "note": "extra columns are allowed"})


def test_clean_manifest_passes():
    df = _manifest(["scene-1", "scene_2", "Scene.3", "a" * 200])
    outcome = validate_manifest(df)
    assert outcome.success, outcome.failures
    assert outcome.failures == [] and outcome.warnings == []
    assert outcome.statistics == {"evaluated": len(outcome.results), "successful": len(outcome.results),
                                  "unsuccessful": 0}
    assert manifest_row_problems(df) == {}


def test_unsafe_ids_and_null_sources_fail_naming_them():
    df = _manifest(["good", "../etc", "a/b", ".hidden", "", "nosource", "x\n", "b" * 201],
                   ["s3://b/0", "s3://b/1", "s3://b/2", "s3://b/3", "s3://b/4", None, "s3://b/6", "s3://b/7"])
    outcome = validate_manifest(df)
    assert not outcome.success
    ids = _one(outcome.failures, "collection_id")
    for bad in ("'../etc'", "'a/b'", "'.hidden'", "row 5 ''", "'x\\n'", "'" + "b" * 201 + "'"):
        assert bad in ids
    assert "'good'" not in ids
    assert "row 6 'nosource'" in _one(outcome.failures, "source")


def test_row_problems_flag_exactly_the_bad_rows_and_every_repeat():
    df = _manifest(["a", "b", "a", "../x", None, "c", "a", "d", "e"],
                   ["s0", "s1", "s2", "s3", "s4", "   ", "s6", None, "s8"])
    df.index = range(10, 19)  # keys are index labels; row numbers in messages count from 1
    problems = manifest_row_problems(df)
    assert sorted(problems) == [12, 13, 14, 15, 16, 17]
    assert problems[12] == problems[16] == "collection_id 'a' repeats row 1"
    assert "'../x'" in problems[13] and "not a safe id" in problems[13]
    assert problems[14] == "collection_id is null"
    assert problems[15] == "source is empty"
    assert problems[17] == "source is null"
    outcome = validate_manifest(df)  # repeats are only a warning there: the caller fails those rows itself
    assert "'a'" in _one(outcome.warnings, "collection_id")


def test_repeated_ids_alone_warn_but_pass():
    outcome = validate_manifest(_manifest(["a", "a"]))
    assert outcome.success and outcome.failures == []
    assert outcome.warnings == ["collection_id: collection id repeats (only its first row is processed): "
                                "row 1 'a', row 2 'a'"]


def test_manifest_without_source_column_fails_every_row():
    df = pd.DataFrame({"collection_id": ["a", "b"]})
    outcome = validate_manifest(df)
    assert outcome.failures == ["source: required column missing"]
    assert manifest_row_problems(df) == {0: "no source column", 1: "no source column"}


# --- images -----------------------------------------------------------------------------------------------------


def _images(n: int = 4, posed: bool = True) -> pd.DataFrame:
    """A clean per-image table: cameras on a circle looking at the origin, 64x48 images."""
    rows = []
    for i in range(n):
        a = 2 * np.pi * i / n
        R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        t = np.array([0.0, 0.0, 3.0])
        centre = -R.T @ t
        pose = dict(fx=60.0, fy=60.0, cx=32.0, cy=24.0,
                    rotation_orthonormal_error=float(np.abs(R @ R.T - np.eye(3)).max()),
                    rotation_det=float(np.linalg.det(R)), camera_x=centre[0], camera_y=centre[1], camera_z=centre[2])
        if not posed:
            pose = {k: np.nan for k in pose}
        rows.append({"collection_id": "scene-1", "image": f"{i:03d}.png",
                     "path": f"s3://bucket/scene-1/images/{i:03d}.png", "file_size": 5000 + i, "width": 64,
                     "height": 48, "format": "JPEG" if i % 2 else "PNG", "mode": "RGB", "has_pose": posed, **pose})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("posed", [True, False])
def test_clean_image_table_passes(posed):
    table = _images(posed=posed)
    assert tuple(table.columns) == IMAGE_COLUMNS
    outcome = validate_images(table)
    assert outcome.success, outcome.failures
    assert outcome.failures == [] and outcome.warnings == []


@pytest.mark.parametrize("column, value, line_column, shown", [
    ("fx", -5.0, "fx", "'002.png' (fx=-5)"),
    ("fy", 0.0, "fy", "'002.png' (fy=0)"),
    ("fx", np.nan, "nonfinite_columns", "'002.png' (fx=nan)"),
    ("camera_z", np.inf, "nonfinite_columns", "'002.png' (camera_z=inf)"),
    ("cx", 70.0, "width, cx", "'002.png' (width=64, cx=70)"),
    ("cy", -1.0, "cy", "'002.png' (cy=-1)"),
    ("cy", 48.0, "height, cy", "'002.png' (height=48, cy=48)"),
    ("rotation_orthonormal_error", 0.05, "rotation_orthonormal_error", "'002.png' (rotation_orthonormal_error=0.05)"),
    ("rotation_det", -1.0, "rotation_det", "'002.png' (rotation_det=-1)"),
    ("format", "GIF", "format", "'002.png' (format='GIF')"),
    ("file_size", 0, "file_size", "'002.png' (file_size=0)"),
    ("height", 70000, "height", "'002.png' (height=70000)"),
])
def test_bad_image_fails_naming_the_file(column, value, line_column, shown):
    table = _images()
    table.loc[2, column] = value
    outcome = validate_images(table)
    assert not outcome.success
    assert len(outcome.failures) == 1, outcome.failures
    line = _one(outcome.failures, line_column)
    assert shown in line and "'001.png'" not in line


def test_mixed_has_pose_fails_naming_the_odd_image():
    table = _images()
    table.loc[1, ["has_pose", "fx", "fy", "cx", "cy"]] = [False, np.nan, np.nan, np.nan, np.nan]
    outcome = validate_images(table)
    assert outcome.failures == ["has_pose: must be the same for every image (all posed or none); "
                                "these images differ from the majority: '001.png' (has_pose=False)"]


def test_repeated_names_and_too_few_images_fail():
    table = _images(2)
    table.loc[1, "image"] = "000.png"
    outcome = validate_images(table)
    assert "'000.png'" in _one(outcome.failures, "image")
    one = validate_images(_images(1))
    assert one.failures == ["table: a collection needs at least 2 images (observed 1)"]


def test_many_bad_images_are_capped_at_ten():
    table = _images(15)
    table["file_size"] = 0
    outcome = validate_images(table)
    line = _one(outcome.failures, "file_size")
    assert line.endswith("and 5 more") and "'009.png'" in line and "'010.png'" not in line
    entry = next(r for r in outcome.results if r["column"] == "file_size" and not r["success"])
    assert entry["unexpected"] == [0] * 10 and entry["unexpected_count"] == 15 and len(entry["rows"]) == 10


def test_missing_columns_are_one_line():
    outcome = validate_images(_images().drop(columns=["fx", "has_pose"]))
    assert outcome.failures == ["table: required columns missing: fx, has_pose"]


# --- output -----------------------------------------------------------------------------------------------------


def _output(collection_id="good", **changes) -> dict:
    row = {"collection_id": collection_id, "finite_depth_fraction": 1.0, "depth_conf_min": 1.0,
           "depth_conf_max": 7.5, "observed_fraction": 0.4, "occupied_fraction": 0.05, "volume_extent": 4.0,
           "camera_extent": 0.0, "camera_to_volume_distance": 0.0, "num_views": 4}
    return {**row, **changes}


def test_good_output_passes():
    summary = pd.DataFrame([_output(), _output("far-but-fine", camera_to_volume_distance=8.0)])
    assert tuple(summary.columns) == OUTPUT_COLUMNS
    outcome = validate_output(summary)
    assert outcome.success, outcome.failures


BAD_OUTPUTS = {
    "empty-decode": ({"occupied_fraction": 0.0}, "occupied_fraction"),
    "saturated": ({"occupied_fraction": 0.95}, "occupied_fraction"),
    "nan-depth": ({"finite_depth_fraction": 0.5}, "finite_depth_fraction"),
    "far-volume": ({"camera_to_volume_distance": 50.0}, "cameras_near_volume"),
    "inf-confidence": ({"depth_conf_max": np.inf}, "nonfinite_columns"),
    "unseen": ({"observed_fraction": 0.001}, "observed_fraction"),
}


@pytest.mark.parametrize("collection_id", sorted(BAD_OUTPUTS))
def test_bad_output_fails_naming_the_collection(collection_id):
    changes, column = BAD_OUTPUTS[collection_id]
    outcome = validate_output(pd.DataFrame([_output(), _output(collection_id, **changes)]))
    assert not outcome.success
    assert len(outcome.failures) == 1, outcome.failures
    line = _one(outcome.failures, column)
    assert f"'{collection_id}'" in line and "'good'" not in line


def test_far_volume_line_shows_both_distances():
    outcome = validate_output(pd.DataFrame([_output("far", camera_to_volume_distance=50.0, volume_extent=2.0)]))
    assert "'far' (camera_to_volume_distance=50, volume_extent=2)" in outcome.failures[0]
    entry = next(r for r in outcome.results if not r["success"])
    assert entry["unexpected"] == [{"camera_to_volume_distance": 50.0, "volume_extent": 2.0}]


def test_outcome_is_strict_json():
    outcome = validate_output(pd.DataFrame([_output("bad", depth_conf_max=np.nan)]))
    data = json.loads(json.dumps(outcome.to_dict(), allow_nan=False))
    assert data["suite"] == "output" and data["success"] is False
    assert {"expectation", "column", "success", "observed", "unexpected"} <= set(data["results"][0])


def test_threads_share_the_suites():
    frames = [pd.DataFrame([_output(f"c{i}", occupied_fraction=0.0 if i % 2 else 0.05)]) for i in range(6)]
    with ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(validate_output, frames))
    assert [o.success for o in outcomes] == [True, False] * 3
    assert "'c3'" in outcomes[3].failures[0]


# --- report and layering ----------------------------------------------------------------------------------------


def test_report_lists_failures_first_and_is_deterministic():
    def sections():
        return [("manifest", validate_manifest(_manifest(["ok", "../etc"]))),
                ("images scene-1", validate_images(_images())),
                ("output", validate_output(pd.DataFrame([_output("empty", occupied_fraction=0.0)])))]

    first = sections()
    report = render_report(first, "Batch run-1")
    assert report == render_report(sections(), "Batch run-1")
    assert report.startswith("# Batch run-1\n\n**Result: FAILED** (1 of 3 validations passed; 2 failure(s)")
    for _, outcome in first:
        for line in outcome.failures:
            assert f"- {line}" in report
    manifest_part = report.split("## manifest")[1].split("## images")[0]
    assert manifest_part.index("| FAILED |") < manifest_part.index("| passed |")
    page = render_html(first, "Batch <run-1>")
    assert "<title>Batch &lt;run-1&gt;</title>" in page and "&#x27;../etc&#x27;" in page


def test_batch_report_lists_every_suite_and_fails_with_any_collection():
    """A batch report: the manifest's full section, each collection's suites in compact form (carried back from
    the workers as JSON), the collections table; FAILED when a suite or a collection failed."""
    from validation import ValidationOutcome

    good = validate_images(_images())
    bad = validate_output(pd.DataFrame([_output("empty", occupied_fraction=0.0)]))
    carried = [json.loads(json.dumps(o.compact(), allow_nan=False)) for o in (good, bad)]
    assert "results" not in carried[0] and carried[1]["failures"] == bad.failures
    back = [ValidationOutcome.from_dict(d) for d in carried]
    assert (back[0].suite, back[0].success, back[0].statistics) == ("images", True, good.statistics)
    sections = [("manifest", validate_manifest(_manifest(["a", "b"]))), ("a", back[0]), ("b", back[1])]
    rows = [{"collection_id": "a", "status": "complete", "reason": ""},
            {"collection_id": "b", "status": "failed", "reason": "output validation failed | see below"}]
    report = render_report(sections, "Batch run-2", collections=rows)
    assert report.startswith("# Batch run-2\n\n**Result: FAILED** (2 of 3 validations passed; 1 failure(s), "
                             "0 warning(s); 1 of 2 collection(s) failed)")
    assert f"| a | images | passed | {good.statistics['evaluated']} | 0 | 0 |" in report
    assert "| b | output | FAILED |" in report
    assert "## a images" not in report  # a compact suite that passed: its summary line only
    assert f"## b output: FAILED\n\nFailures:\n\n- {bad.failures[0]}" in report
    assert "| b | failed | output validation failed \\| see below |" in report
    # every suite passed but a collection failed (e.g. its images could not be read): still FAILED
    rows[1]["status"] = "failed"
    passing = [("manifest", sections[0][1]), ("a", back[0])]
    assert "**Result: FAILED**" in render_report(passing, "t", collections=rows)
    assert "**Result: PASSED**" in render_report(passing, "t", collections=rows[:1])
    assert "collection(s) failed" not in render_report(passing, "t")  # not a batch report: as before
    page = render_html(sections, "Batch run-2", collections=rows)
    assert "Result: <span class=\"FAILED\">FAILED</span>" in page and "<h2>Collections</h2>" in page


def test_validation_imports_point_down_and_gx_lazily():
    forbidden = {"storage", "tasks", "flows", "model", "cli"}
    for path in (ROOT / "validation").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            assert not forbidden & {n.split(".")[0] for n in names}, (path, names)
    code = "import sys, validation; assert 'great_expectations' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
