"""Great Expectations suites for the batch manifest, a collection's images and a reconstruction's output.

Three validations, each a function that takes a small pandas table and returns a
:class:`ValidationOutcome` (JSON-friendly with ``to_dict``):

- :func:`validate_manifest`: the batch manifest, one row per collection (``collection_id``, ``source``; extra
  columns allowed). :func:`manifest_row_problems` says, in plain pandas, which rows are bad and why, so the
  caller can fail exactly those rows and run the rest.
- :func:`validate_images`: the per-image table of one collection (:data:`IMAGE_COLUMNS`): file facts and,
  where poses are given, intrinsics and pose sanity numbers.
- :func:`validate_output`: one row per reconstructed collection (:data:`OUTPUT_COLUMNS`): depth and volume
  statistics computed while the arrays were in memory.

The suites are written in code (``manifest_suite()``, ``images_suite()``, ``output_suite()``) and run in an
ephemeral GX context (nothing written to disk, analytics off) on a pandas data source with one dataframe
asset and a whole-dataframe batch definition. GX is imported on first use (about 3 s), and each suite is
built once per process; both happen behind a lock, so Dask worker threads can share them. Batches are
validated with ``Batch.validate``, not ``ValidationDefinition.run``: the latter keeps every result in the
context's in-memory store, which grows without bound in a long-lived worker.

Checks that need several columns (``camera_to_volume_distance <= 2 * volume_extent``, every pose value
finite) run on columns derived in pandas first (GX has no such expectations). Expectations on pose values
apply only to rows with ``has_pose`` (a GX row condition).

Failure lines name the column, the offending rows (the image file name, or the collection id; manifest
rows also by number, counting data rows from 1 as the batch flow prints them) with their values, and the
problem. Only failed expectations of severity ``critical`` make ``success`` false; failed ``warning``
ones (repeated collection ids, which the caller handles row by row) go to ``warnings``.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pose_rules import ORTHONORMAL_TOL

SAFE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z"  # \Z, not $: "$" would accept a trailing newline
SAFE_ID_RULE = "1-200 letters, digits, '.', '_' or '-', starting with a letter or digit"
MANIFEST_COLUMNS = ("collection_id", "source")

IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "TIFF", "WEBP", "BMP")
MIN_SIDE, MAX_SIDE = 16, 65536  # pixels
MIN_IMAGES = 2
DET_TOL = 1e-3  # |det R - 1|
POSE_COLUMNS = ("fx", "fy", "cx", "cy", "rotation_orthonormal_error", "rotation_det",
                "camera_x", "camera_y", "camera_z")
IMAGE_COLUMNS = ("collection_id", "image", "path", "file_size", "width", "height", "format", "mode",
                 "has_pose") + POSE_COLUMNS

MIN_FINITE_DEPTH = 0.99
OBSERVED_RANGE = (0.01, 1.0)
OCCUPIED_RANGE = (0.001, 0.9)  # below: an empty decode; above: a saturated one
CAMERA_DISTANCE_FACTOR = 2.0  # the mean camera centre lies within this many volume extents of the volume's box
OUTPUT_NUMBERS = ("finite_depth_fraction", "depth_conf_min", "depth_conf_max", "observed_fraction",
                  "occupied_fraction", "volume_extent", "camera_extent", "camera_to_volume_distance", "num_views")
OUTPUT_COLUMNS = ("collection_id",) + OUTPUT_NUMBERS

MAX_LISTED = 10  # offending values listed per expectation
ROW = "_row"  # derived: the row's position, so that failure lines can name rows and show their values
NONFINITE = "nonfinite_columns"  # derived: "fx=nan, cy=inf" for the row's non-finite values, else ""
NEAR = "cameras_near_volume"  # derived: camera_to_volume_distance <= CAMERA_DISTANCE_FACTOR * volume_extent

_SAFE_ID = re.compile(SAFE_ID_PATTERN)
_MISSING_COLUMN = re.compile(r'column "([^"]+)" in BatchData does not exist')


@dataclass
class ValidationOutcome:
    """What one validation found."""

    suite: str  # "manifest", "images", "output"
    success: bool  # no failed expectation of severity "critical"
    failures: list[str] = field(default_factory=list)  # one line per failed critical expectation
    warnings: list[str] = field(default_factory=list)  # one line per failed non-critical expectation
    results: list[dict] = field(default_factory=list)  # per expectation, in suite order (see _result)
    statistics: dict = field(default_factory=dict)  # evaluated / successful / unsuccessful

    def to_dict(self) -> dict:
        return asdict(self)

    def compact(self) -> dict:
        """The outcome without its per-expectation ``results``: small and JSON-friendly, for carrying one per
        collection and suite back from a worker (the failure and warning lines say what failed)."""
        return {"suite": self.suite, "success": bool(self.success), "failures": list(self.failures),
                "warnings": list(self.warnings), "statistics": dict(self.statistics)}

    @classmethod
    def from_dict(cls, data: dict) -> ValidationOutcome:
        """Back from :meth:`to_dict` or :meth:`compact`."""
        return cls(suite=data["suite"], success=bool(data["success"]), failures=list(data.get("failures") or []),
                   warnings=list(data.get("warnings") or []), results=list(data.get("results") or []),
                   statistics=dict(data.get("statistics") or {}))


# --- the suites ------------------------------------------------------------------------------------------------


def _problem(text: str, **extra: Any) -> dict:
    """Expectation ``meta``: the human-readable problem, and how failure lines show an offending row.

    By default a line shows the checked column(s); ``show=[...]`` names other columns (for a derived flag,
    the columns it was derived from); ``show_value=True`` prints the derived value itself ("fx=nan")."""
    return {"problem": text, **extra}


def _manifest_expectations(gxe, Column) -> list:
    safe_id = f"unsafe collection id (must be {SAFE_ID_RULE})"
    return [
        gxe.ExpectColumnToExist(column="collection_id", meta=_problem("required column missing")),
        gxe.ExpectColumnToExist(column="source", meta=_problem("required column missing")),
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=_problem("the manifest lists no collections")),
        gxe.ExpectColumnValuesToNotBeNull(column="collection_id", meta=_problem("must not be null")),
        gxe.ExpectColumnValuesToNotBeNull(column="source", meta=_problem("must not be null")),
        gxe.ExpectColumnValuesToMatchRegex(column="collection_id", regex=SAFE_ID_PATTERN, meta=_problem(safe_id)),
        gxe.ExpectColumnValuesToMatchRegex(column="source", regex=r"\S", meta=_problem("must be a non-empty string")),
        gxe.ExpectColumnValuesToBeUnique(column="collection_id", severity="warning",
                                         meta=_problem("collection id repeats (only its first row is processed)")),
    ]


def _images_expectations(gxe, Column) -> list:
    posed = Column("has_pose") == True  # noqa: E712 (a GX condition object, not a comparison)
    side = f"must be between {MIN_SIDE} and {MAX_SIDE} pixels"
    formats = f"unsupported format (expected one of {', '.join(IMAGE_FORMATS)})"
    expectations = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(IMAGE_COLUMNS), exact_match=False,
                                         meta=_problem("required columns missing")),
        gxe.ExpectTableRowCountToBeBetween(min_value=MIN_IMAGES,
                                           meta=_problem(f"a collection needs at least {MIN_IMAGES} images")),
        gxe.ExpectColumnValuesToBeUnique(column="image", meta=_problem("image file name repeats")),
    ]
    expectations += [gxe.ExpectColumnValuesToNotBeNull(column=c, meta=_problem("must not be null"))
                     for c in ("image", "file_size", "width", "height", "format", "has_pose")]
    expectations += [
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=MIN_SIDE, max_value=MAX_SIDE,
                                          meta=_problem(f"image width {side}")),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=MIN_SIDE, max_value=MAX_SIDE,
                                          meta=_problem(f"image height {side}")),
        gxe.ExpectColumnValuesToBeBetween(column="file_size", min_value=0, strict_min=True,
                                          meta=_problem("empty file (file_size must be > 0 bytes)")),
        gxe.ExpectColumnValuesToBeInSet(column="format", value_set=list(IMAGE_FORMATS),
                                        meta=_problem(formats)),
        # The expected state is the majority's (a parameter), so the images that differ are the ones named.
        gxe.ExpectColumnValuesToBeInSet(column="has_pose", value_set={"$PARAMETER": "pose_state"},
                                        meta=_problem("must be the same for every image (all posed or none); "
                                                      "these images differ from the majority")),
        gxe.ExpectColumnValuesToBeInSet(column=NONFINITE, value_set=[""],
                                        meta=_problem("pose values must be finite where has_pose", show_value=True)),
    ]
    for f in ("fx", "fy"):
        expectations.append(gxe.ExpectColumnValuesToBeBetween(
            column=f, min_value=0, strict_min=True, row_condition=posed,
            meta=_problem(f"focal length {f} must be > 0 pixels")))
    for c, size in (("cx", "width"), ("cy", "height")):
        expectations += [
            gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, strict_min=True, row_condition=posed,
                                              meta=_problem(f"principal point {c} must be > 0 (inside the image)")),
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=size, column_B=c, row_condition=posed,
                                                        meta=_problem(f"principal point {c} must be < {size} "
                                                                      "(inside the image)")),
        ]
    expectations += [
        gxe.ExpectColumnValuesToBeBetween(column="rotation_orthonormal_error", max_value=ORTHONORMAL_TOL,
                                          row_condition=posed,
                                          meta=_problem(f"rotation not orthonormal (max |R R^T - I| must be "
                                                        f"<= {ORTHONORMAL_TOL:g})")),
        gxe.ExpectColumnValuesToBeBetween(column="rotation_det", min_value=1 - DET_TOL, max_value=1 + DET_TOL,
                                          row_condition=posed,
                                          meta=_problem(f"rotation determinant must be 1 +- {DET_TOL:g} "
                                                        "(-1 is a reflection)")),
    ]
    return expectations


def _output_expectations(gxe, Column) -> list:
    lo_obs, hi_obs = OBSERVED_RANGE
    lo_occ, hi_occ = OCCUPIED_RANGE
    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(OUTPUT_COLUMNS), exact_match=False,
                                         meta=_problem("required columns missing")),
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=_problem("no reconstructed collection")),
        gxe.ExpectColumnValuesToNotBeNull(column="collection_id", meta=_problem("must not be null")),
        gxe.ExpectColumnValuesToBeUnique(column="collection_id", severity="warning",
                                         meta=_problem("collection id repeats")),
        gxe.ExpectColumnValuesToBeInSet(column=NONFINITE, value_set=[""],
                                        meta=_problem("values must be finite", show_value=True)),
        gxe.ExpectColumnValuesToBeBetween(column="finite_depth_fraction", min_value=MIN_FINITE_DEPTH, max_value=1,
                                          meta=_problem(f"too few finite depth values (must be >= "
                                                        f"{MIN_FINITE_DEPTH:g})")),
        gxe.ExpectColumnValuesToBeBetween(column="depth_conf_min", min_value=0,
                                          meta=_problem("negative depth confidence")),
        gxe.ExpectColumnValuesToBeBetween(column="observed_fraction", min_value=lo_obs, max_value=hi_obs,
                                          meta=_problem(f"the views see too little of the volume (must be in "
                                                        f"[{lo_obs:g}, {hi_obs:g}])")),
        gxe.ExpectColumnValuesToBeBetween(column="occupied_fraction", min_value=lo_occ, max_value=hi_occ,
                                          meta=_problem(f"empty or saturated decode (must be in "
                                                        f"[{lo_occ:g}, {hi_occ:g}])")),
        gxe.ExpectColumnValuesToBeBetween(column="volume_extent", min_value=0, strict_min=True,
                                          meta=_problem("empty volume (volume_extent must be > 0)")),
        gxe.ExpectColumnValuesToBeBetween(column="camera_extent", min_value=0,
                                          meta=_problem("negative camera extent")),
        gxe.ExpectColumnValuesToBeInSet(column=NEAR, value_set=[True],
                                        meta=_problem(f"the volume lies far from the cameras "
                                                      f"(camera_to_volume_distance must be <= "
                                                      f"{CAMERA_DISTANCE_FACTOR:g} x volume_extent)",
                                                      show=["camera_to_volume_distance", "volume_extent"])),
        gxe.ExpectColumnValuesToBeBetween(column="num_views", min_value=1, meta=_problem("no views")),
    ]


_EXPECTATIONS: dict[str, Callable] = {
    "manifest": _manifest_expectations,
    "images": _images_expectations,
    "output": _output_expectations,
}


@dataclass
class _Engine:
    """The process's ephemeral GX context, its one whole-dataframe batch definition, and the suites built so far."""

    gx: Any
    gxe: Any
    Column: Any
    context: Any
    batch_definition: Any
    suites: dict[str, Any] = field(default_factory=dict)


