"""Exact ray casting of a synthetic Scene: analytic intersections, procedural textures, Lambert shading.

Camera convention (the product's): OpenCV axes (x right, y down, z forward), ``cam_from_world``
``[3, 4]`` or ``[4, 4]`` maps world points to camera points (``X_cam = R X_world + t``), intrinsics
``[3, 3]`` in pixels, and the ray of pixel (column u, row v) passes through its centre,
``K^-1 [u + 0.5, v + 0.5, 1]``. Ray directions are scaled so that their camera-frame z is 1: the
ray parameter of a hit *is* its z-depth, so depth is exact at every pixel centre (float64
intersections, stored as float32). No anti-aliasing, no shadows.

Two engines compute the same images: ``"compiled"`` (the default; ``render_cpu``, one compiled loop
over rays, ~3x faster) and ``"numpy"`` (the array formulation below, the reference the compiled
loop is tested against).
"""

from __future__ import annotations

import numpy as np

from errors import InputError

from .scene import Scene

_CHUNK = 16384       # rays per intersection batch: bounds memory to a few tens of MB
_TINY = 1e-300       # stands in for a zero direction component: slabs then lie at +-1e300, i.e. never/always
_AMBIENT = 0.45
_SKY, _GROUND, _BOX, _SPHERE, _CYL = -1, 0, 1, 2, 3


def camera_rays(cam_from_world, intrinsics, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera centre ``[3]`` and world directions ``[H*W, 3]`` (row-major pixels) with camera-frame z = 1."""
    T = np.asarray(cam_from_world, np.float64)
    K = np.asarray(intrinsics, np.float64)
    if T.shape not in ((3, 4), (4, 4)) or not np.isfinite(T).all() or (len(T) == 4 and np.any(T[3] != [0, 0, 0, 1])):
        raise InputError(f"cam_from_world must be finite [3, 4], or [4, 4] ending 0 0 0 1; got {T.tolist()}")
    if not np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-6) or np.linalg.det(T[:3, :3]) < 0:
        raise InputError(f"cam_from_world rotation is not a proper rotation: {T[:3, :3].tolist()}")
    if K.shape != (3, 3) or not np.allclose(K[2], [0, 0, 1]) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"intrinsics must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0, got {K.tolist()}")
    if int(height) < 1 or int(width) < 1:
        raise InputError(f"image size must be positive, got {height}x{width}")
    R, t = T[:3, :3], T[:3, 3]
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)
    d_cam = pix @ np.linalg.inv(K).T
    d_cam /= d_cam[:, 2:3]  # exactly 1 (inv(K) may leave rounding), so ray parameter == z-depth
    return -R.T @ t, d_cam @ R


def _safe(x: np.ndarray) -> np.ndarray:
    """``x`` with exact zeros replaced by a positive tiny number, so divisions give huge finite slabs."""
    return np.where(x == 0, _TINY, x)


def _roots(a: np.ndarray, b: np.ndarray, cc: np.ndarray):
    """Roots (lo, hi) of ``a t^2 + 2 b t + cc`` in the cancellation-free form, and whether they are real."""
    disc = b * b - a * cc
    q = -(b + np.copysign(np.sqrt(np.maximum(disc, 0)), b))
    with np.errstate(divide="ignore", invalid="ignore"):
        r0, r1 = q / a, cc / q
    return np.minimum(r0, r1), np.maximum(r0, r1), disc >= 0


def _boxes(scene: Scene, o, d, idx):
    """Slab test in each box's frame: entry t and face (0..5 = -x, +x, -y, +y, -z, +z in the box frame)."""
    c, s = np.cos(scene.box_yaw[idx]), np.sin(scene.box_yaw[idx])
    rel = o - scene.box_center[idx]
    o_l = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], 1)
    d_l = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)
    inv = 1.0 / _safe(d_l)
    half = scene.box_half[idx]
    ta, tb = (-half - o_l) * inv, (half - o_l) * inv
    t_min = np.minimum(ta, tb)
    near, far = t_min.max(1), np.maximum(ta, tb).min(1)
    axis = t_min.argmax(1)
    positive = d_l[np.arange(len(d)), axis] < 0  # entering against the direction: through the + face
    return np.where((near <= far) & (near > 0), near, np.inf), 2 * axis + positive


