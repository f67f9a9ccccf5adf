"""Grid-sampled decoding of per-view depth into a truncated signed distance field (TSDF).

Every voxel centre of a regular grid is projected into every view, the view's depth (and
confidence and colour) is read at that pixel (nearest-pixel grid sampling, done as one gather on the
flattened image: the samples of ``grid_sample(mode="nearest")`` without its per-channel
interpolation machinery; ``tests/model/test_fusion.py`` checks the two agree), and the projective signed
distance is averaged over the views with per-view weights: volumetric integration of range images
(Curless & Levoy, SIGGRAPH 1996, section 3) in the projective form of KinectFusion (Newcombe et al.,
ISMAR 2011, section 3.3). The volume is decoded one chunk-aligned region at a time, so the
pipeline can write each chunk straight into Zarr and never hold the whole volume. On a GPU the
tensor code below runs (blocks of voxels x views); on the CPU a compiled loop over the same numbers
(``model.fusion_cpu``) replaces its ~30 elementwise passes per (voxel, view) pair.

Conventions:

- Cameras are OpenCV (x right, y down, z forward); ``cam_from_world`` ``[S, 3, 4]`` maps world
  points to camera points (``X_cam = R X_world + t``); intrinsics ``[S, 3, 3]`` are in pixels, and
  pixel (column u, row v) has its centre at ``(u + 0.5, v + 0.5)`` (as in ``model.geometry``).
- Depth ``[S, H, W]`` is z-depth in metres; 0 or a non-finite value means no data (sky).
- Grids are indexed ``[z, y, x]``; ``VolumeGrid.origin`` is the world ``(x, y, z)`` of the centre
  of voxel ``[0, 0, 0]``.
- ``tsdf = clamp(sdf / truncation, -1, 1)`` with ``sdf = depth(pixel) - z_cam(voxel)``: positive in
  front of the surface (free space between camera and surface), negative behind it, NaN where no
  view observed the voxel. The distance is measured along the optical axis, not along the ray:
  that is what a z-depth map gives without a per-pixel factor, and the zero crossing is the same
  either way (the ray distance is the z difference times ``|K^-1 [u, v, 1]| >= 1``, which would
  only widen the band at the image borders).
- Precision: per-voxel maths is float32. Pass positions near the origin: the caller subtracts a
  large world origin (UTM coordinates) from cameras and bounds first. The grid origin is moved into
  every camera in float64 (``R origin + t``) and only offsets within the grid are added in float32,
  so float64 ``cam_from_world`` keeps its precision (a UTM-sized shift changes nothing in the tests),
  and each voxel's numbers depend on its global index alone: any chunking gives bit-identical output.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from errors import ConfigError, InputError

Region = tuple[slice, slice, slice]  # (z, y, x) voxel index ranges

_BOUNDS_SAMPLES = 1 << 20  # scene_bounds quantiles from at most this many points (~1e-3 quantile error)
_CULL_PIXELS = 1.0         # frustum culling margin: float32 projection may differ from the float64 test
_BLOCK = 32                # views are culled per block of this many voxels a side (fastest on CPU at 32)
_BLOCK_GPU = 128           # on a GPU, launches and host syncs cost more than the voxel-view pairs culling saves


def _block_size(device: torch.device) -> int:
    """Side of the culling blocks: small on the CPU (arithmetic-bound), a whole chunk on a GPU, where
    32^3 blocks took 0.134 s for 128^3 voxels on an H200 and one block per 64^3 chunk 0.051 s: the small
    blocks' launches and host syncs, not their arithmetic, set the time there."""
    return _BLOCK if device.type == "cpu" else _BLOCK_GPU


