"""Camera paths through a synthetic Scene: street walks, orbits, aerial passes and handheld walks.

Cameras are OpenCV (x right, y down, z forward) ``cam_from_world`` ``[3, 4]`` with world +z up, so
a camera looking horizontally has its y axis along world -z (see ``look_at``). Intrinsics have
square pixels, a horizontal field of view of 50-80 degrees drawn once per path, and the principal
point at the image centre. Every frame is checked: the camera centre keeps 0.3 m away from every
solid, at most 60% of a tiny render is sky and at most half of it nearer than 1 m; a path with a
failing frame is redrawn (bounded). All draws come from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import math

import numpy as np

from errors import InputError

from .render import render_depth
from .scene import Scene, solid_at

PATH_KINDS = ("street", "orbit", "aerial", "handheld")
_TRIES = 200
_CLEARANCE = 0.3   # m between a camera centre and any surface
_MAX_SKY = 0.6
_PROBE_WIDTH = 24  # pixels across the tiny render that tests a frame


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """``cam_from_world`` ``[3, 4]`` of a camera at ``eye`` looking at ``target``, image "up" towards ``up``."""
    eye, target, up = (np.asarray(a, np.float64) for a in (eye, target, up))
    z = target - eye
    x = np.cross(z, up)
    if np.linalg.norm(z) == 0 or np.linalg.norm(x) < 1e-9 * np.linalg.norm(z) * np.linalg.norm(up):
        raise InputError(f"look_at: viewing direction {z.tolist()} is zero or parallel to up {up.tolist()}")
    z /= np.linalg.norm(z)
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])  # rows: camera axes in world coordinates; y = z x x points "down"
    return np.concatenate([R, (-R @ eye)[:, None]], axis=1)


def intrinsics_for(fov_x_deg: float, height: int, width: int) -> np.ndarray:
    """``[3, 3]`` pinhole intrinsics: horizontal field of view ``fov_x_deg``, square pixels, centred."""
    f = (width / 2) / np.tan(np.radians(fov_x_deg) / 2)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def _forward(yaw, pitch) -> np.ndarray:
    """Unit viewing directions ``[..., 3]`` from yaw (about +z, from +x) and pitch (up positive), radians."""
    yaw, pitch = np.broadcast_arrays(np.asarray(yaw, float), np.asarray(pitch, float))
    return np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], -1)


def _camera_rotation(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Small rotation about the camera's own z (roll), x (pitch) and y (yaw) axes, radians."""
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return rz @ rx @ ry


def _street(scene: Scene, rng, n: int, jitter: bool = False) -> list[np.ndarray]:
    """Eye-level walk along the street (x axis), 0.5-2 m per frame, yaw swaying around the walking direction."""
    usable = scene.street_length - 10.0
    steps = rng.uniform(0.5, min(2.0, usable / max(n - 1, 1)), size=n - 1)
    s = np.concatenate([[0.0], np.cumsum(steps)])
    direction = rng.choice([-1.0, 1.0])
    start = rng.uniform(-usable / 2, usable / 2 - s[-1])
    x = direction * (start + s)
    y = rng.uniform(-1, 1) * (scene.street_half + 0.9 * scene.sidewalk)
    z = rng.uniform(1.5, 1.8)
    yaw = (0.0 if direction > 0 else np.pi) + np.radians(rng.uniform(5, 25)) * np.sin(
        rng.uniform(0, 2 * np.pi) + rng.uniform(0.05, 0.2) * s)
    pitch = np.radians(rng.uniform(-8.0, 2.0))
    cams = []
    for k in range(n):
        eye = np.array([x[k], y, z])
        cam = look_at(eye, eye + _forward(yaw[k], pitch))
        if jitter:  # handheld: position +-0.2 m, rotation +-5 degrees about each camera axis
            eye = eye + rng.uniform(-0.2, 0.2, 3)
            R = _camera_rotation(*np.radians(rng.uniform(-5, 5, 3))) @ cam[:, :3]
            cam = np.concatenate([R, (-R @ eye)[:, None]], axis=1)
        cams.append(cam)
    return cams