def _spheres(scene: Scene, o, d, idx):
    """Sphere interval cut by the half-space z >= zmin: entry t and face (1: the flat face)."""
    oc = o - scene.sphere_center[idx]
    lo, hi, real = _roots((d * d).sum(1), (d * oc).sum(1), (oc * oc).sum(1) - scene.sphere_radius[idx] ** 2)
    dz = _safe(d[:, 2])
    tz = (scene.sphere_zmin[idx] - o[2]) / dz
    up = dz > 0
    entry = np.maximum(lo, np.where(up, tz, -np.inf))
    exit_ = np.minimum(hi, np.where(up, np.inf, tz))
    return np.where(real & (entry <= exit_) & (entry > 0), entry, np.inf), up & (tz > lo)


def _cylinders(scene: Scene, o, d, idx):
    """Infinite vertical cylinder interval cut by the z slab: entry t and face (1: a cap)."""
    oxy = o[:2] - scene.cyl_xy[idx]
    a = (d[:, :2] ** 2).sum(1)
    cc = (oxy * oxy).sum(1) - scene.cyl_radius[idx] ** 2
    lo, hi, real = _roots(a, (d[:, :2] * oxy).sum(1), cc)
    vertical = a == 0  # a vertical ray is inside the side interval everywhere or nowhere
    lo = np.where(vertical, np.where(cc < 0, -np.inf, np.inf), lo)
    hi = np.where(vertical, np.where(cc < 0, np.inf, -np.inf), hi)
    dz = _safe(d[:, 2])
    z0, z1 = (scene.cyl_z[idx, 0] - o[2]) / dz, (scene.cyl_z[idx, 1] - o[2]) / dz
    zlo = np.minimum(z0, z1)
    entry, exit_ = np.maximum(lo, zlo), np.minimum(hi, np.maximum(z0, z1))
    return np.where((real | vertical) & (entry <= exit_) & (entry > 0), entry, np.inf), zlo > lo


def _bounding_spheres(scene: Scene):
    """Centre ``[P, 3]``, radius ``[P]``, kind ``[P]`` and index ``[P]`` of a sphere around every primitive."""
    cyl_mid = np.concatenate([scene.cyl_xy, scene.cyl_z.mean(1, keepdims=True)], 1)
    centre = np.concatenate([scene.box_center, scene.sphere_center, cyl_mid])
    radius = np.concatenate([np.linalg.norm(scene.box_half, axis=1), scene.sphere_radius,
                             np.hypot(scene.cyl_radius, (scene.cyl_z[:, 1] - scene.cyl_z[:, 0]) / 2)])
    counts = (len(scene.box_center), len(scene.sphere_center), len(scene.cyl_xy))
    kind = np.repeat([_BOX, _SPHERE, _CYL], counts).astype(np.int8)
    index = np.concatenate([np.arange(k) for k in counts])
    return centre, radius, kind, index


