"""Synthetic city blocks: determinism, exact depth across views, camera paths, collection folders."""

import dataclasses
import io
import json

import fsspec
import numpy as np
import pytest
from PIL import Image

from errors import InputError
from model.synthetic import (
    PATH_KINDS,
    cast_rays,
    generate_sample,
    look_at,
    make_path,
    make_scene,
    render,
    render_depth,
    solid_at,
    write_collection,
)
from model.synthetic.__main__ import main as cli_main


@pytest.fixture(scope="module")
def scene():
    return make_scene(0)


def _centre(cam):
    return -cam[:, :3].T @ cam[:, 3]


def test_scene_is_deterministic_and_within_spec():
    a, b, c = make_scene(3), make_scene(3), make_scene(4)
    for field in dataclasses.fields(a):
        assert np.array_equal(getattr(a, field.name), getattr(b, field.name)), field.name
    assert any(not np.array_equal(getattr(a, f.name), getattr(c, f.name)) for f in dataclasses.fields(a))
    with pytest.raises(ValueError):
        a.box_center[0, 0] = 1.0  # arrays are read-only
    for s in (a, c, make_scene(5)):
        building = s.box_building
        assert 4 <= building.sum() <= 12
        assert np.all((s.box_half[building, :2] >= 3) & (s.box_half[building, :2] <= 15))
        assert np.all((s.box_half[building, 2] >= 3) & (s.box_half[building, 2] <= 30))
        assert np.all(s.extent[0] <= s.box_center.min(0)) and np.all(s.extent[1] >= s.box_center.max(0))
    with pytest.raises(InputError, match="'moon'"):
        make_scene(0, "moon")


def test_render_is_deterministic(scene):
    cam, K = make_path(scene, "street", 1, 0, 32, 40)[0]
    rgb, depth = render(scene, cam, K, 32, 40)
    rgb2, depth2 = render(make_scene(0), cam, K, 32, 40)
    assert rgb.shape == (32, 40, 3) and depth.shape == (32, 40)
    assert rgb.dtype == depth.dtype == np.float32
    assert np.array_equal(rgb, rgb2) and np.array_equal(depth, depth2)
    assert rgb.min() >= 0 and rgb.max() <= 1 and rgb.std() > 0.05
    rgb3, depth3 = render(make_scene(1), cam, K, 32, 40)
    assert not np.array_equal(rgb, rgb3) and not np.array_equal(depth, depth3)