@dataclass(frozen=True)
class VolumeGrid:
    """A regular voxel grid: ``shape`` ``(nz, ny, nx)`` voxels of side ``voxel_size`` metres whose
    voxel ``[0, 0, 0]`` has its centre at world ``origin`` ``(x, y, z)``."""

    origin: tuple[float, float, float]
    voxel_size: float
    shape: tuple[int, int, int]

    def __post_init__(self):
        origin = tuple(float(v) for v in self.origin)
        shape = tuple(int(n) for n in self.shape)
        voxel_size = float(self.voxel_size)
        if len(origin) != 3 or not all(math.isfinite(v) for v in origin):
            raise ConfigError(f"VolumeGrid origin must be 3 finite numbers (x, y, z), got {self.origin}")
        if not (math.isfinite(voxel_size) and voxel_size > 0):
            raise ConfigError(f"VolumeGrid voxel_size must be finite and > 0, got {self.voxel_size}")
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(f"VolumeGrid shape must be 3 positive sizes (nz, ny, nx), got {self.shape}")
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "voxel_size", voxel_size)

    @property
    def num_voxels(self) -> int:
        return math.prod(self.shape)

    def coords(self) -> dict[str, np.ndarray]:
        """Voxel-centre coordinates per axis: ``{"x": (nx,), "y": (ny,), "z": (nz,)}`` float64 metres."""
        nz, ny, nx = self.shape
        ox, oy, oz = self.origin
        s = self.voxel_size
        return {"x": ox + np.arange(nx) * s, "y": oy + np.arange(ny) * s, "z": oz + np.arange(nz) * s}

    def chunks(self, chunk: int | tuple[int, int, int] = 64) -> Iterator[Region]:
        """Chunk-aligned ``(z, y, x)`` regions covering the grid, ``chunk`` voxels per side (the last
        region along an axis is cut at the grid's edge), in C order."""
        size = (chunk,) * 3 if isinstance(chunk, int | np.integer) else tuple(chunk)
        if len(size) != 3 or min(int(c) for c in size) < 1:
            raise ConfigError(f"chunk must be a positive int or 3 positive ints (z, y, x), got {chunk}")
        starts = [range(0, n, int(c)) for n, c in zip(self.shape, size)]
        for corner in itertools.product(*starts):
            yield tuple(slice(a, min(a + int(c), n)) for a, c, n in zip(corner, size, self.shape))