def _intersect(scene: Scene, o: np.ndarray, d: np.ndarray):
    """Nearest hit of rays ``o + t d`` (t > 0): t [N] (inf: none), kind [N], primitive index [N], face [N].

    ``face`` is the entering slab for boxes (see ``_boxes``), 1 for the flat face of a clipped
    sphere or a cylinder cap, else 0. Only (ray, primitive) pairs whose ray meets the primitive's
    bounding sphere are intersected exactly, which keeps the cost near one test per covered pixel.
    """
    n = len(d)
    dz = _safe(d[:, 2])
    t_ground = -o[2] / dz  # the finite ground square on z = 0, seen from above
    p = o[:2] + t_ground[:, None] * d[:, :2]
    t_ground = np.where((t_ground > 0) & (np.abs(p) <= scene.ground_half).all(1), t_ground, np.inf)
    best_t, kind = t_ground, np.where(np.isfinite(t_ground), _GROUND, _SKY).astype(np.int8)
    index, face = np.zeros(n, np.int64), np.zeros(n, np.int8)

    centre, radius, prim_kind, prim_index = _bounding_spheres(scene)
    oc = o - centre
    b = d @ oc.T
    cc = (oc * oc).sum(1) - radius ** 2
    ray, prim = np.nonzero((b * b >= (d * d).sum(1)[:, None] * cc) & ((b < 0) | (cc < 0)))
    ts, faces = np.full(len(ray), np.inf), np.zeros(len(ray), np.int8)
    for which, hit in ((_BOX, _boxes), (_SPHERE, _spheres), (_CYL, _cylinders)):
        m = prim_kind[prim] == which
        ts[m], faces[m] = hit(scene, o, d[ray[m]], prim_index[prim[m]])
    # Per ray, the nearest pair: sort by (ray, t) and keep each ray's first.
    order = np.lexsort((ts, ray))
    first = order[np.r_[True, ray[order][1:] != ray[order][:-1]]] if len(order) else order
    better = ts[first] < best_t[ray[first]]
    pick = first[better]
    rays = ray[pick]
    best_t[rays], face[rays] = ts[pick], faces[pick]
    kind[rays], index[rays] = prim_kind[prim[pick]], prim_index[prim[pick]]
    return best_t, kind, index, face


ENGINES = ("compiled", "numpy")


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise InputError(f"unknown render engine {engine!r}; expected one of {ENGINES}")


def _compiled(scene: Scene, o: np.ndarray, d: np.ndarray, shade: bool) -> tuple[np.ndarray, np.ndarray]:
    """t ``[N]`` and (with ``shade``) colours ``[N, 3]`` from the compiled loop (``render_cpu``)."""
    from .render_cpu import render_rays  # Numba loads on first use

    centre, radius, kind, index = _bounding_spheres(scene)
    t = np.empty(len(d))
    rgb = np.zeros((len(d) if shade else 0, 3))
    f = np.ascontiguousarray
    render_rays(f(o, dtype=np.float64), f(d, dtype=np.float64), shade, int(_keys(scene, 0)),
                float(scene.ground_half), float(scene.street_half), float(scene.sidewalk), float(scene.plaza_radius),
                f(scene.ground_colors, dtype=np.float64), f(scene.box_center, dtype=np.float64),
                f(scene.box_half, dtype=np.float64), f(scene.box_yaw, dtype=np.float64),
                f(scene.box_color, dtype=np.float64), f(scene.box_roof, dtype=np.float64),
                f(scene.box_windows, dtype=np.float64), f(scene.box_glass, dtype=np.float64),
                f(scene.box_sign, dtype=np.float64), f(scene.box_sign_color, dtype=np.float64),
                f(scene.box_building, dtype=np.bool_), f(scene.sphere_center, dtype=np.float64),
                f(scene.sphere_radius, dtype=np.float64), f(scene.sphere_zmin, dtype=np.float64),
                f(scene.sphere_color, dtype=np.float64), f(scene.sphere_dome, dtype=np.bool_),
                f(scene.cyl_xy, dtype=np.float64), f(scene.cyl_radius, dtype=np.float64),
                f(scene.cyl_z, dtype=np.float64), f(scene.cyl_color, dtype=np.float64),
                f(scene.sky_colors, dtype=np.float64), f(scene.sun, dtype=np.float64), f(centre, dtype=np.float64),
                f(radius, dtype=np.float64), f(kind, dtype=np.int64), f(index, dtype=np.int64), t, rgb)
    return t, rgb


def cast_rays(scene: Scene, origin, directions, engine: str = "compiled") -> np.ndarray:
    """Ray parameter t ``[N]`` of the nearest hit of ``origin [3] + t directions [N, 3]`` (t > 0); inf: none."""
    _check_engine(engine)
    o = np.asarray(origin, np.float64).reshape(3)
    d = np.asarray(directions, np.float64).reshape(-1, 3)
    if engine == "compiled":
        return _compiled(scene, o, d, shade=False)[0]
    return np.concatenate([_intersect(scene, o, d[i:i + _CHUNK])[0] for i in range(0, len(d), _CHUNK)] or
                          [np.zeros(0)])