def test_look_at_gives_opencv_axes():
    cam = look_at([1.0, 2.0, 1.5], [11.0, 2.0, 1.5])  # looking along world +x, horizontally
    R = cam[:, :3]
    np.testing.assert_allclose(R, [[0, -1, 0], [0, 0, -1], [1, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(_centre(cam), [1.0, 2.0, 1.5], atol=1e-12)
    above = cam[:, :3] @ np.array([6.0, 2.0, 3.0]) + cam[:, 3]
    assert above[2] > 0 and above[1] < 0  # in front, and higher in the world = up in the image
    with pytest.raises(InputError):
        look_at([0, 0, 5], [0, 0, 0])  # straight down needs another "up"


def test_straight_down_sees_exact_heights(scene):
    empty = make_scene(0, "empty")
    h = 7.25
    cam = look_at([3.0, -2.0, h], [3.0, -2.0, 0.0], up=(0, 1, 0))
    assert np.isclose(np.linalg.det(cam[:, :3]), 1.0)
    K = np.array([[30.0, 0, 20], [0, 30.0, 15], [0, 0, 1]])
    _, depth = render(empty, cam, K, 30, 40)
    np.testing.assert_allclose(depth, h, rtol=1e-6)
    # Over a flat roof (a building with no dome), every pixel sees the roof 5 m below.
    domes = scene.sphere_center[scene.sphere_dome]
    i = next(k for k in np.flatnonzero(scene.box_building)
             if np.all(np.linalg.norm(domes[:, :2] - scene.box_center[k, :2], axis=1) > 20))
    top = 2 * scene.box_half[i, 2]
    centre = scene.box_center[i]
    cam = look_at([centre[0], centre[1], top + 5], [centre[0], centre[1], 0.0], up=(0, 1, 0))
    narrow = np.array([[200.0, 0, 8], [0, 200.0, 8], [0, 0, 1]])  # 16 px over 2.3 degrees: 0.2 m of roof
    _, depth = render(scene, cam, narrow, 16, 16)
    np.testing.assert_allclose(depth, 5.0, rtol=1e-6)


@pytest.mark.parametrize("kind", ["orbit", "handheld"])
def test_depth_agrees_exactly_across_views(scene, kind):
    frames = make_path(scene, kind, 8, 2, 48, 64)
    (cam_a, K_a), (cam_b, K_b) = frames[0], frames[2]
    H, W = 48, 64
    depth_a = render(scene, cam_a, K_a, H, W)[1].astype(np.float64)
    v, u = np.nonzero(depth_a > 0)
    z = depth_a[v, u]
    cam_pts = np.stack([(u + 0.5 - K_a[0, 2]) / K_a[0, 0] * z, (v + 0.5 - K_a[1, 2]) / K_a[1, 1] * z, z], 1)
    world = (cam_pts - cam_a[:, 3]) @ cam_a[:, :3]  # R^T (X - t)
    in_b = world @ cam_b[:, :3].T + cam_b[:, 3]
    proj = in_b @ K_b.T
    ub, vb = proj[:, 0] / proj[:, 2] - 0.5, proj[:, 1] / proj[:, 2] - 0.5  # back to integer-centre pixels
    inside = (in_b[:, 2] > 0) & (ub > -0.5) & (ub < W - 0.5) & (vb > -0.5) & (vb < H - 0.5)
    assert inside.mean() > 0.3
    # B's exact ray through each projected point: its first hit is the point itself unless occluded.
    centre_b = _centre(cam_b)
    t = cast_rays(scene, centre_b, world[inside] - centre_b)  # the point sits at t = 1
    visible = t > 1 - 1e-3
    assert visible.mean() > 0.3
    rel_err = np.abs(t[visible] - 1.0)  # = relative error of B's z-depth of the point
    assert (rel_err < 1e-4).mean() > 0.95
    # The rendered depth of B at the nearest pixel agrees up to the sub-pixel offset.
    depth_b = render(scene, cam_b, K_b, H, W)[1]
    near = depth_b[np.round(vb[inside][visible]).astype(int), np.round(ub[inside][visible]).astype(int)]
    assert np.median(np.abs(near - in_b[inside][visible, 2]) / in_b[inside][visible, 2]) < 0.01


@pytest.mark.parametrize("kind", PATH_KINDS)
def test_paths_are_valid(scene, kind):
    H, W = 48, 64
    frames = make_path(scene, kind, 6, 1, H, W)
    again = make_path(scene, kind, 6, 1, H, W)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(frames, again))
    assert not np.array_equal(frames[0][0], make_path(scene, kind, 6, 2, H, W)[0][0])
    cams = np.stack([c for c, _ in frames])
    K = frames[0][1]
    assert cams.shape == (6, 3, 4) and cams.dtype == np.float64
    R = cams[:, :, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-10)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-10)
    assert K[0, 2] == W / 2 and K[1, 2] == H / 2 and K[0, 0] == K[1, 1]
    assert 50 <= np.degrees(2 * np.arctan(W / 2 / K[0, 0])) <= 80
    assert all(np.array_equal(k, K) for _, k in frames)
    centres = np.stack([_centre(c) for c in cams])
    assert not solid_at(scene, centres).any()
    for cam in cams:
        assert (render_depth(scene, cam, K, H, W) == 0).mean() <= 0.6
    forward = R[:, 2]  # optical axes in world coordinates
    step = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    if kind == "street":
        assert np.all((centres[:, 2] >= 1.5) & (centres[:, 2] <= 1.8))
        assert np.all((step >= 0.5 - 1e-9) & (step <= 2 + 1e-9))
    elif kind == "handheld":
        assert np.all((centres[:, 2] >= 1.3) & (centres[:, 2] <= 2.0))
    elif kind == "aerial":
        assert np.all((centres[:, 2] >= 40) & (centres[:, 2] <= 120))
        pitch = np.degrees(np.arcsin(-forward[:, 2]))
        assert np.all((pitch >= 30 - 1e-9) & (pitch <= 70 + 1e-9))
    else:  # orbit: every optical axis passes through one target, 10-40 m away horizontally, over >= 60 degrees
        assert np.all((centres[:, 2] >= 2) & (centres[:, 2] <= 20))
        P = np.eye(3) - forward[:, :, None] * forward[:, None, :]  # projectors orthogonal to each axis
        target = np.linalg.solve(P.sum(0), (P @ centres[:, :, None]).sum(0))[:, 0]
        assert np.abs((P @ (target - centres)[:, :, None])[..., 0]).max() < 1e-6
        radius = np.linalg.norm(centres[:, :2] - target[:2], axis=1)
        assert np.all((radius >= 10 - 1e-6) & (radius <= 40 + 1e-6)) and np.ptp(radius) < 1e-6
        angles = np.unwrap(np.arctan2(*(centres[:, :2] - target[:2]).T[::-1]))
        assert 60 - 1e-6 <= np.degrees(abs(angles[-1] - angles[0])) <= 270 + 1e-6


def test_unknown_or_bad_path_requests_raise(scene):
    with pytest.raises(InputError, match="'drone'"):
        make_path(scene, "drone", 4, 0, 32, 32)
    with pytest.raises(InputError, match="num_frames"):
        make_path(scene, "street", 0, 0, 32, 32)
    with pytest.raises(InputError, match="cam_from_world"):
        render(scene, np.eye(3), np.eye(3), 8, 8)


def test_write_collection_round_trips(tmp_path):
    H, W, S = 28, 42, 3
    sample = generate_sample(2, "handheld", S, H, W)
    assert sample["images"].shape == (S, 3, H, W) and sample["images"].dtype == np.float32
    assert sample["depth"].shape == (S, H, W) and sample["depth"].dtype == np.float32
    assert sample["cam_from_world"].shape == (S, 3, 4) and sample["intrinsics"].shape == (S, 3, 3)
    out = tmp_path / "collection"
    assert write_collection(str(out), 2, "handheld", S, H, W) == str(out)
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert names == ["cameras.json"] + [f"depth/{i:03d}.npy" for i in range(S)] + [
        f"images/{i:03d}.png" for i in range(S)]
    meta = json.loads((out / "cameras.json").read_text())
    assert meta["version"] == 1 and meta["units"] == "m" and meta["crs"] is None and len(meta["frames"]) == S
    for i, frame in enumerate(meta["frames"]):
        assert set(frame) == {"image", "width", "height", "fx", "fy", "cx", "cy", "world_to_camera"}
        assert frame["image"] == f"images/{i:03d}.png" and (frame["width"], frame["height"]) == (W, H)
        K = sample["intrinsics"][i]
        assert [frame["fx"], frame["fy"], frame["cx"], frame["cy"]] == [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]
        w2c = np.array(frame["world_to_camera"])
        assert np.array_equal(w2c[:3], sample["cam_from_world"][i]) and np.array_equal(w2c[3], [0, 0, 0, 1])
        with Image.open(out / frame["image"]) as im:
            assert im.mode == "RGB" and im.size == (W, H)
            png = np.asarray(im, np.float32).transpose(2, 0, 1) / 255
        assert np.abs(png - sample["images"][i]).max() <= 0.5 / 255 + 1e-6
        depth = np.load(out / f"depth/{i:03d}.npy")
        assert depth.dtype == np.float32 and np.array_equal(depth, sample["depth"][i])


def test_cli_and_s3(tmp_path, capsys, s3_bucket):
    cli_main([str(tmp_path / "cli"), "--seed", "1", "--path", "aerial", "--frames", "2", "--size", "14", "28"])
    assert str(tmp_path / "cli") in capsys.readouterr().out
    assert len(json.loads((tmp_path / "cli" / "cameras.json").read_text())["frames"]) == 2
    bucket, opts = s3_bucket
    url = f"s3://{bucket}/synthetic/c1"
    write_collection(url, 1, "aerial", 2, 14, 28, storage_options=opts)
    fs = fsspec.filesystem("s3", **opts)
    assert sorted(p.split("/c1/")[1] for p in fs.find(f"{bucket}/synthetic/c1")) == [
        "cameras.json", "depth/000.npy", "depth/001.npy", "images/000.png", "images/001.png"]
    local = np.asarray(Image.open(tmp_path / "cli" / "images" / "001.png"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(fs.cat(f"{bucket}/synthetic/c1/images/001.png")))), local)


