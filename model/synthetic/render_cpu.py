"""The compiled renderer: ``render.py``'s ray casting and textures as one loop over rays.

The numpy renderer (``render.py``) makes ~40 passes over arrays of rays for the intersections and as
many again for the textures; this loop takes each ray once: the ground, then every primitive whose
bounding sphere the ray meets (boxes, spheres, cylinders, in the scene's order, the nearest kept,
ties to the earlier one, the ground only beaten by a strictly nearer hit), then the hit's texture
and Lambert shading. The formulas, their order and the hash functions are the numpy renderer's, in
float64 and uint64 arithmetic, so both give the same images (tested: the same hit everywhere, colours
and depths equal to rounding). Compiled once per machine (Numba, cached); one thread per call
(training renders in several worker processes at once).
"""

from __future__ import annotations

import math

import numba
import numpy as np

_TINY = 1e-300
_AMBIENT = 0.45
_SKY, _GROUND, _BOX, _SPHERE, _CYL = -1, 0, 1, 2, 3
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
_S29 = np.uint64(29)
_S11 = np.uint64(11)
_U0 = np.uint64(0)


# ------------------------------------------------------------------------------------------------
# hashing and noise (render.py's _mix / _unit / _hash / _noise / _fbm for one point)
@numba.njit(cache=True, error_model="numpy", inline="always")
def _mix(h, key):  # pragma: no cover - compiled
    h = (h ^ np.uint64(np.int64(key))) * _M1
    return h ^ (h >> _S33)


@numba.njit(cache=True, error_model="numpy", inline="always")
def _unit(h):  # pragma: no cover - compiled
    h = h * _M2
    h = h ^ (h >> _S29)
    return np.float64(h >> _S11) * 2.0 ** -53


@numba.njit(cache=True, error_model="numpy")
def _hash3(a, b, c):  # pragma: no cover - compiled
    return _unit(_mix(_mix(_mix(_U0, a), b), c))


@numba.njit(cache=True, error_model="numpy")
def _noise(p0, p1, p2, freq, key):  # pragma: no cover - compiled
    q0, q1, q2 = p0 * freq, p1 * freq, p2 * freq
    i0, i1, i2 = np.int64(math.floor(q0)), np.int64(math.floor(q1)), np.int64(math.floor(q2))
    f0, f1, f2 = q0 - i0, q1 - i1, q2 - i2
    s0, s1, s2 = f0 * f0 * (3 - 2 * f0), f1 * f1 * (3 - 2 * f1), f2 * f2 * (3 - 2 * f2)
    hk = _mix(_U0, key)
    out = 0.0
    for cx in range(2):
        hx = _mix(hk, i0 + cx)
        wx = s0 if cx else 1 - s0
        for cy in range(2):
            hxy = _mix(hx, i1 + cy)
            wxy = wx * (s1 if cy else 1 - s1)
            for cz in range(2):
                out += wxy * (s2 if cz else 1 - s2) * _unit(_mix(hxy, i2 + cz))
    return out


@numba.njit(cache=True, error_model="numpy")
def _fbm(p0, p1, p2, key, base):  # pragma: no cover - compiled
    return (0.5 * _noise(p0, p1, p2, base, key) + 0.3 * _noise(p0, p1, p2, base * 3.1, key + 7)
            + 0.2 * _noise(p0, p1, p2, base * 9.7, key + 13))


# ------------------------------------------------------------------------------------------------
# intersections (render.py's _boxes / _spheres / _cylinders / _roots for one ray and one primitive)
@numba.njit(cache=True, error_model="numpy", inline="always")
def _safe(x):  # pragma: no cover - compiled
    return _TINY if x == 0 else x


@numba.njit(cache=True, error_model="numpy", inline="always")
def _nmin(a, b):  # pragma: no cover - compiled
    """numpy.minimum: NaN if either is NaN."""
    if a != a or b != b:
        return np.nan
    return a if a <= b else b


@numba.njit(cache=True, error_model="numpy", inline="always")
def _nmax(a, b):  # pragma: no cover - compiled
    if a != a or b != b:
        return np.nan
    return a if a >= b else b


@numba.njit(cache=True, error_model="numpy")
def _roots(a, b, cc):  # pragma: no cover - compiled
    disc = b * b - a * cc
    q = -(b + math.copysign(math.sqrt(max(disc, 0.0)), b))
    r0, r1 = q / a, cc / q  # IEEE division (error_model="numpy"), as numpy's
    return _nmin(r0, r1), _nmax(r0, r1), disc >= 0


