"""The rules a camera pose must follow, in one place for every layer.

Like ``errors.py`` this module depends on nothing of ours (numpy only), so storage (reading pose
files), validation (the ``images`` suite), and the model's pose checks all apply the same numbers.

Two kinds of rule: a proper rotation (:func:`rotation_problem`), and the physical limits of a
city-scale capture in metres (positions, baseline, float64 precision, focal lengths, scene depth,
voxel size; each constant says why its number), with :func:`metres_per_unit` converting a pose
file's ``units``. The ``*_problem`` functions return the reason a value breaks a rule, or None; the
caller names the file and the frame.
"""

from __future__ import annotations

import numpy as np

# max |R R^T - I| accepted for a rotation: pose files round to about 6 digits; more than this is scale
# or shear in the matrix
ORTHONORMAL_TOL = 1e-3


def orthonormal_error(R: np.ndarray) -> float:
    """``max |R R^T - I|`` of a 3x3 matrix (NaN when it holds non-finite values)."""
    R = np.asarray(R, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return float(np.abs(R @ R.T - np.eye(3)).max())


def rotation_det(R: np.ndarray) -> float:
    """The determinant of a 3x3 matrix, NaN when it holds non-finite values."""
    R = np.asarray(R, dtype=np.float64)
    return float(np.linalg.det(R)) if np.isfinite(R).all() else float("nan")


def rotation_problem(R: np.ndarray) -> str | None:
    """Why ``R`` is not a proper rotation (non-finite, not orthonormal, a reflection), or None."""
    R = np.asarray(R, dtype=np.float64)
    if not np.isfinite(R).all():
        return "non-finite values (NaN or inf) in the rotation"
    err = orthonormal_error(R)
    if err > ORTHONORMAL_TOL:
        return f"rotation is not orthonormal (max |R R^T - I| = {err:.3g}); scale or shear in the pose matrix?"
    det = rotation_det(R)
    if det < 0:
        return (f"rotation has det {det:.3f} (a reflection): one camera axis is flipped, a mixed-up axis "
                "convention (e.g. left- vs right-handed)")
    return None


# --- physical limits --------------------------------------------------------------------------------
# Limits of a city-scale capture, in metres; a pose file's lengths are converted from its ``units``
# first (:func:`metres_per_unit`). Anything beyond them is a broken pose file (wrong units, a typo, an
# uninitialised value), never a real capture.

# camera position from the world origin: Earth-centred (ECEF) coordinates stay below 6.4e6 m plus
# altitude, projected CRSs below ~2e7 m (UTM false northing 1e7 m, Web Mercator 2e7 m); 1e8 m keeps all
# of them valid with room to spare.
MAX_POSITION_M = 1e8
# camera baseline (diagonal of the cameras' bounding box): 1 mm is the least parallax from which geometry
# can be triangulated (a tripod panorama has none); 100 km is more than any city, larger means a misplaced
# camera or wrong units.
MIN_BASELINE_M = 1e-3
MAX_BASELINE_M = 1e5
# float64 precision: the rounding step of a coordinate at the cameras' distance from the origin (|C| *
# 2**-52) must stay below this fraction of the baseline. UTM coordinates (1e7 m) satisfy it for any
# baseline above 2.2 mm. (float32 needs no rule of its own: the pipeline subtracts a whole-metre origin
# near the cameras in float64 first, and the grid's voxel count bounds voxel / coordinate from below.)
PRECISION_FRACTION = 1e-6
# focal length over the image side (width for fx, height for fy): 0.1 is a 157 deg field of view, wider
# than any pinhole lens (beyond it the image is a fisheye, not a pinhole); 1000 is 0.057 deg, narrower
# than a 5000 mm lens on a full-frame sensor (focal/side ~ 140).
MIN_FOCAL_FRACTION = 0.1
MAX_FOCAL_FRACTION = 1e3
# fx / fy: pixels are square for photogrammetry cameras and anamorphic lenses squeeze at most 2x; a ratio
# above 3 is a typo or a swapped value.
MAX_FOCAL_RATIO = 3.0
# after placement (given poses fix the metric scale of the predicted depth): the median scene depth, from
# a macro subject (1 mm) to the horizon seen from a tall building or an aircraft (100 km), and the voxel
# size of the planned volume, 1 um to 10 km (the grid's voxel count bounds it too).
MIN_SCENE_DEPTH_M = 1e-3
MAX_SCENE_DEPTH_M = 1e5
MIN_VOXEL_M = 1e-6
MAX_VOXEL_M = 1e4
# predicted poses (no given ones): camera extent over the median scene depth below this (under ~3 deg of
# parallax across the whole capture) is a capture without baseline; it is flagged in the report, not
# refused (the network's single-view depth still gives a surface, but nothing is triangulated). The
# bundled model's cameras jitter by ~2 % of the depth on noisy copies of one photo, and a 4-frame street
# walk gives ~15 %: 5 % is the least baseline the prediction tells from none.
MIN_BASELINE_TO_DEPTH = 0.05

# metres in one unit of the ``units`` a pose file may state (lower case, spaces and "_" as "-")
UNITS_IN_METRES = {
    "m": 1.0, "metre": 1.0, "metres": 1.0, "meter": 1.0, "meters": 1.0,
    "km": 1e3, "kilometre": 1e3, "kilometres": 1e3, "kilometer": 1e3, "kilometers": 1e3,
    "cm": 1e-2, "centimetre": 1e-2, "centimetres": 1e-2, "centimeter": 1e-2, "centimeters": 1e-2,
    "mm": 1e-3, "millimetre": 1e-3, "millimetres": 1e-3, "millimeter": 1e-3, "millimeters": 1e-3,
    "ft": 0.3048, "foot": 0.3048, "feet": 0.3048,
    "us-ft": 1200 / 3937, "ftus": 1200 / 3937, "us-survey-foot": 1200 / 3937, "us-survey-feet": 1200 / 3937,
}


def metres_per_unit(units: str | None) -> float | None:
    """Metres in one of ``units``: 1.0 for ``None`` (no units stated; the output calls them metres), None
    for a name not in :data:`UNITS_IN_METRES`."""
    if units is None:
        return 1.0
    return UNITS_IN_METRES.get(str(units).strip().lower().replace(" ", "-").replace("_", "-"))


def length_text(metres: float, units: str | None, per_unit: float) -> str:
    """``"1e+30 m"``, or ``"3.28e+30 ft (1e+30 m)"`` for a length stated in another unit."""
    if per_unit == 1.0:
        return f"{metres:.3g} m"
    return f"{metres / per_unit:.3g} {units} ({metres:.3g} m)"


def intrinsics_problem(fx: float, fy: float, width: int, height: int) -> str | None:
    """Why focal lengths ``fx, fy`` (pixels, positive) are not those of a pinhole camera on a ``width x
    height`` image, or None."""
    for name, f, side, axis in (("fx", fx, width, "width"), ("fy", fy, height, "height")):
        fraction = f / side
        if not MIN_FOCAL_FRACTION <= fraction <= MAX_FOCAL_FRACTION:
            return (f"focal length {name}={f:.4g} px is {fraction:.3g} times the image {axis} ({side} px), outside "
                    f"[{MIN_FOCAL_FRACTION:g}, {MAX_FOCAL_FRACTION:g}] (a field of view from 157 to 0.057 deg)")
    ratio = max(fx / fy, fy / fx)
    if ratio > MAX_FOCAL_RATIO:
        return (f"focal lengths fx={fx:.4g} and fy={fy:.4g} px differ by a factor {ratio:.3g}, beyond "
                f"{MAX_FOCAL_RATIO:g} (non-square pixels that no lens makes: a typo or swapped values?)")
    return None


def position_problem(distance: float, units: str | None, per_unit: float) -> str | None:
    """Why a camera ``distance`` (pose-file units) from the world origin is not physical, or None."""
    metres = distance * per_unit
    if not metres <= MAX_POSITION_M:
        return (f"camera position {length_text(metres, units, per_unit)} from the origin is beyond the limit of "
                f"{MAX_POSITION_M:.0e} m")
    return None


def baseline_problem(extent: float, units: str | None, per_unit: float) -> str | None:
    """Why a camera baseline ``extent`` (pose-file units) is not physical, or None."""
    metres = extent * per_unit
    if metres < MIN_BASELINE_M:
        return (f"camera baseline {length_text(metres, units, per_unit)} is below the limit of {MIN_BASELINE_M:g} m: "
                "no parallax to triangulate geometry from")
    if not metres <= MAX_BASELINE_M:
        return (f"camera baseline {length_text(metres, units, per_unit)} is beyond the limit of "
                f"{MAX_BASELINE_M:.0e} m: a misplaced camera or wrong units")
    return None


def precision_problem(farthest: float, extent: float, units: str | None, per_unit: float) -> str | None:
    """Why cameras up to ``farthest`` from the origin and ``extent`` apart (pose-file units) lose float64
    precision, or None."""
    step = farthest * 2.0**-52
    if step > PRECISION_FRACTION * extent:
        return (f"cameras up to {length_text(farthest * per_unit, units, per_unit)} from the origin but only "
                f"{length_text(extent * per_unit, units, per_unit)} apart: float64 resolves "
                f"{length_text(step * per_unit, units, per_unit)} there, more than {PRECISION_FRACTION:g} of the "
                "baseline; give the poses in a local frame (subtract an origin near the cameras)")
    return None


__all__ = ["ORTHONORMAL_TOL", "orthonormal_error", "rotation_det", "rotation_problem", "MAX_POSITION_M",
           "MIN_BASELINE_M", "MAX_BASELINE_M", "PRECISION_FRACTION", "MIN_FOCAL_FRACTION", "MAX_FOCAL_FRACTION",
           "MAX_FOCAL_RATIO", "MIN_SCENE_DEPTH_M", "MAX_SCENE_DEPTH_M", "MIN_VOXEL_M", "MAX_VOXEL_M",
           "MIN_BASELINE_TO_DEPTH", "UNITS_IN_METRES", "metres_per_unit", "length_text", "intrinsics_problem",
           "position_problem", "baseline_problem", "precision_problem"]