def render_depth(scene: Scene, cam_from_world, intrinsics, height: int, width: int, engine: str = "compiled",
                 ) -> np.ndarray:
    """z-depth ``[H, W]`` float64 only (0 = sky); what path sampling uses to test frames cheaply."""
    o, d = camera_rays(cam_from_world, intrinsics, height, width)
    t = cast_rays(scene, o, d, engine)
    return np.where(np.isfinite(t), t, 0.0).reshape(height, width)


# ----------------------------------------------------------------------------------------------
# Procedural textures: functions of the world hit point, so every view and size agrees.

_M1, _M2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)


def _mix(h: np.ndarray, key) -> np.ndarray:
    """One murmur-style mixing step of a uint64 hash with an integer key (arrays broadcast)."""
    h = (h ^ np.asarray(key, np.int64).view(np.uint64)) * _M1
    return h ^ (h >> np.uint64(33))


def _unit(h: np.ndarray) -> np.ndarray:
    """Finalise a hash into uniform floats in [0, 1)."""
    h = h * _M2
    h ^= h >> np.uint64(29)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _hash(*keys) -> np.ndarray:
    """Integer arrays (broadcast together) -> uniform floats in [0, 1)."""
    h = np.zeros(np.broadcast_shapes(*(np.shape(k) for k in keys)), np.uint64)
    for k in keys:
        h = _mix(h, k)
    return _unit(h)


def _noise(p: np.ndarray, freq: float, key: np.ndarray) -> np.ndarray:
    """Smooth 3-D value noise in [0, 1] at points ``[N, 3]``; ``key [N]`` selects an independent field."""
    q = p * freq
    i = np.floor(q).astype(np.int64)
    f = q - i
    s = f * f * (3 - 2 * f)
    w = np.stack([1 - s, s])  # [corner 0/1, N, axis]
    hk = _mix(np.zeros(len(p), np.uint64), key)
    out = np.zeros(len(p))
    for cx in (0, 1):  # the hash chain (key, x, y, z) is shared by corners with the same x (and y)
        hx = _mix(hk, i[:, 0] + cx)
        for cy in (0, 1):
            hxy, wxy = _mix(hx, i[:, 1] + cy), w[cx, :, 0] * w[cy, :, 1]
            for cz in (0, 1):
                out += wxy * w[cz, :, 2] * _unit(_mix(hxy, i[:, 2] + cz))
    return out


def _fbm(p: np.ndarray, key: np.ndarray, base: float = 0.7) -> np.ndarray:
    """Three octaves of value noise (periods of ~1.4 m down to ~0.15 m), in [0, 1]."""
    return 0.5 * _noise(p, base, key) + 0.3 * _noise(p, base * 3.1, key + 7) + 0.2 * _noise(p, base * 9.7, key + 13)


def _keys(scene: Scene, offset) -> np.ndarray:
    """Noise-field keys: the scene seed in the high bits, so that scenes do not share texture patterns."""
    return (np.int64(scene.seed % 2 ** 31) << np.int64(32)) + np.asarray(offset, np.int64)


def _ground(scene: Scene, p: np.ndarray) -> np.ndarray:
    """Ground colour: asphalt with markings and crossings, tiled sidewalks, plaza paving, verge."""
    x, y = p[:, 0], p[:, 1]
    ay = np.abs(y)
    col = scene.ground_colors
    key = _keys(scene, np.zeros(len(p), np.int64))
    grain = _fbm(p, key, 1.3)
    road = ay < scene.street_half
    walk = ~road & (ay < scene.street_half + scene.sidewalk)
    plaza = ~road & ~walk & (np.hypot(x, y) < scene.plaza_radius)
    out = np.where(road[:, None], col[0] * (0.7 + 0.6 * grain[:, None]), col[4] * (0.5 + 1.0 * grain[:, None]))
    centre_dash = (ay < 0.1) & (np.mod(x, 6.0) < 3.0)
    edge_line = np.abs(ay - (scene.street_half - 0.3)) < 0.08
    crosswalk = (np.abs(np.abs(x) - scene.plaza_radius) < 2.0) & (np.mod(y, 1.0) < 0.5) & road
    out[road & (centre_dash | edge_line | crosswalk)] = col[1]
    tile = 0.8 + 0.4 * _hash(key + 1, np.floor(x / 1.2).astype(np.int64), np.floor(y / 1.2).astype(np.int64))
    joint = (np.mod(x, 1.2) < 0.06) | (np.mod(y, 1.2) < 0.06)
    out[walk] = (col[2] * (tile * (1 - 0.35 * joint) * (0.85 + 0.3 * grain))[:, None])[walk]
    paving = 0.7 + 0.6 * _hash(key + 2, np.floor(x / 1.5).astype(np.int64), np.floor(y / 1.5).astype(np.int64))
    out[plaza] = (col[3] * (paving * (0.85 + 0.3 * grain))[:, None])[plaza]
    return out