def test_orbit_step_cap_bounds_the_turn_between_frames():
    def steps(**kw):
        R = generate_sample(21, "orbit", 4, 28, 42, **kw)["cam_from_world"][:, :3, :3]
        return [float(np.degrees(np.arccos(np.clip((np.trace(R[i + 1] @ R[i].T) - 1) / 2, -1, 1)))) for i in range(3)]

    free, capped = steps(), steps(max_orbit_step_deg=10.0)
    assert min(free) > 19.0  # an uncapped arc of >= 60 degrees over 3 steps
    # the cameras look at a fixed target from one height, so the turn is the azimuth step
    np.testing.assert_allclose(capped, 10.0, atol=1e-6)
    with pytest.raises(InputError, match="max_orbit_step_deg"):
        generate_sample(21, "orbit", 4, 28, 42, max_orbit_step_deg=0.0)


def _assert_same_images(a, b):
    """The compiled loop and the numpy arrays compute the same float64 formulas in the same order;
    allow a few pixels to differ by rounding in library functions (sin, pow) on other CPUs."""
    (rgb_a, depth_a), (rgb_b, depth_b) = a, b
    assert rgb_a.dtype == rgb_b.dtype == depth_a.dtype == depth_b.dtype == np.float32
    depth_off = ~np.isclose(depth_a, depth_b, rtol=1e-6, atol=0)
    rgb_off = ~np.isclose(rgb_a, rgb_b, rtol=0, atol=1e-5).all(-1)
    assert depth_off.mean() <= 1e-3 and rgb_off.mean() <= 1e-3, (depth_off.sum(), rgb_off.sum())
    assert np.array_equal(depth_a > 0, depth_b > 0) or (np.logical_xor(depth_a > 0, depth_b > 0).mean() <= 1e-3)