@numba.njit(cache=True, error_model="numpy")
def _box_hit(o, d, center, half, yaw):  # pragma: no cover - compiled
    c, s = math.cos(yaw), math.sin(yaw)
    r0, r1, r2 = o[0] - center[0], o[1] - center[1], o[2] - center[2]
    ol = (c * r0 + s * r1, -s * r0 + c * r1, r2)
    dl = (c * d[0] + s * d[1], -s * d[0] + c * d[1], d[2])
    near = -np.inf
    far = np.inf
    axis = 0
    for k in range(3):  # the slabs never give NaN: 1 / _safe(x) is finite
        inv = 1.0 / _safe(dl[k])
        ta = (-half[k] - ol[k]) * inv
        tb = (half[k] - ol[k]) * inv
        lo, hi = min(ta, tb), max(ta, tb)
        if k == 0 or lo > near:  # numpy's argmax: the first of equal maxima
            near, axis = lo, k
        far = min(far, hi)
    positive = 1 if dl[axis] < 0 else 0
    t = near if (near <= far and near > 0) else np.inf
    return t, 2 * axis + positive


@numba.njit(cache=True, error_model="numpy")
def _sphere_hit(o, d, center, radius, zmin):  # pragma: no cover - compiled
    oc0, oc1, oc2 = o[0] - center[0], o[1] - center[1], o[2] - center[2]
    lo, hi, real = _roots(d[0] * d[0] + d[1] * d[1] + d[2] * d[2], d[0] * oc0 + d[1] * oc1 + d[2] * oc2,
                          (oc0 * oc0 + oc1 * oc1 + oc2 * oc2) - radius ** 2)
    dz = _safe(d[2])
    tz = (zmin - o[2]) / dz
    up = dz > 0
    entry = _nmax(lo, tz if up else -np.inf)
    exit_ = _nmin(hi, np.inf if up else tz)
    t = entry if (real and entry <= exit_ and entry > 0) else np.inf
    return t, 1 if (up and tz > lo) else 0


@numba.njit(cache=True, error_model="numpy")
def _cyl_hit(o, d, xy, radius, z):  # pragma: no cover - compiled
    ox, oy = o[0] - xy[0], o[1] - xy[1]
    a = d[0] * d[0] + d[1] * d[1]
    cc = (ox * ox + oy * oy) - radius ** 2
    lo, hi, real = _roots(a, d[0] * ox + d[1] * oy, cc)
    vertical = a == 0
    if vertical:
        lo = -np.inf if cc < 0 else np.inf
        hi = np.inf if cc < 0 else -np.inf
    dz = _safe(d[2])
    z0, z1 = (z[0] - o[2]) / dz, (z[1] - o[2]) / dz
    zlo = _nmin(z0, z1)
    entry, exit_ = _nmax(lo, zlo), _nmin(hi, _nmax(z0, z1))
    t = entry if ((real or vertical) and entry <= exit_ and entry > 0) else np.inf
    return t, 1 if zlo > lo else 0


# ------------------------------------------------------------------------------------------------
# the kernel
@numba.njit(cache=True, error_model="numpy", nogil=True)
def render_rays(o, dirs, shade, keyhi, ground_half, street_half, sidewalk, plaza_radius, ground_colors,
                box_center, box_half, box_yaw, box_color, box_roof, box_windows, box_glass, box_sign, box_sign_color,
                box_building, sphere_center, sphere_radius, sphere_zmin, sphere_color, sphere_dome,
                cyl_xy, cyl_radius, cyl_z, cyl_color, sky_colors, sun, bs_centre, bs_radius, bs_kind, bs_index,
                t_out, rgb_out):  # pragma: no cover - compiled
    """For every ray ``o + t dirs[n]``: the nearest hit's t (inf: none) into ``t_out``; with ``shade``
    also its colour into ``rgb_out [N, 3]``. ``bs_*``: the primitives' bounding spheres in the order
    boxes, spheres, cylinders (``render._bounding_spheres``)."""
    N = dirs.shape[0]
    P = bs_centre.shape[0]
    for n in range(N):
        d = dirs[n]
        dd = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
        dz = _safe(d[2])
        tg = -o[2] / dz
        px, py = o[0] + tg * d[0], o[1] + tg * d[1]
        best = tg if (tg > 0 and abs(px) <= ground_half and abs(py) <= ground_half) else np.inf
        kind = _GROUND if best < np.inf else _SKY
        index = 0
        face = 0
        prim_t = np.inf
        prim_k, prim_i, prim_f = -1, 0, 0
        for q in range(P):
            oc0, oc1, oc2 = o[0] - bs_centre[q, 0], o[1] - bs_centre[q, 1], o[2] - bs_centre[q, 2]
            b = d[0] * oc0 + d[1] * oc1 + d[2] * oc2
            cc = (oc0 * oc0 + oc1 * oc1 + oc2 * oc2) - bs_radius[q] ** 2
            if not (b * b >= dd * cc and (b < 0 or cc < 0)):
                continue
            k, i = bs_kind[q], bs_index[q]
            if k == _BOX:
                t, f = _box_hit(o, d, box_center[i], box_half[i], box_yaw[i])
            elif k == _SPHERE:
                t, f = _sphere_hit(o, d, sphere_center[i], sphere_radius[i], sphere_zmin[i])
            else:
                t, f = _cyl_hit(o, d, cyl_xy[i], cyl_radius[i], cyl_z[i])
            if prim_k < 0 or t < prim_t:
                prim_t, prim_k, prim_i, prim_f = t, k, i, f
        if prim_k >= 0 and prim_t < best:
            best, kind, index, face = prim_t, prim_k, prim_i, prim_f
        t_out[n] = best
        if shade:
            _shade_one(o, d, best, kind, index, face, keyhi, street_half, sidewalk, plaza_radius, ground_colors,
                       box_center, box_half, box_yaw, box_color, box_roof, box_windows, box_glass, box_sign,
                       box_sign_color, box_building, sphere_center, sphere_radius, sphere_color, sphere_dome,
                       cyl_xy, cyl_radius, cyl_color, sky_colors, sun, rgb_out[n])