def scene_bounds(points, weights=None, lo: float = 0.01, hi: float = 0.99, pad: float = 0.0,
                 max_samples: int = _BOUNDS_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """Robust axis-aligned bounds of ``points`` ``[N, 3]``: the per-axis ``lo`` and ``hi`` (weighted)
    quantiles, widened by ``pad`` metres on each side -> (``min [3]``, ``max [3]``) float64.

    Points that are not finite, or whose weight is not > 0, are ignored. Above ``max_samples`` points
    a fixed random subset of that size is used (N can be 10M), which moves a quantile by about
    ``1 / sqrt(max_samples)`` in probability.
    """
    if not 0.0 <= lo < hi <= 1.0:
        raise ConfigError(f"scene_bounds needs 0 <= lo < hi <= 1, got lo={lo}, hi={hi}")
    if not (math.isfinite(pad) and pad >= 0):
        raise ConfigError(f"scene_bounds pad must be >= 0 metres, got {pad}")
    pts = torch.as_tensor(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError(f"scene_bounds points must be [N, 3], got {tuple(pts.shape)}")
    w = None if weights is None else torch.as_tensor(weights, device=pts.device)
    if w is not None and w.shape != pts.shape[:1]:
        raise InputError(f"scene_bounds weights must be [N] = [{len(pts)}], got {tuple(w.shape)}")
    if len(pts) > max_samples:  # subsample before any full-size pass so 10M points stay cheap
        g = torch.Generator().manual_seed(0)
        pick = torch.randint(len(pts), (int(max_samples),), generator=g).to(pts.device)
        pts, w = pts[pick], (None if w is None else w[pick])
    pts = pts.to(torch.float64)
    w = torch.ones(len(pts), dtype=torch.float64, device=pts.device) if w is None else w.to(torch.float64)
    keep = torch.isfinite(pts).all(dim=1) & torch.isfinite(w) & (w > 0)
    pts, w = pts[keep], w[keep]
    if len(pts) == 0:
        raise InputError("scene_bounds got no finite points with weight > 0")
    values, order = pts.sort(dim=0)  # [M, 3] per axis
    cum = w[order].cumsum(dim=0)     # [M, 3] cumulative weight per axis
    q = torch.tensor([lo, hi], dtype=torch.float64, device=pts.device)
    target = q[:, None] * cum[-1]    # [2, 3]
    idx = torch.searchsorted(cum.T.contiguous(), target.T.contiguous()).clamp(max=len(pts) - 1)  # [3, 2]
    bounds = values.gather(0, idx.T)  # [2, 3]: first sorted value whose cumulative weight reaches q
    bounds = bounds.cpu().numpy()
    return bounds[0] - pad, bounds[1] + pad


def make_grid(bounds_min, bounds_max, voxel_size: float | None = None, max_voxels: int = 128,
              max_total: int = 1024**3) -> VolumeGrid:
    """The grid of ``voxel_size`` voxels, centred on the box ``[bounds_min, bounds_max]`` (world
    ``(x, y, z)``) and covering it. ``voxel_size=None`` gives the longest side ``max_voxels`` voxels.
    Raises ``ConfigError`` (a ``ValueError``) for a voxel size <= 0 or a grid above ``max_total`` voxels."""
    bmin = np.asarray(bounds_min, dtype=np.float64).reshape(-1)
    bmax = np.asarray(bounds_max, dtype=np.float64).reshape(-1)
    if bmin.shape != (3,) or bmax.shape != (3,) or not (np.isfinite(bmin).all() and np.isfinite(bmax).all()):
        raise ConfigError(f"grid bounds must be 3 finite numbers each, got {bounds_min} and {bounds_max}")
    if np.any(bmax < bmin):
        raise ConfigError(f"grid bounds_max {bmax.tolist()} is below bounds_min {bmin.tolist()} on some axis")
    extent = bmax - bmin
    if voxel_size is None:
        if int(max_voxels) < 1:
            raise ConfigError(f"max_voxels must be >= 1, got {max_voxels}")
        if extent.max() <= 0:
            raise ConfigError(f"grid bounds are a single point {bmin.tolist()}; give voxel_size explicitly")
        voxel_size = float(extent.max()) / int(max_voxels)
    voxel_size = float(voxel_size)
    if not (math.isfinite(voxel_size) and voxel_size > 0):
        raise ConfigError(f"voxel_size must be finite and > 0, got {voxel_size}")
    # 1e-9 keeps an extent that is an exact multiple of the voxel size from gaining a voxel to rounding
    n = np.maximum(np.ceil(extent / voxel_size - 1e-9), 1).astype(np.int64)  # (nx, ny, nz)
    total = int(np.prod(n, dtype=object))
    if total > max_total:
        raise ConfigError(f"grid of {n[2]} x {n[1]} x {n[0]} (z, y, x) = {total:,} voxels at voxel_size "
                          f"{voxel_size:g} m exceeds max_total={max_total:,}; use larger voxels or smaller bounds")
    origin = (bmin + bmax) / 2 - (n - 1) / 2 * voxel_size
    return VolumeGrid(origin=tuple(origin.tolist()), voxel_size=voxel_size, shape=(int(n[2]), int(n[1]), int(n[0])))


@dataclass(frozen=True)
class _Views:
    """Inputs of ``fuse_chunk`` on one device, prepared once per volume.

    Per-pixel data is padded with a one-pixel border of zeros and flattened to ``(H+2) * (W+2)``
    entries per view: a voxel projecting outside the image (or lying behind the camera) reads the
    border, whose weight 0 means "no observation", so one gather serves every voxel."""

    depth: torch.Tensor     # [S, (H+2)*(W+2)] float32
    weight: torch.Tensor    # [S, (H+2)*(W+2)] float32: conf (or 1) where the pixel has valid depth, else 0
    rgb: torch.Tensor | None  # [S, (H+2)*(W+2), 3] float32 in [0, 1] or None
    size: tuple[int, int]   # (H, W) of the images, without the border
    R: torch.Tensor         # [S, 3, 3] float64
    t: torch.Tensor         # [S, 3] float64
    K: torch.Tensor         # [S, 3, 3] float64
    far: torch.Tensor       # [S] float64: largest valid depth of each view (0 = view has none)

    @property
    def has_rgb(self) -> bool:
        return self.rgb is not None

    @property
    def device(self) -> torch.device:
        return self.depth.device


def _tensor(x, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = torch.as_tensor(x, device=device)
    return t if dtype is None else t.to(dtype)


def _prepare(depth, conf, colors, cam_from_world, intrinsics, min_conf: float) -> _Views:
    device = depth.device if isinstance(depth, torch.Tensor) else torch.device("cpu")
    d = _tensor(depth, device, torch.float32)
    if d.ndim != 3:
        raise InputError(f"depth must be [S, H, W], got {tuple(d.shape)}")
    S, H, W = d.shape
    T = _tensor(cam_from_world, device, torch.float64)
    K = _tensor(intrinsics, device, torch.float64)
    if T.shape not in ((S, 3, 4), (S, 4, 4)):
        raise InputError(f"cam_from_world must be [S, 3, 4] (or [S, 4, 4]) with S={S}, got {tuple(T.shape)}")
    if K.shape != (S, 3, 3):
        raise InputError(f"intrinsics must be [S, 3, 3] with S={S}, got {tuple(K.shape)}")
    if not (torch.isfinite(T).all() and torch.isfinite(K).all()):
        raise InputError("cam_from_world and intrinsics must be finite")
    if not torch.equal(K[:, 2], K.new_tensor([0.0, 0.0, 1.0]).expand(S, 3)):
        raise InputError("intrinsics must be pinhole camera matrices with last row (0, 0, 1)")
    valid = torch.isfinite(d) & (d > 0)
    rgb = None
    if conf is not None:
        c = _tensor(conf, device, torch.float32)
        if c.shape != (S, H, W):
            raise InputError(f"conf must be [S, H, W] = {[S, H, W]}, got {tuple(c.shape)}")
        valid &= torch.isfinite(c) & (c > 0) & (c >= min_conf)  # the confidence is the weight, so > 0
        weight = torch.where(valid, c, 0.0)
    else:
        weight = valid.float()
    if colors is not None:
        col = _tensor(colors, device)
        if col.shape != (S, H, W, 3):
            raise InputError(f"colors must be [S, H, W, 3] = {[S, H, W, 3]} (channels last), got {tuple(col.shape)}")
        col = col.to(torch.float32) / 255.0 if not col.is_floating_point() else col.to(torch.float32)
        rgb = _padded_flat(col)
    depth_clean = torch.where(valid, d, 0.0)
    return _Views(depth=_padded_flat(depth_clean), weight=_padded_flat(weight), rgb=rgb, size=(H, W),
                  R=T[:, :3, :3], t=T[:, :3, 3], K=K, far=depth_clean.amax(dim=(1, 2)).double())


def _padded_flat(x: torch.Tensor) -> torch.Tensor:
    """``[S, H, W, ...]`` -> ``[S, (H+2)*(W+2), ...]``: a border of zeros around each image, flattened."""
    S, H, W = x.shape[:3]
    out = x.new_zeros((S, H + 2, W + 2, *x.shape[3:]))
    out[:, 1:-1, 1:-1] = x
    return out.flatten(1, 2).contiguous()


def _region_bounds(grid: VolumeGrid, region: Region) -> tuple[tuple[int, int], ...]:
    if len(region) != 3:
        raise InputError(f"region must be 3 slices (z, y, x), got {region}")
    out = []
    for sl, n in zip(region, grid.shape):
        start, stop, step = sl.indices(n)
        if step != 1 or stop <= start:
            raise InputError(f"region {region} is empty or strided within grid shape {grid.shape}")
        out.append((start, stop))
    return tuple(out)


def _visible_views(views: _Views, first: torch.Tensor, last: torch.Tensor, truncation: float,
                   voxel_size: float) -> torch.Tensor:
    """Indices of the views whose frustum (cut at their farthest depth + truncation) may contain a
    voxel centre of the box ``[first, last]`` (world, float64). A view is dropped only when all 8
    corners lie outside one of its bounding planes, so the box cannot meet the frustum; the test is
    conservative (it may keep a view that sees none of the box) and has margins for float32 rounding."""
    H, W = views.size
    bits = torch.tensor(list(itertools.product((0.0, 1.0), repeat=3)), dtype=first.dtype, device=first.device)
    corners = first + bits * (last - first)  # [8, 3]
    cam = torch.einsum("sij,cj->sci", views.R, corners) + views.t[:, None]  # [S, 8, 3]
    x, y, z = cam.unbind(-1)
    fx, s, cx = views.K[:, 0, 0, None], views.K[:, 0, 1, None], views.K[:, 0, 2, None]
    fy, cy = views.K[:, 1, 1, None], views.K[:, 1, 2, None]
    m = _CULL_PIXELS
    dz = 1e-4 + 1e-2 * voxel_size  # depth margin for float32 rounding in the per-voxel test
    u_num = fx * x + s * y  # u = u_num / z + cx, so u >= -m  <=>  u_num + (cx + m) z >= 0 when z > 0
    outside = ((z <= 0).all(1) | (z > views.far[:, None] + truncation + dz).all(1)
               | (u_num + (cx + m) * z < 0).all(1) | (u_num + (cx - W - m) * z > 0).all(1)
               | (fy * y + (cy + m) * z < 0).all(1) | (fy * y + (cy - H - m) * z > 0).all(1))
    return torch.nonzero(~outside & (views.far > 0)).flatten()


def _projection_tables(views: _Views, batch: torch.Tensor, origin: torch.Tensor, steps: list[torch.Tensor],
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Homogeneous pixel coordinates ``(a, b, z) = K (R X + t)`` of the voxel centres ``X = origin +
    (steps[0][x], steps[1][y], steps[2][z])`` in the views ``batch``, split by axis: float32
    ``along_z [B, nz, 3]``, ``along_y [B, ny, 3]``, ``along_x [B, nx, 3]`` whose sum is ``(a, b, z)``
    (``u = a / z``, ``v = b / z``; K's last row is (0, 0, 1)). The large part ``K (R origin + t)`` is
    float64, once per view; the rest are float32 sums of numbers the size of the camera distance and
    the grid (times f)."""
    R, t, K = views.R[batch], views.t[batch], views.K[batch]
    KR = K @ R                                                                       # [B, 3, 3]
    base = torch.einsum("bij,bj->bi", K, torch.einsum("bij,j->bi", R, origin) + t)  # [B, 3]
    along_z = (base[:, None] + steps[2][None, :, None] * KR[:, None, :, 2]).float()  # [B, nz, 3]
    along_y = (steps[1][None, :, None] * KR[:, None, :, 1]).float()                 # [B, ny, 3]
    along_x = (steps[0][None, :, None] * KR[:, None, :, 0]).float()                 # [B, nx, 3]
    return along_z, along_y, along_x


def _fuse_region_compiled(grid: VolumeGrid, bounds: tuple[tuple[int, int], ...], views: _Views,
                          truncation: float) -> dict[str, torch.Tensor]:
    """The CPU path: ``model.fusion_cpu``'s compiled loop over the region's voxels and all views."""
    from model import fusion_cpu  # Numba loads on first use: the GPU path and importers never pay for it

    f64 = dict(device=views.device, dtype=torch.float64)
    origin = torch.tensor(grid.origin, **f64)
    steps = [torch.arange(a, b, **f64) * grid.voxel_size for a, b in (bounds[2], bounds[1], bounds[0])]
    # every view (one without valid depth has weight 0 everywhere and adds nothing): the per-pixel
    # arrays are passed as they are, without a copy per region
    tables = [a.numpy() for a in _projection_tables(views, torch.arange(len(views.R)), origin, steps)]
    rgb = None if views.rgb is None else views.rgb.numpy()
    out = fusion_cpu.fuse_region(*tables, views.depth.numpy(), views.weight.numpy(), rgb, views.size, truncation,
                                 threads=torch.get_num_threads())
    return {k: torch.from_numpy(v) for k, v in out.items()}


def _accumulate_block(grid: VolumeGrid, block: tuple[tuple[int, int], ...], views: _Views, truncation: float,
                      view_batch: int, sums: dict[str, torch.Tensor], offset: tuple[int, int, int]) -> None:
    """Add the observations of the voxels ``block`` ((z0, z1), (y0, y1), (x0, x1)), global indices) to
    ``sums``, the region's weighted sums, whose index 0 is the global index ``offset``."""
    (z0, z1), (y0, y1), (x0, x1) = block
    nz, ny, nx = z1 - z0, y1 - y0, x1 - x0
    N = nz * ny * nx
    device = views.device
    H, W = views.size
    vs = grid.voxel_size
    f64 = dict(device=device, dtype=torch.float64)
    origin = torch.tensor(grid.origin, **f64)
    first = origin + torch.tensor([x0, y0, z0], **f64) * vs
    last = origin + torch.tensor([x1 - 1, y1 - 1, z1 - 1], **f64) * vs
    # offsets of the voxel centres from the grid origin, per axis, by global index: every float64 ->
    # float32 rounding below depends on the voxel alone, never on the chunk it is decoded in
    steps = [torch.arange(a, b, **f64) * vs for a, b in ((x0, x1), (y0, y1), (z0, z1))]

    visible = _visible_views(views, first, last, truncation, vs)
    if len(visible) == 0:
        return
    # the block's own contiguous sums (flat voxel index), copied into the region's at the end; every
    # voxel adds its views one at a time in view order, so any chunking gives bit-identical sums
    sum_w = torch.zeros(N, device=device)
    sum_wt = torch.zeros(N, device=device)
    if views.has_rgb:
        sum_wb = torch.zeros(N, device=device)
        sum_wbc = torch.zeros(N, 3, device=device)
    for batch in visible.split(view_batch):
        along_z, along_y, along_x = _projection_tables(views, batch, origin, steps)
        u, v, zc = (
            (along_z[:, :, None, None, i] + along_y[:, None, :, None, i] + along_x[:, None, None, :, i]).flatten(1)
            for i in range(3))                                                          # each [B, N]
        inv_z = zc.reciprocal()
        # nearest pixel: column floor(u), row floor(v) (centres at +0.5), for every channel: a depth
        # discontinuity must not make a fake in-between surface, and weight and colour come from the
        # pixel whose depth is used. Outside the image the clamp lands on the zero border (-1 or W);
        # behind the camera, or too near its plane for 1 / z (z <= 1e-20, where u and v may be anything,
        # even NaN), the where does.
        u.mul_(inv_z).floor_().clamp_(-1.0, W)
        v.mul_(inv_z).floor_().clamp_(-1.0, H)
        pix = torch.where(zc > 1e-20, v.mul_(W + 2).add_(u).add_(W + 3), 0.0).long()  # (v+1)(W+2) + (u+1)
        depth = torch.gather(views.depth[batch], 1, pix)
        sdf = depth.sub_(zc)  # signed distance along the optical axis
        # observed: a pixel with valid depth (weight > 0 there) and at most truncation behind it
        w = torch.gather(views.weight[batch], 1, pix).mul_(sdf >= -truncation)
        tsdf = (sdf * (1.0 / truncation)).clamp_(-1.0, 1.0)  # finite everywhere; w = 0 where not observed
        for i in range(len(batch)):
            sum_w += w[i]
            sum_wt.addcmul_(w[i], tsdf[i])
        if views.has_rgb:  # colour only from observations near a surface: a thin, sparse band
            vi, ni = (tsdf.abs() < 1.0).nonzero(as_tuple=True)  # sorted by view, then voxel
            wn = w[vi, ni]
            keep = wn > 0
            vi, ni, wn = vi[keep], ni[keep], wn[keep]
            # accumulate=True adds serially in index order, i.e. per voxel in view order, like the sums above
            sum_wb.index_put_((ni,), wn, accumulate=True)
            sum_wbc.index_put_((ni,), wn[:, None] * views.rgb[batch[vi], pix[vi, ni]], accumulate=True)
    bz, by, bx = (slice(a - o, b - o) for (a, b), o in zip(block, offset))
    sums["w"][bz, by, bx] = sum_w.view(nz, ny, nx)
    sums["wt"][bz, by, bx] = sum_wt.view(nz, ny, nx)
    if views.has_rgb:
        sums["wb"][bz, by, bx] = sum_wb.view(nz, ny, nx)
        sums["wbc"][bz, by, bx] = sum_wbc.view(nz, ny, nx, 3)


def _fuse_region(grid: VolumeGrid, region: Region, views: _Views, truncation: float, view_batch: int,
                 kernel: str = "auto") -> dict[str, torch.Tensor]:
    bounds = _region_bounds(grid, region)
    if kernel == "compiled" or (kernel == "auto" and views.device.type == "cpu"):
        if views.device.type != "cpu":
            raise ConfigError(f"the compiled fusion kernel runs on the CPU only, got inputs on {views.device}")
        return _fuse_region_compiled(grid, bounds, views, truncation)
    nz, ny, nx = (b - a for a, b in bounds)
    device = views.device
    sums = {"w": torch.zeros(nz, ny, nx, device=device), "wt": torch.zeros(nz, ny, nx, device=device)}
    if views.has_rgb:
        sums["wb"] = torch.zeros(nz, ny, nx, device=device)      # weight of the observations inside the band
        sums["wbc"] = torch.zeros(nz, ny, nx, 3, device=device)  # their weighted colour
    # views are culled per block: the finer the test, the more (block, view) pairs it skips (the result
    # does not depend on the blocks)
    offset = tuple(a for a, _ in bounds)
    side = _block_size(device)
    for corner in itertools.product(*(range(a, b, side) for a, b in bounds)):
        block = tuple((c, min(c + side, b)) for c, (_, b) in zip(corner, bounds))
        _accumulate_block(grid, block, views, truncation, view_batch, sums, offset)

    sum_w, sum_wt = sums["w"], sums["wt"]
    observed = sum_w > 0
    safe_w = torch.where(observed, sum_w, 1.0)
    out = {"tsdf": torch.where(observed, (sum_wt / safe_w).clamp(-1.0, 1.0), torch.nan),
           "weight": sum_w}
    if views.has_rgb:
        # colour from the observations near the surface only: a voxel seen only as free space (tsdf = 1)
        # would otherwise take the colour of whatever lies behind it
        sum_wb = sums["wb"][..., None]
        colour = torch.where(sum_wb > 0, sums["wbc"] / torch.where(sum_wb > 0, sum_wb, 1.0), 0.0)
        out["rgb"] = (colour.clamp(0, 1) * 255).round().to(torch.uint8)
    return out


KERNELS = ("auto", "compiled", "tensor")


def _check_fusion_args(truncation: float, view_batch: int, kernel: str = "auto") -> None:
    if kernel not in KERNELS:
        raise ConfigError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if not (math.isfinite(truncation) and truncation > 0):
        raise ConfigError(f"truncation must be finite and > 0 metres, got {truncation}")
    if int(view_batch) < 1:
        raise ConfigError(f"view_batch must be >= 1, got {view_batch}")


def fuse_chunk(grid: VolumeGrid, region: Region, depth, conf, colors, cam_from_world, intrinsics,
               truncation: float, min_conf: float = 0.0, view_batch: int = 8, kernel: str = "auto",
               ) -> dict[str, torch.Tensor]:
    """TSDF of one ``(z, y, x)`` region of ``grid`` from ``S`` depth maps.

    Inputs (numpy or torch; computed on ``depth``'s device if it is a tensor, else on the CPU):
    ``depth [S, H, W]`` z-depth in metres (0 = no data), ``conf [S, H, W]`` or None (the per-view
    weight; pixels with conf < ``min_conf`` or conf <= 0 are ignored), ``colors [S, H, W, 3]`` uint8
    or float in [0, 1] or None, ``cam_from_world [S, 3, 4]`` (OpenCV, world -> camera),
    ``intrinsics [S, 3, 3]`` in pixels (pixel centres at +0.5). ``truncation`` is in metres.

    A view observes a voxel when the voxel centre is in front of the camera, projects inside the
    image onto a pixel with depth, and lies at most ``truncation`` behind that depth.

    ``kernel``: ``"auto"`` (default) runs the compiled loop of ``model.fusion_cpu`` on the CPU (on
    ``torch.get_num_threads()`` threads; ~4x faster there, compiled once per machine in ~2 s and cached)
    and the tensor code on other devices; ``"compiled"`` or ``"tensor"`` pick one (the compiled loop
    is CPU only). The two give the same observations and weights, and the TSDF up to float32
    summation order (``tests/model/test_fusion.py``). The tensor code decodes blocks of at most 128^3
    voxels on a GPU (32^3 on the CPU), ``view_batch`` views at a time, so temporary memory is about
    ``view_batch x 3`` MB (x 64 on a GPU) plus 24 bytes per voxel of the region (its sums); the
    compiled loop needs only the region's outputs. The result does not depend on the region's size,
    ``view_batch`` or the thread count: any chunking gives bit-identical voxels (on the CPU; on CUDA the
    colour sums are atomic adds, equal up to float32 rounding).

    Returns, on the input device, ``tsdf [z, y, x]`` float32 in [-1, 1] (positive in front of the
    surface, NaN where unobserved), ``weight [z, y, x]`` float32 (sum of the weights of the observing
    views) and, if ``colors`` is given, ``rgb [z, y, x, 3]`` uint8: the weighted mean colour of the
    observations within the truncation band (0 where there is none: unobserved voxels and voxels seen
    only as free space, ``tsdf == 1``; every voxel with ``tsdf < 1`` has such an observation).
    """
    _check_fusion_args(truncation, view_batch, kernel)
    views = _prepare(depth, conf, colors, cam_from_world, intrinsics, min_conf)
    return _fuse_region(grid, region, views, float(truncation), int(view_batch), kernel)


def fuse_volume(grid: VolumeGrid, depth, conf, colors, cam_from_world, intrinsics, truncation: float,
                min_conf: float = 0.0, view_batch: int = 8, chunk: int | tuple[int, int, int] = 64,
                on_chunk: Callable[[Region, dict[str, np.ndarray]], None] | None = None, kernel: str = "auto",
                ) -> dict[str, np.ndarray] | None:
    """``fuse_chunk`` over ``grid.chunks(chunk)``, with the same inputs (``kernel`` too) and outputs as
    numpy arrays.

    With ``on_chunk``, each region's arrays are handed to ``on_chunk(region, arrays)`` (e.g. written
    into a Zarr array with chunks of the same size) and nothing is returned, so the volume is never
    held; without it the full ``tsdf``, ``weight`` (and ``rgb``) arrays are assembled and returned.
    """
    _check_fusion_args(truncation, view_batch, kernel)
    views = _prepare(depth, conf, colors, cam_from_world, intrinsics, min_conf)
    full = None
    if on_chunk is None:
        full = {"tsdf": np.full(grid.shape, np.nan, dtype=np.float32),
                "weight": np.zeros(grid.shape, dtype=np.float32)}
        if views.has_rgb:
            full["rgb"] = np.zeros((*grid.shape, 3), dtype=np.uint8)
    for region in grid.chunks(chunk):
        arrays = {k: v.cpu().numpy() for k, v in _fuse_region(grid, region, views, float(truncation),
                                                              int(view_batch), kernel).items()}
        if on_chunk is not None:
            on_chunk(region, arrays)
        else:
            for k, v in arrays.items():
                full[k][region] = v
    return full


def zero_crossings(tsdf: np.ndarray, grid: VolumeGrid, weight: np.ndarray | None = None) -> np.ndarray:
    """World points ``[M, 3]`` (x, y, z) float64 where ``tsdf`` ``[z, y, x]`` changes sign between
    two neighbouring observed voxels along x, y or z, placed by linear interpolation.

    Unobserved voxels (NaN, or ``weight <= 0`` when ``weight`` is given) and pairs that are both
    truncated (``|tsdf| == 1``: a jump from free space to behind a surface, not a measured surface)
    give no point. A voxel at exactly 0 counts as positive, so it yields one point, not two.
    """
    values = np.asarray(tsdf, dtype=np.float32)
    if values.shape != grid.shape:
        raise InputError(f"tsdf shape {values.shape} does not match grid shape {grid.shape}")
    if weight is not None:
        weight = np.asarray(weight)
        if weight.shape != grid.shape:
            raise InputError(f"weight shape {weight.shape} does not match grid shape {grid.shape}")
        values = np.where(weight > 0, values, np.nan)
    found = []
    for axis in range(3):
        head = tuple(slice(None, -1) if i == axis else slice(None) for i in range(3))
        tail = tuple(slice(1, None) if i == axis else slice(None) for i in range(3))
        a, b = values[head], values[tail]
        with np.errstate(invalid="ignore"):  # NaN compares False, so unobserved pairs drop out here
            cross = ((a >= 0) & (b < 0)) | ((a < 0) & (b >= 0))
            cross &= (np.abs(a) < 1) | (np.abs(b) < 1)
        idx = np.nonzero(cross)
        va, vb = a[idx].astype(np.float64), b[idx].astype(np.float64)
        pos = np.stack(idx, axis=1).astype(np.float64)  # [m, 3] (z, y, x) index of the first voxel
        pos[:, axis] += va / (va - vb)
        found.append(pos)
    zyx = np.concatenate(found)
    return np.asarray(grid.origin, dtype=np.float64) + zyx[:, ::-1] * grid.voxel_size