_LOCK = threading.RLock()  # guards building, and runs too: the GX context is not documented as thread-safe
_ENGINE: _Engine | None = None


def _engine() -> _Engine:
    global _ENGINE
    with _LOCK:
        if _ENGINE is None:
            os.environ["GX_ANALYTICS_ENABLED"] = "false"  # read when GX is imported
            import great_expectations as gx
            import great_expectations.expectations as gxe
            from great_expectations.data_context.types.base import ProgressBarsConfig
            from great_expectations.expectations.row_conditions import Column

            context = gx.get_context(mode="ephemeral")
            context.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm bars in worker logs
            asset = context.data_sources.add_pandas("zipmap").add_dataframe_asset("table")
            _ENGINE = _Engine(gx, gxe, Column, context, asset.add_batch_definition_whole_dataframe("whole"))
        return _ENGINE


def _suite(name: str):
    """The named suite, built once per process."""
    with _LOCK:
        engine = _engine()
        if name not in engine.suites:
            suite = engine.context.suites.add(engine.gx.ExpectationSuite(name=name))
            for expectation in _EXPECTATIONS[name](engine.gxe, engine.Column):
                suite.add_expectation(expectation)
            engine.suites[name] = suite
        return engine.suites[name]


def manifest_suite():
    """The manifest suite (a ``gx.ExpectationSuite``, shared: do not modify)."""
    return _suite("manifest")