def _box(scene: Scene, idx: np.ndarray, face: np.ndarray, p: np.ndarray):
    """Facade (windows, signage), roof or car / kiosk body colours, and world normals of box hits."""
    c, s = np.cos(scene.box_yaw[idx]), np.sin(scene.box_yaw[idx])
    rel = p - scene.box_center[idx]
    lx, ly = c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]
    half = scene.box_half[idx]
    axis, sign = face // 2, np.where(face % 2 == 1, 1.0, -1.0)
    n_local = np.zeros((len(p), 3))
    n_local[np.arange(len(p)), axis] = sign
    normal = np.stack([c * n_local[:, 0] - s * n_local[:, 1], s * n_local[:, 0] + c * n_local[:, 1], n_local[:, 2]], 1)
    key = _keys(scene, 1000 + idx * 8 + face)
    grain = _fbm(p, key)[:, None]
    out = scene.box_color[idx] * (0.7 + 0.6 * grain)
    side = axis < 2
    # Facade coordinates: u along the face from its edge, v = height above the ground.
    u = np.where(axis == 0, ly + half[:, 1], lx + half[:, 0])
    v = p[:, 2]
    su, sv, fu, fv = (scene.box_windows[idx, k] for k in range(4))
    su, sv = np.where(su > 0, su, 1.0), np.where(sv > 0, sv, 1.0)
    col_i, row_i = np.floor(u / su), np.floor(v / sv)
    in_window = (side & (np.abs(u / su - col_i - 0.5) < fu / 2) & (np.abs(v / sv - row_i - 0.5) < fv / 2)
                 & (row_i >= 1) & (v < 2 * half[:, 2] - 0.5 * sv))
    pane = _hash(key, col_i.astype(np.int64), row_i.astype(np.int64))[:, None]
    glass = np.where(pane > 0.85, (1.0, 0.85, 0.55), scene.box_glass[idx] * (0.5 + 1.5 * pane))
    out = np.where(in_window[:, None], glass, out)
    z0, z1 = scene.box_sign[idx, 0], scene.box_sign[idx, 1]
    in_sign = side & (v >= z0) & (v < z1)
    letters = _hash(key + 3, np.floor(u / 0.4).astype(np.int64), np.floor((v - z0) / 0.25).astype(np.int64))
    sign = np.where((letters > 0.6)[:, None], (0.97, 0.97, 0.95), scene.box_sign_color[idx])
    out = np.where(in_sign[:, None], sign, out)
    panel = (np.mod(lx, 3.0) < 0.12) | (np.mod(ly, 3.0) < 0.12)
    roof = scene.box_roof[idx] * ((0.6 + 0.8 * grain) * np.where(panel, 0.7, 1.0)[:, None])
    building = scene.box_building[idx]
    out = np.where((building & (axis == 2))[:, None], roof, out)
    # Cars and kiosks: a dark glazing band over the upper part of the body.
    band = ~building & (v > 1.25 * half[:, 2]) & (v < 1.8 * half[:, 2]) & side
    out = np.where(band[:, None], out * 0.25, out)
    return out, normal


