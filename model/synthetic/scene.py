"""Procedural "city block" scenes: a textured street, boxes, spheres and cylinders in plain arrays.

World frame: metres, +z up, the ground is the square ``|x|, |y| <= ground_half`` on ``z = 0``. The
street runs along x through the origin; around the origin lies an open paved plaza (no buildings,
trees or poles inside ``plaza_radius``) so that orbits around the block centre have room. Every
primitive is a solid:

- boxes (buildings, cars, kiosks) stand on ``z = 0``, rotated about z by ``box_yaw`` (radians,
  local axes -> world by ``Rz(yaw)``);
- spheres are clipped below ``sphere_zmin`` (``-inf`` for tree canopies, the centre height for
  domes, which are hemispheres);
- cylinders are vertical, ``cyl_z`` = (bottom, top).

Colours are RGB in [0, 1]; the renderer (``render.py``) turns them into procedural textures of the
hit point, so the arrays here are all a scene is. ``make_scene`` uses only
``numpy.random.default_rng(seed)`` and is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from errors import InputError

SCENE_KINDS = ("block", "empty")

_FACADES = np.array([[0.62, 0.32, 0.25], [0.80, 0.74, 0.62], [0.55, 0.56, 0.58], [0.88, 0.87, 0.83],
                     [0.45, 0.52, 0.60], [0.70, 0.58, 0.42], [0.36, 0.40, 0.36]])
_ROOFS = np.array([[0.30, 0.30, 0.32], [0.38, 0.28, 0.22], [0.24, 0.35, 0.30], [0.50, 0.48, 0.45]])
_SIGNS = np.array([[0.85, 0.12, 0.10], [0.95, 0.80, 0.10], [0.12, 0.35, 0.85], [0.10, 0.65, 0.30]])
_CARS = np.array([[0.75, 0.10, 0.10], [0.15, 0.20, 0.60], [0.90, 0.90, 0.88], [0.10, 0.10, 0.12],
                  [0.60, 0.62, 0.65], [0.95, 0.70, 0.10]])
_DOMES = np.array([[0.35, 0.62, 0.52], [0.80, 0.65, 0.25], [0.90, 0.88, 0.84]])


@dataclass(frozen=True)
class Scene:
    """A procedural scene as read-only numpy arrays (shapes: B boxes, S spheres, C cylinders)."""

    seed: int
    kind: str
    ground_half: float       # the ground square's half side (m); rays past it see sky
    street_length: float     # buildings and street furniture lie within |x| <= street_length / 2
    street_half: float       # carriageway |y| < street_half
    sidewalk: float          # sidewalk width on both sides of the carriageway
    plaza_radius: float      # open paved disc around the origin
    ground_colors: np.ndarray  # [5, 3] asphalt, road marking, sidewalk, plaza paving, verge
    box_center: np.ndarray     # [B, 3]
    box_half: np.ndarray       # [B, 3] half sizes in the box frame
    box_yaw: np.ndarray        # [B]
    box_color: np.ndarray      # [B, 3] facade / body colour
    box_roof: np.ndarray       # [B, 3]
    box_windows: np.ndarray    # [B, 4] spacing along the facade, floor height, window width and height
    #                            as fractions of the spacing; all zero for boxes without windows
    box_glass: np.ndarray      # [B, 3]
    box_sign: np.ndarray       # [B, 2] signage band (z0, z1); z1 <= z0 means none
    box_sign_color: np.ndarray  # [B, 3]
    box_building: np.ndarray   # [B] bool; False for cars and kiosks
    sphere_center: np.ndarray  # [S, 3]
    sphere_radius: np.ndarray  # [S]
    sphere_zmin: np.ndarray    # [S]
    sphere_color: np.ndarray   # [S, 3]
    sphere_dome: np.ndarray    # [S] bool; domes get ribs, canopies foliage
    cyl_xy: np.ndarray         # [C, 2]
    cyl_radius: np.ndarray     # [C]
    cyl_z: np.ndarray          # [C, 2]
    cyl_color: np.ndarray      # [C, 3]
    sky_colors: np.ndarray     # [2, 3] horizon, zenith
    sun: np.ndarray            # [3] unit vector towards the sun
    extent: np.ndarray         # [2, 3] axis-aligned bounds (min, max) of the content


def _rot_extent(half_x, half_y, yaw):
    """Half extents along world x and y of footprints (scalars or arrays) rotated by ``yaw``."""
    c, s = np.abs(np.cos(yaw)), np.abs(np.sin(yaw))
    return half_x * c + half_y * s, half_x * s + half_y * c


def _disc_clear(center_xy, half_xy, yaw: float, radius: float) -> bool:
    """Whether a rotated footprint stays outside the disc of ``radius`` around the origin."""
    c, s = np.cos(yaw), np.sin(yaw)
    x, y = -center_xy[0], -center_xy[1]
    local = np.array([c * x + s * y, -s * x + c * y])
    return float(np.hypot(*np.maximum(np.abs(local) - half_xy, 0.0))) > radius


# Primitive fields of Scene -> (trailing shape, dtype); the builder collects rows of each.
_PRIMITIVE_FIELDS = {
    "box_center": ((3,), float), "box_half": ((3,), float), "box_yaw": ((), float), "box_color": ((3,), float),
    "box_roof": ((3,), float), "box_windows": ((4,), float), "box_glass": ((3,), float), "box_sign": ((2,), float),
    "box_sign_color": ((3,), float), "box_building": ((), bool),
    "sphere_center": ((3,), float), "sphere_radius": ((), float), "sphere_zmin": ((), float),
    "sphere_color": ((3,), float), "sphere_dome": ((), bool),
    "cyl_xy": ((2,), float), "cyl_radius": ((), float), "cyl_z": ((2,), float), "cyl_color": ((3,), float),
}


class _Builder:
    """Collects primitives row by row before they are frozen into a Scene."""

    def __init__(self):
        self.rows = {name: [] for name in _PRIMITIVE_FIELDS}

    def add(self, prefix: str, **values) -> None:
        for key, value in values.items():
            self.rows[f"{prefix}_{key}"].append(value)

    def box(self, center, half, yaw, color, roof=(0.3, 0.3, 0.3), windows=(0, 0, 0, 0), glass=(0.1, 0.1, 0.1),
            sign=(0, 0), sign_color=(0, 0, 0), building=False):
        self.add("box", center=center, half=half, yaw=yaw, color=color, roof=roof, windows=windows, glass=glass,
                 sign=sign, sign_color=sign_color, building=building)

    def arrays(self) -> dict:
        return {name: np.asarray(self.rows[name], dtype).reshape(-1, *shape)
                for name, (shape, dtype) in _PRIMITIVE_FIELDS.items()}


def _buildings(rng, b: _Builder, length: float, street_half: float, sidewalk: float, plaza: float) -> list:
    """Lots along both street sides; 4-12 of them get a building. Returns the free lots (x, side, width)."""
    lots = []
    for side in (-1.0, 1.0):
        x = -length / 2
        while True:
            w = rng.uniform(12.0, 32.0)
            if x + w > length / 2:
                break
            lots.append((x + w / 2, side, w))
            x += w
    chosen = set(rng.choice(len(lots), size=min(len(lots), int(rng.integers(4, 13))), replace=False).tolist())
    for k, (x, side, w) in enumerate(lots):
        if k not in chosen:
            continue
        for _ in range(20):  # a yaw and footprint whose rotated extent fits the lot
            half = rng.uniform(3.0, 15.0, size=2)
            yaw = rng.uniform(-np.pi, np.pi)
            ext_x, ext_y = _rot_extent(*half, yaw)
            if ext_x <= w / 2 - 1.0:
                break
        else:
            half, yaw = np.array([min(half[0], w / 2 - 1.0), half[1]]), 0.0
            ext_x, ext_y = _rot_extent(*half, yaw)
        y = side * (street_half + sidewalk + rng.uniform(1.0, 6.0) + ext_y)
        while not _disc_clear((x, y), half, yaw, plaza):  # buildings step back around the plaza
            y += side
        height = rng.uniform(6.0, 60.0)
        floor = rng.uniform(3.0, 4.2)
        windows = (rng.uniform(2.5, 5.0), floor, rng.uniform(0.35, 0.75), rng.uniform(0.4, 0.7))
        sign = (0.0, 0.0)
        if rng.random() < 0.4:
            z0 = rng.uniform(0.55, 0.8) * floor
            sign = (z0, z0 + rng.uniform(0.6, 0.2 * floor + 0.6))
        color = np.clip(_FACADES[rng.integers(len(_FACADES))] + rng.normal(0, 0.04, 3), 0, 1)
        roof = np.clip(_ROOFS[rng.integers(len(_ROOFS))] + rng.normal(0, 0.03, 3), 0, 1)
        glass = np.clip(np.array([0.12, 0.16, 0.22]) + rng.normal(0, 0.03, 3), 0, 1)
        b.box((x, y, height / 2), (half[0], half[1], height / 2), yaw, color, roof, windows, glass, sign,
              _SIGNS[rng.integers(len(_SIGNS))], building=True)
        if rng.random() < 0.25:  # a dome on the roof, inside the footprint
            r = min(rng.uniform(0.4, 0.8) * min(half), 8.0)
            b.add("sphere", center=(x, y, height), radius=r, zmin=height, color=_DOMES[rng.integers(len(_DOMES))],
                  dome=True)
    return [lot for k, lot in enumerate(lots) if k not in chosen]


def _furniture(rng, b: _Builder, length: float, street_half: float, sidewalk: float, plaza: float,
               free_lots: list) -> None:
    """Trees and poles along the sidewalks, cars on the lanes, kiosks, and a dome on a free lot."""
    for side in (-1.0, 1.0):
        x = -length / 2 + rng.uniform(2.0, 10.0)
        while x < length / 2:
            if abs(x) > plaza + 3.0:
                trunk_top = rng.uniform(2.5, 5.0)
                r = rng.uniform(1.5, 3.0)
                y = side * (street_half + sidewalk * rng.uniform(0.5, 0.7))
                b.add("cyl", xy=(x, y), radius=rng.uniform(0.15, 0.3), z=(0.0, trunk_top),
                      color=np.clip((0.35, 0.24, 0.15) + rng.normal(0, 0.03, 3), 0, 1))
                green = np.clip((0.22, 0.45, 0.18) + rng.normal(0, 0.05, 3), 0, 1)
                b.add("sphere", center=(x, y, trunk_top + 0.6 * r), radius=r, zmin=-np.inf, color=green, dome=False)
            x += rng.uniform(10.0, 20.0)
        x = -length / 2 + rng.uniform(5.0, 15.0)
        while x < length / 2:
            if abs(x) > plaza + 1.0:
                b.add("cyl", xy=(x, side * (street_half + 0.4)), radius=rng.uniform(0.08, 0.12),
                      z=(0.0, rng.uniform(5.0, 8.0)), color=(0.45, 0.46, 0.48))
            x += rng.uniform(15.0, 25.0)
    cars = []
    for _ in range(int(rng.integers(2, 7))):
        lane = rng.choice([-1.0, 1.0]) * street_half / 2
        x = rng.uniform(-length / 2 + 5, length / 2 - 5)
        if any(abs(x - cx) < 6.0 and lane == cy for cx, cy in cars):
            continue
        cars.append((x, lane))
        half = (rng.uniform(2.0, 2.5), rng.uniform(0.85, 1.0), rng.uniform(0.7, 0.85))
        yaw = (0.0 if lane > 0 else np.pi) + rng.normal(0, 0.05)
        b.box((x, lane, half[2]), half, yaw, _CARS[rng.integers(len(_CARS))])
    for _ in range(int(rng.integers(0, 3))):
        x = rng.uniform(plaza + 3, length / 2 - 5) * rng.choice([-1.0, 1.0])
        y = rng.choice([-1.0, 1.0]) * (street_half + sidewalk / 2)
        b.box((x, y, 1.25), (1.0, 1.0, 1.25), rng.uniform(-0.3, 0.3), _SIGNS[rng.integers(len(_SIGNS))])
    if free_lots and rng.random() < 0.6:
        x, side, w = free_lots[int(rng.integers(len(free_lots)))]
        r = rng.uniform(3.0, min(7.0, w / 2 - 1.0))
        y = side * (street_half + sidewalk + 2.0 + r)
        if abs(x) - r > plaza or abs(y) - r > plaza:
            b.add("sphere", center=(x, y, 0.0), radius=r, zmin=0.0, color=_DOMES[rng.integers(len(_DOMES))], dome=True)


def make_scene(seed: int, kind: str = "block") -> Scene:
    """A deterministic procedural scene: ``"block"`` (street, buildings, trees, ...) or ``"empty"`` (ground only)."""
    if kind not in SCENE_KINDS:
        raise InputError(f"unknown scene kind {kind!r}; expected one of {SCENE_KINDS}")
    rng = np.random.default_rng(seed)
    length = rng.uniform(120.0, 160.0)
    street_half, sidewalk, plaza = rng.uniform(4.0, 7.0), rng.uniform(2.0, 4.0), rng.uniform(24.0, 34.0)
    ground = np.array([[0.22, 0.22, 0.24], [0.92, 0.90, 0.80], [0.62, 0.60, 0.57], [0.66, 0.56, 0.46],
                       [0.30, 0.42, 0.22]])
    ground = np.clip(ground + rng.normal(0, 0.03, ground.shape), 0, 1)
    sky = np.clip(np.array([[0.80, 0.86, 0.92], [0.35, 0.55, 0.85]]) + rng.normal(0, 0.03, (2, 3)), 0, 1)
    azimuth, elevation = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(35.0, 65.0))
    sun = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
    b = _Builder()
    if kind == "block":
        free = _buildings(rng, b, length, street_half, sidewalk, plaza)
        _furniture(rng, b, length, street_half, sidewalk, plaza, free)
    prim = b.arrays()
    # Content bounds: the street area and every primitive's bounding box; everything stands on z = 0.
    half_h = (prim["cyl_z"][:, 1:] - prim["cyl_z"][:, :1]) / 2
    boxes = [(np.zeros(3), np.array([length / 2, street_half + sidewalk, 0.0])),
             (prim["box_center"], np.stack([*_rot_extent(*prim["box_half"][:, :2].T, prim["box_yaw"]),
                                            prim["box_half"][:, 2]], axis=1)),
             (prim["sphere_center"], np.repeat(prim["sphere_radius"][:, None], 3, axis=1)),
             (np.concatenate([prim["cyl_xy"], prim["cyl_z"][:, :1] + half_h], axis=1),
              np.concatenate([np.repeat(prim["cyl_radius"][:, None], 2, axis=1), half_h], axis=1))]
    corners = np.concatenate([np.reshape(c - e, (-1, 3)) for c, e in boxes] + [np.reshape(c + e, (-1, 3))
                                                                                for c, e in boxes])
    extent = np.stack([corners.min(0), corners.max(0)])
    extent[0, 2] = 0.0
    scene = Scene(seed=seed, kind=kind, ground_half=500.0, street_length=length, street_half=street_half,
                  sidewalk=sidewalk, plaza_radius=plaza, ground_colors=ground, sky_colors=sky, sun=sun,
                  extent=extent, **prim)
    for value in vars(scene).values():  # frozen all the way down: arrays are read-only
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    return scene


def solid_at(scene: Scene, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """``[N, 3]`` world points -> ``[N]`` bool: inside (or within ``margin`` of) any solid or the ground."""
    p = np.atleast_2d(np.asarray(points, np.float64))
    inside = p[:, 2] < margin
    if len(scene.box_center):
        rel = p[:, None, :] - scene.box_center
        c, s = np.cos(scene.box_yaw), np.sin(scene.box_yaw)
        local = np.stack([c * rel[..., 0] + s * rel[..., 1], -s * rel[..., 0] + c * rel[..., 1], rel[..., 2]], -1)
        inside |= (np.abs(local) <= scene.box_half + margin).all(-1).any(-1)
    if len(scene.sphere_center):
        dist = np.linalg.norm(p[:, None, :] - scene.sphere_center, axis=-1)
        inside |= ((dist <= scene.sphere_radius + margin) & (p[:, None, 2] >= scene.sphere_zmin - margin)).any(-1)
    if len(scene.cyl_xy):
        dist = np.linalg.norm(p[:, None, :2] - scene.cyl_xy, axis=-1)
        z = p[:, None, 2]
        inside |= ((dist <= scene.cyl_radius + margin) & (z >= scene.cyl_z[:, 0] - margin)
                   & (z <= scene.cyl_z[:, 1] + margin)).any(-1)
    return inside