def images_suite():
    """The per-image suite of one collection (a ``gx.ExpectationSuite``, shared: do not modify)."""
    return _suite("images")


def output_suite():
    """The reconstruction output suite (a ``gx.ExpectationSuite``, shared: do not modify)."""
    return _suite("output")


# --- running and reading results -------------------------------------------------------------------------------


def _is_null(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # list-likes
        return False


def _plain(value: Any) -> Any:
    """JSON-friendly: numpy scalars to Python, non-finite floats to "nan"/"inf"/"-inf", tuples to lists."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or _is_null(value):
        return None
    return value


def _fmt(value: Any) -> str:
    """A value as a failure line prints it."""
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float):
        return f"{value:.6g}"
    if value is None or _is_null(value):
        return "null"
    return repr(value) if isinstance(value, str) else str(value)


def _numbers(frame: pd.DataFrame, column: str) -> np.ndarray:
    """``column`` as float64 (anything non-numeric becomes NaN)."""
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _nonfinite(frame: pd.DataFrame, columns: tuple[str, ...], where: np.ndarray | None = None) -> list[str]:
    """Per row, ``"fx=nan, cy=inf"`` for the non-finite values among ``columns`` (rows outside ``where``: "")."""
    present = [c for c in columns if c in frame.columns]
    out = [""] * len(frame)
    if not present:
        return out
    values = np.stack([_numbers(frame, c) for c in present], axis=1)  # [rows, columns]
    bad = ~np.isfinite(values)
    if where is not None:
        bad &= where[:, None]
    for i in np.flatnonzero(bad.any(axis=1)):
        out[i] = ", ".join(f"{c}={_fmt(v)}" for c, v, b in zip(present, values[i], bad[i]) if b)
    return out


def _exception_message(info: Any) -> str | None:
    """The message of an expectation that could not be evaluated, else None."""
    if not isinstance(info, dict):
        return None
    if "raised_exception" in info:
        return str(info.get("exception_message")) if info["raised_exception"] else None
    for one in info.values():  # keyed by the metric that failed
        if isinstance(one, dict) and one.get("raised_exception"):
            return str(one.get("exception_message"))
    return None


@dataclass
class _Table:
    """The validated frame (with derived columns) and how its rows are named in failure lines."""

    frame: pd.DataFrame
    id_column: str
    number_rows: bool  # name rows by number too (manifest rows have no other stable name)

    def label(self, pos: int) -> str:
        ident = self.frame[self.id_column].iloc[pos] if self.id_column in self.frame.columns else None
        if _is_null(ident):
            return f"row {pos + 1}"
        return f"row {pos + 1} {_fmt(ident)}" if self.number_rows else _fmt(ident)

    def item(self, pos: int, show: list[str], value: Any, show_value: bool) -> str:
        """``'img_003.png' (fx=-1)``: the row and the values that matter."""
        shown = [f"{c}={_fmt(self.frame[c].iloc[pos])}" for c in show
                 if c in self.frame.columns and c != self.id_column]
        if show_value:
            shown.append(str(value))
        return self.label(pos) + (f" ({', '.join(shown)})" if shown else "")


def _columns_of(kwargs: dict) -> list[str]:
    if "column" in kwargs:
        return [kwargs["column"]]
    if "column_A" in kwargs:
        return [kwargs["column_A"], kwargs["column_B"]]
    return []


def _result(r, table: _Table, missing: set[str]) -> tuple[dict, str | None]:
    """One expectation result as a plain dict, and its failure line (None when it passed, or when it could not
    run for want of a column in ``missing``, which the column check already reports)."""
    config = r.expectation_config
    kwargs, meta = config.kwargs, dict(config.meta or {})
    columns = _columns_of(kwargs)
    column = ", ".join(columns) if columns else None
    severity = getattr(config.severity, "value", config.severity) or "critical"
    result = r.result or {}
    problem = meta.get("problem", config.type)
    message = _exception_message(r.exception_info)

    positions = [d[ROW] for d in result.get("partial_unexpected_index_list") or [] if ROW in d][:MAX_LISTED]
    values = list(result.get("partial_unexpected_list") or [])[:MAX_LISTED]
    show = [] if meta.get("show_value") else list(meta.get("show", columns))
    if "show" in meta:  # derived flag: list the columns it was derived from, not the flag
        unexpected = [{c: _plain(table.frame[c].iloc[p]) for c in show if c in table.frame.columns}
                      for p in positions]
    else:
        unexpected = [_plain(v) for v in values]

    if config.type == "expect_table_columns_to_match_set":
        missing = sorted((result.get("details") or {}).get("mismatched", {}).get("missing") or [])
        observed = f"missing: {', '.join(missing)}" if missing else "all present"
    elif "observed_value" in result:
        observed = _plain(result["observed_value"])
    elif "unexpected_count" in result:
        observed = f"{result['unexpected_count']} of {result.get('element_count', '?')} rows"
    else:
        observed = None

    entry = {"expectation": config.type, "column": column, "severity": severity, "success": bool(r.success),
             "observed": observed, "unexpected": unexpected, "unexpected_count": result.get("unexpected_count"),
             "rows": [table.label(p) for p in positions], "problem": problem, "exception": message}
    if r.success:
        return entry, None

    where = column or "table"
    if message is not None:
        named = _MISSING_COLUMN.search(message)
        if missing.intersection(columns) or any(f"'{c}'" in message or f'"{c}"' in message for c in missing):
            line = None
        else:
            line = f"{named.group(1)}: column missing" if named else f"{where}: not checked ({message})"
    elif config.type == "expect_column_to_exist":
        line = f"{where}: {problem}"
    elif config.type == "expect_table_columns_to_match_set":
        line = f"table: {problem}: {observed.removeprefix('missing: ')}"
    elif positions:
        items = [table.item(p, show, v, bool(meta.get("show_value"))) for p, v in zip(positions, values)]
        more = (result.get("unexpected_count") or 0) - len(items)
        line = f"{where}: {problem}: {', '.join(items)}" + (f" and {more} more" if more > 0 else "")
    else:
        line = f"{where}: {problem} (observed {_fmt(observed) if not isinstance(observed, str) else observed})"
    return entry, line


def _run(name: str, table: _Table, required: tuple[str, ...], parameters: dict | None = None) -> ValidationOutcome:
    """Validate ``table.frame`` against the named suite (``required``: the columns the suite checks exist)."""
    suite = _suite(name)
    missing = set(required) - set(table.frame.columns)
    index_columns = ([table.id_column] if table.id_column in table.frame.columns else []) + [ROW]
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": MAX_LISTED,
                     "unexpected_index_column_names": index_columns}
    with _LOCK:
        batch = _engine().batch_definition.get_batch(batch_parameters={"dataframe": table.frame})
        validation = batch.validate(suite, result_format=result_format, expectation_parameters=parameters)
    order = {e.id: i for i, e in enumerate(suite.expectations)}
    ordered = sorted(validation.results, key=lambda r: order.get(r.expectation_config.id, len(order)))

    results, failures, warnings = [], [], []
    for r in ordered:
        entry, line = _result(r, table, missing)
        results.append(entry)
        if line is not None:
            target = failures if entry["severity"] == "critical" else warnings
            if line not in target:  # one "column missing" line however many expectations hit it
                target.append(line)
    passed = sum(e["success"] for e in results)
    return ValidationOutcome(suite=name, success=not failures, failures=failures, warnings=warnings,
                             results=results, statistics={"evaluated": len(results), "successful": passed,
                                                          "unsuccessful": len(results) - passed})


def _with_row(df: pd.DataFrame) -> pd.DataFrame:
    frame = df.copy(deep=False)
    frame[ROW] = np.arange(len(frame))
    return frame


# --- the three validations -------------------------------------------------------------------------------------


def validate_manifest(df: pd.DataFrame) -> ValidationOutcome:
    """The batch manifest: ``collection_id`` (safe, unique) and ``source`` (non-empty) on every row."""
    return _run("manifest", _Table(_with_row(df), "collection_id", number_rows=True), MANIFEST_COLUMNS)


def validate_images(table: pd.DataFrame) -> ValidationOutcome:
    """The per-image table of one collection (:data:`IMAGE_COLUMNS`; pose columns NaN where there is no pose).

    Lines name the failing images by their ``image`` file name."""
    frame = _with_row(table)
    posed = np.zeros(len(frame), dtype=bool)
    if "has_pose" in frame.columns:
        posed = frame["has_pose"].map(lambda v: isinstance(v, bool | np.bool_) and bool(v)).to_numpy(dtype=bool)
    frame[NONFINITE] = _nonfinite(frame, POSE_COLUMNS, where=posed)
    majority = bool(posed.sum() * 2 >= len(frame))  # ties count as posed, so the unposed images are named
    return _run("images", _Table(frame, "image", number_rows=False), IMAGE_COLUMNS, {"pose_state": [majority]})


def validate_output(summary: pd.DataFrame) -> ValidationOutcome:
    """One row per reconstructed collection (:data:`OUTPUT_COLUMNS`); lines name the failing collection ids."""
    frame = _with_row(summary)
    frame[NONFINITE] = _nonfinite(frame, OUTPUT_NUMBERS)
    if {"camera_to_volume_distance", "volume_extent"} <= set(frame.columns):
        with np.errstate(invalid="ignore"):
            frame[NEAR] = (_numbers(frame, "camera_to_volume_distance")
                           <= CAMERA_DISTANCE_FACTOR * _numbers(frame, "volume_extent"))  # NaN -> False
    else:  # the column check reports the missing inputs; all-null skips this one
        frame[NEAR] = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    return _run("output", _Table(frame, "collection_id", number_rows=False), OUTPUT_COLUMNS)


def manifest_row_problems(df: pd.DataFrame) -> dict[int, str]:
    """Index label -> why that manifest row cannot be processed; rows not listed are fine.

    Plain pandas, so the caller can fail exactly these rows. Each repeat of a collection id after its first
    row is a problem ("collection_id 'x' repeats row N"). Row numbers count data rows from 1."""
    problems: dict[Any, list[str]] = {}
    labels = list(df.index)
    for column in MANIFEST_COLUMNS:
        if column not in df.columns:
            for label in labels:
                problems.setdefault(label, []).append(f"no {column} column")
    first: dict[str, int] = {}
    ids = df["collection_id"] if "collection_id" in df.columns else [None] * len(df)
    sources = df["source"] if "source" in df.columns else [""] * len(df)
    for pos, (label, cid, source) in enumerate(zip(labels, ids, sources)):
        reasons = problems.setdefault(label, [])
        if "collection_id" in df.columns:
            if _is_null(cid):
                reasons.append("collection_id is null")
            elif not isinstance(cid, str):
                reasons.append(f"collection_id {cid!r} is not a string (read the manifest as text)")
            else:
                if not _SAFE_ID.match(cid):
                    reasons.append(f"collection_id {cid!r} is not a safe id ({SAFE_ID_RULE})")
                if cid in first:
                    reasons.append(f"collection_id {cid!r} repeats row {first[cid] + 1}")
                else:
                    first[cid] = pos
        if "source" in df.columns:
            if _is_null(source):
                reasons.append("source is null")
            elif not isinstance(source, str):
                reasons.append(f"source {source!r} is not a string")
            elif not source.strip():
                reasons.append("source is empty")
    return {label: "; ".join(reasons) for label, reasons in problems.items() if reasons}


__all__ = [
    "ValidationOutcome", "validate_manifest", "validate_images", "validate_output", "manifest_row_problems",
    "manifest_suite", "images_suite", "output_suite", "SAFE_ID_PATTERN", "IMAGE_FORMATS", "IMAGE_COLUMNS",
    "OUTPUT_COLUMNS", "MANIFEST_COLUMNS",
]
