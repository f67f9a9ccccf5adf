"""The rules a camera pose must follow, in one place for every layer.

Like ``errors.py`` this module depends on nothing of ours (numpy only), so storage (reading pose
files), validation (the ``images`` suite), and the model's pose checks all apply the same numbers.
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


__all__ = ["ORTHONORMAL_TOL", "orthonormal_error", "rotation_det", "rotation_problem"]