def _orbit(scene: Scene, rng, n: int, max_step_deg: float | None = None) -> list[np.ndarray]:
    """Circle arc (60-270 degrees, radius 10-40 m, height 2-20 m) around a building or the plaza centre;
    with ``max_step_deg`` the arc is cut to at most that many degrees between consecutive frames."""
    centre, r_min, r_max = np.zeros(2), 10.0, max(10.0, min(40.0, scene.plaza_radius - 2.0))
    target_z = rng.uniform(2.0, 8.0)
    buildings = np.flatnonzero(scene.box_building)
    if len(buildings) and rng.random() < 0.5:
        i = rng.choice(buildings)
        reach = max(10.0, 1.3 * float(np.hypot(*scene.box_half[i, :2])) + 3.0)  # far enough to see most of it
        if reach <= 40.0:
            centre, r_min, r_max, target_z = scene.box_center[i, :2], reach, 40.0, min(scene.box_half[i, 2], 15.0)
    radius, height = rng.uniform(r_min, r_max), rng.uniform(2.0, 20.0)
    start, turn, arc = rng.uniform(0, 2 * np.pi), rng.choice([-1.0, 1.0]), rng.uniform(60, 270)
    if max_step_deg is not None:
        arc = min(arc, max_step_deg * max(n - 1, 1))
    angles = start + turn * np.radians(arc) * np.linspace(0, 1, n)
    target = np.array([*centre, target_z])
    return [look_at([*(centre + radius * np.array([np.cos(a), np.sin(a)])), height], target) for a in angles]


def _aerial(scene: Scene, rng, n: int) -> list[np.ndarray]:
    """Straight pass 40-120 m up, looking forward and 30-70 degrees down, centred on the content."""
    altitude, pitch, heading = rng.uniform(40, 120), np.radians(rng.uniform(30, 70)), rng.uniform(0, 2 * np.pi)
    fwd = _forward(heading, -pitch)
    flat = np.array([np.cos(heading), np.sin(heading), 0.0])
    look_point = np.append(scene.extent.mean(0)[:2] + rng.uniform(-20, 20, 2), 0.0)
    middle = look_point - altitude / np.tan(pitch) * flat + [0, 0, altitude]  # optical axis hits look_point
    offsets = (np.arange(n) - (n - 1) / 2) * rng.uniform(40, 120) / max(n - 1, 1)
    return [look_at(middle + o * flat, middle + o * flat + fwd) for o in offsets]


def _frame_ok(scene: Scene, cam: np.ndarray, K: np.ndarray, height: int, width: int) -> bool:
    w = _PROBE_WIDTH
    h = max(2, round(w * height / width))
    probe = K * np.array([[w / width], [h / height], [1.0]])  # same field of view at w x h pixels
    depth = render_depth(scene, cam, probe, h, w)
    return (depth == 0).mean() <= _MAX_SKY and ((depth > 0) & (depth < 1.0)).mean() <= 0.5


def make_path(scene: Scene, kind: str, num_frames: int, seed: int, height: int, width: int,
              max_orbit_step_deg: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``num_frames`` (cam_from_world ``[3, 4]``, intrinsics ``[3, 3]``) float64 pairs of a ``kind`` path.

    An orbit's arc (60-270 degrees) does not depend on the number of frames, so a few frames of one are
    far apart; ``max_orbit_step_deg`` caps the turn between consecutive frames (training uses it, so
    short samples overlap like consecutive frames of a long one). Other kinds ignore it.
    """
    if max_orbit_step_deg is not None and not (math.isfinite(max_orbit_step_deg) and max_orbit_step_deg > 0):
        raise InputError(f"max_orbit_step_deg must be > 0 degrees, got {max_orbit_step_deg}")
    samplers = {"street": _street, "orbit": lambda sc, rng, n: _orbit(sc, rng, n, max_orbit_step_deg),
                "aerial": _aerial,
                "handheld": lambda sc, rng, n: _street(sc, rng, n, jitter=True)}
    if kind not in samplers:
        raise InputError(f"unknown path kind {kind!r}; expected one of {PATH_KINDS}")
    if int(num_frames) < 1:
        raise InputError(f"num_frames must be >= 1, got {num_frames}")
    if kind in ("street", "handheld") and (num_frames - 1) * 0.5 > scene.street_length - 10.0:
        raise InputError(f"num_frames={num_frames} does not fit a {scene.street_length:.0f} m street at 0.5 m/frame")
    if int(height) < 1 or int(width) < 1:
        raise InputError(f"image size must be positive, got {height}x{width}")
    rng = np.random.default_rng(seed)
    K = intrinsics_for(rng.uniform(50.0, 80.0), height, width)
    for _ in range(_TRIES):
        cams = samplers[kind](scene, rng, int(num_frames))
        centres = np.stack([-c[:, :3].T @ c[:, 3] for c in cams])
        if solid_at(scene, centres, _CLEARANCE).any():
            continue
        if all(_frame_ok(scene, c, K, height, width) for c in cams):
            return [(c, K.copy()) for c in cams]
    raise InputError(f"no valid {kind!r} path of {num_frames} frames found for scene seed {scene.seed} "
                     f"and path seed {seed} after {_TRIES} tries")