@numba.njit(cache=True, error_model="numpy")
def _shade_one(o, d, t, kind, idx, face, keyhi, street_half, sidewalk, plaza_radius, col, box_center, box_half,
               box_yaw, box_color, box_roof, box_windows, box_glass, box_sign, box_sign_color, box_building,
               sphere_center, sphere_radius, sphere_color, sphere_dome, cyl_xy, cyl_radius, cyl_color,
               sky_colors, sun, out):  # pragma: no cover - compiled
    if kind == _SKY:
        norm = math.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
        elevation = min(max(d[2] / norm, 0.0), 1.0) ** 0.6
        for c in range(3):
            out[c] = min(max(sky_colors[0, c] + elevation * (sky_colors[1, c] - sky_colors[0, c]), 0.0), 1.0)
        return
    p0, p1, p2 = o[0] + t * d[0], o[1] + t * d[1], o[2] + t * d[2]
    r, g, b = 0.0, 0.0, 0.0
    n0, n1, n2 = 0.0, 0.0, 1.0
    if kind == _GROUND:
        ay = abs(p1)
        key = keyhi
        grain = _fbm(p0, p1, p2, key, 1.3)
        road = ay < street_half
        walk = (not road) and ay < street_half + sidewalk
        plaza = (not road) and (not walk) and math.hypot(p0, p1) < plaza_radius
        if road:
            m = 0.7 + 0.6 * grain
            r, g, b = col[0, 0] * m, col[0, 1] * m, col[0, 2] * m
        else:
            m = 0.5 + 1.0 * grain
            r, g, b = col[4, 0] * m, col[4, 1] * m, col[4, 2] * m
        centre_dash = ay < 0.1 and (p0 % 6.0) < 3.0
        edge_line = abs(ay - (street_half - 0.3)) < 0.08
        crosswalk = abs(abs(p0) - plaza_radius) < 2.0 and (p1 % 1.0) < 0.5 and road
        if road and (centre_dash or edge_line or crosswalk):
            r, g, b = col[1, 0], col[1, 1], col[1, 2]
        if walk:
            tile = 0.8 + 0.4 * _hash3(key + 1, np.int64(math.floor(p0 / 1.2)), np.int64(math.floor(p1 / 1.2)))
            joint = 1.0 if ((p0 % 1.2) < 0.06 or (p1 % 1.2) < 0.06) else 0.0
            m = tile * (1 - 0.35 * joint) * (0.85 + 0.3 * grain)
            r, g, b = col[2, 0] * m, col[2, 1] * m, col[2, 2] * m
        if plaza:
            paving = 0.7 + 0.6 * _hash3(key + 2, np.int64(math.floor(p0 / 1.5)), np.int64(math.floor(p1 / 1.5)))
            m = paving * (0.85 + 0.3 * grain)
            r, g, b = col[3, 0] * m, col[3, 1] * m, col[3, 2] * m
    elif kind == _BOX:
        c, s = math.cos(box_yaw[idx]), math.sin(box_yaw[idx])
        rel0, rel1 = p0 - box_center[idx, 0], p1 - box_center[idx, 1]
        lx, ly = c * rel0 + s * rel1, -s * rel0 + c * rel1
        axis = face // 2
        sign = 1.0 if face % 2 == 1 else -1.0
        l0 = sign if axis == 0 else 0.0
        l1 = sign if axis == 1 else 0.0
        n0, n1, n2 = c * l0 - s * l1, s * l0 + c * l1, (sign if axis == 2 else 0.0)
        key = keyhi + 1000 + idx * 8 + face
        grain = _fbm(p0, p1, p2, key, 0.7)
        m = 0.7 + 0.6 * grain
        r, g, b = box_color[idx, 0] * m, box_color[idx, 1] * m, box_color[idx, 2] * m
        side = axis < 2
        u = ly + box_half[idx, 1] if axis == 0 else lx + box_half[idx, 0]
        v = p2
        su, sv, fu, fv = box_windows[idx, 0], box_windows[idx, 1], box_windows[idx, 2], box_windows[idx, 3]
        su = su if su > 0 else 1.0
        sv = sv if sv > 0 else 1.0
        col_i, row_i = math.floor(u / su), math.floor(v / sv)
        if (side and abs(u / su - col_i - 0.5) < fu / 2 and abs(v / sv - row_i - 0.5) < fv / 2 and row_i >= 1
                and v < 2 * box_half[idx, 2] - 0.5 * sv):
            pane = _hash3(key, np.int64(col_i), np.int64(row_i))
            if pane > 0.85:
                r, g, b = 1.0, 0.85, 0.55
            else:
                m = 0.5 + 1.5 * pane
                r, g, b = box_glass[idx, 0] * m, box_glass[idx, 1] * m, box_glass[idx, 2] * m
        z0, z1 = box_sign[idx, 0], box_sign[idx, 1]
        if side and v >= z0 and v < z1:
            letters = _hash3(key + 3, np.int64(math.floor(u / 0.4)), np.int64(math.floor((v - z0) / 0.25)))
            if letters > 0.6:
                r, g, b = 0.97, 0.97, 0.95
            else:
                r, g, b = box_sign_color[idx, 0], box_sign_color[idx, 1], box_sign_color[idx, 2]
        building = box_building[idx]
        if building and axis == 2:
            panel = (lx % 3.0) < 0.12 or (ly % 3.0) < 0.12
            m = (0.6 + 0.8 * grain) * (0.7 if panel else 1.0)
            r, g, b = box_roof[idx, 0] * m, box_roof[idx, 1] * m, box_roof[idx, 2] * m
        if (not building) and v > 1.25 * box_half[idx, 2] and v < 1.8 * box_half[idx, 2] and side:
            r, g, b = r * 0.25, g * 0.25, b * 0.25
    elif kind == _SPHERE:
        rel0, rel1, rel2 = p0 - sphere_center[idx, 0], p1 - sphere_center[idx, 1], p2 - sphere_center[idx, 2]
        if face == 1:
            n0, n1, n2 = 0.0, 0.0, -1.0
        else:
            rad = sphere_radius[idx]
            n0, n1, n2 = rel0 / rad, rel1 / rad, rel2 / rad
        key = keyhi + 5000 + idx
        if sphere_dome[idx]:
            ribs = ((math.atan2(rel1, rel0) * 16 / (2 * np.pi)) % 1.0) < 0.12
            rings = (rel2 % 1.0) < 0.08
            m = (0.75 + 0.4 * _fbm(p0, p1, p2, key, 0.7)) * (0.6 if ribs else 1.0) * (0.8 if rings else 1.0)
        else:
            m = 0.4 + 1.2 * _fbm(p0, p1, p2, key, 1.8)
        r, g, b = sphere_color[idx, 0] * m, sphere_color[idx, 1] * m, sphere_color[idx, 2] * m
    else:
        if face == 1:
            n0, n1, n2 = 0.0, 0.0, 1.0
        else:
            rad = cyl_radius[idx]
            n0, n1, n2 = (p0 - cyl_xy[idx, 0]) / rad, (p1 - cyl_xy[idx, 1]) / rad, 0.0
        bands = 0.7 if (p2 % 0.8) < 0.1 else 1.0
        m = (0.6 + 0.8 * _fbm(p0, p1, p2, keyhi + 9000 + idx, 2.0)) * bands
        r, g, b = cyl_color[idx, 0] * m, cyl_color[idx, 1] * m, cyl_color[idx, 2] * m
    light = _AMBIENT + (1 - _AMBIENT) * max(n0 * sun[0] + n1 * sun[1] + n2 * sun[2], 0.0)
    out[0] = min(max(r * light, 0.0), 1.0)
    out[1] = min(max(g * light, 0.0), 1.0)
    out[2] = min(max(b * light, 0.0), 1.0)


def warm_up() -> None:
    """Compile (or load from the cache) the loop now, e.g. while building a container image."""
    from .render import render
    from .scene import make_scene

    cam = np.array([[1.0, 0, 0, 0], [0, 0, -1, 1.6], [0, 1, 0, 0]])  # at 1.6 m, looking along +y
    render(make_scene(0), cam, np.array([[8.0, 0, 4], [0, 8, 4], [0, 0, 1]]), 8, 8)