@pytest.mark.parametrize("seed,kind", [(0, "street"), (1, "orbit"), (2, "aerial"), (3, "handheld")])
def test_compiled_renderer_matches_numpy(seed, kind):
    scene = make_scene(seed)
    for cam, K in make_path(scene, kind, 3, seed, 56, 84):
        _assert_same_images(render(scene, cam, K, 56, 84, engine="compiled"),
                            render(scene, cam, K, 56, 84, engine="numpy"))


def test_compiled_renderer_edge_cases(scene):
    """Rays with exact zero components (the slab and cylinder special cases), a camera inside a canopy's
    bounding sphere, an empty scene, and cast_rays / render_depth through both engines."""
    K = np.array([[20.0, 0, 12.5], [0, 20.0, 8.5], [0, 0, 1]])  # odd sizes: the centre ray is axis-aligned
    down = look_at(np.array([3.0, 2.0, 40.0]), np.array([3.0, 2.0, 0.0]), up=np.array([0.0, 1.0, 0.0]))
    along = look_at(np.array([-30.0, 0.0, 1.6]), np.array([30.0, 0.0, 1.6]))
    canopy = scene.sphere_center[np.argmax(scene.sphere_radius)]
    inside = look_at(canopy + np.array([0.2, 0.1, 0.0]), canopy + np.array([5.0, 1.0, 0.0]))
    for cam in (down, along, inside):
        _assert_same_images(render(scene, cam, K, 17, 25, engine="compiled"),
                            render(scene, cam, K, 17, 25, engine="numpy"))
    empty = make_scene(0, "empty")
    _assert_same_images(render(empty, along, K, 17, 25), render(empty, along, K, 17, 25, engine="numpy"))
    dirs = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.3, -0.2, -0.1]])
    origin = np.array([1.0, 2.0, 1.5])
    np.testing.assert_allclose(cast_rays(scene, origin, dirs), cast_rays(scene, origin, dirs, engine="numpy"),
                               rtol=1e-9)
    np.testing.assert_allclose(render_depth(scene, down, K, 17, 25),
                               render_depth(scene, down, K, 17, 25, engine="numpy"), rtol=1e-9)
    with pytest.raises(InputError, match="render engine"):
        render(scene, down, K, 4, 4, engine="cuda")