def _sphere(scene: Scene, idx: np.ndarray, face: np.ndarray, p: np.ndarray):
    """Foliage (canopies) or ribbed domes, and normals; a dome's flat face can only be seen from below."""
    rel = p - scene.sphere_center[idx]
    normal = np.where(face[:, None] == 1, (0.0, 0.0, -1.0), rel / scene.sphere_radius[idx, None])
    key = _keys(scene, 5000 + idx)
    dome = scene.sphere_dome[idx]
    foliage = scene.sphere_color[idx] * (0.4 + 1.2 * _fbm(p, key, 1.8))[:, None]
    ribs = np.mod(np.arctan2(rel[:, 1], rel[:, 0]) * 16 / (2 * np.pi), 1.0) < 0.12
    rings = np.mod(rel[:, 2], 1.0) < 0.08
    shade = (0.75 + 0.4 * _fbm(p, key)) * np.where(ribs, 0.6, 1.0) * np.where(rings, 0.8, 1.0)
    return np.where(dome[:, None], scene.sphere_color[idx] * shade[:, None], foliage), normal


def _cylinder(scene: Scene, idx: np.ndarray, face: np.ndarray, p: np.ndarray):
    """Banded bark / metal, and normals; cylinders stand on the ground, so a seen cap is the top one."""
    radial = (p[:, :2] - scene.cyl_xy[idx]) / scene.cyl_radius[idx, None]
    normal = np.where(face[:, None] == 1, (0.0, 0.0, 1.0), np.concatenate([radial, np.zeros((len(p), 1))], 1))
    bands = np.where(np.mod(p[:, 2], 0.8) < 0.1, 0.7, 1.0)
    return scene.cyl_color[idx] * ((0.6 + 0.8 * _fbm(p, _keys(scene, 9000 + idx), 2.0)) * bands)[:, None], normal


def _shade(scene: Scene, o: np.ndarray, d: np.ndarray, t, kind, index, face) -> np.ndarray:
    """Colour ``[N, 3]``: texture x (ambient + Lambert towards the sun); sky gradient where nothing is hit."""
    elevation = np.clip(d[:, 2] / np.linalg.norm(d, axis=1), 0, 1) ** 0.6
    out = scene.sky_colors[0] + elevation[:, None] * (scene.sky_colors[1] - scene.sky_colors[0])
    for which, texture in ((_GROUND, None), (_BOX, _box), (_SPHERE, _sphere), (_CYL, _cylinder)):
        m = kind == which
        if not m.any():
            continue
        p = o + t[m, None] * d[m]
        if texture is None:
            colour, normal = _ground(scene, p), np.array([[0.0, 0.0, 1.0]])
        else:
            colour, normal = texture(scene, index[m], face[m], p)
        light = _AMBIENT + (1 - _AMBIENT) * np.maximum(normal @ scene.sun, 0)
        out[m] = colour * np.broadcast_to(light, (int(m.sum()),))[:, None]
    return np.clip(out, 0, 1)


def render(scene: Scene, cam_from_world, intrinsics, height: int, width: int, engine: str = "compiled",
           ) -> tuple[np.ndarray, np.ndarray]:
    """Render (rgb ``[H, W, 3]`` float32 in [0, 1], z-depth ``[H, W]`` float32, 0 where the ray sees sky).

    ``engine``: ``"compiled"`` (default; ``render_cpu``, one loop over rays) or ``"numpy"`` (the
    array formulation in this module, the reference the compiled loop is tested against)."""
    _check_engine(engine)
    o, d = camera_rays(cam_from_world, intrinsics, height, width)
    if engine == "compiled":
        t, rgb = _compiled(scene, o, d, shade=True)
        depth = np.where(np.isfinite(t), t, 0.0)
    else:
        rgb = np.empty((len(d), 3))
        depth = np.empty(len(d))
        for i in range(0, len(d), _CHUNK):
            dc = d[i:i + _CHUNK]
            hit = _intersect(scene, o, dc)
            rgb[i:i + _CHUNK] = _shade(scene, o, dc, *hit)
            depth[i:i + _CHUNK] = np.where(np.isfinite(hit[0]), hit[0], 0.0)
    return (rgb.reshape(height, width, 3).astype(np.float32), depth.reshape(height, width).astype(np.float32))
