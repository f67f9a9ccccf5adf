"""Photos -> predictions: ``zipmap predict`` through the storage decoder and the one inference path."""

import numpy as np
import pytest
import torch
from PIL import Image

from cli import main
from model import ZipMap, get_config
from model.weights import save_checkpoint


def _photo(path, size=(300, 200), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(ZipMap(get_config("tiny")), str(tmp_path / "tiny.safetensors"))


def test_predict_command(tmp_path, tiny_checkpoint):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        _photo(folder / f"{i:03d}.png", seed=i)
    (folder / "notes.txt").write_text("not a photo")
    out = tmp_path / "pred.npz"
    assert main(["predict", "--weights", tiny_checkpoint, "--images", str(folder), "--out", str(out)]) == 0
    pred = np.load(out)
    S, H, W = 3, 42, 56  # tiny: 56 px wide (its img_size), 2:3 aspect -> 37.3 rows -> 42 (multiple of 14)
    assert pred["images"].shape == (S, 3, H, W)
    assert pred["depth"].shape == (S, H, W) and pred["depth_conf"].shape == (S, H, W)
    assert pred["local_points"].shape == pred["world_points"].shape == (S, H, W, 3)
    assert pred["cam_from_world"].shape == (S, 3, 4) and pred["intrinsics"].shape == (S, 3, 3)
    np.testing.assert_allclose(pred["intrinsics"][:, 0, 2], W / 2)
    # --checkpoint is the same option
    assert main(["predict", "--checkpoint", tiny_checkpoint, "--images", str(folder / "000.png"),
                 "--out", str(tmp_path / "one.npz")]) == 0
    assert np.load(tmp_path / "one.npz")["depth"].shape == (1, H, W)


def test_bad_image_is_named(tmp_path, tiny_checkpoint, capsys):
    good = _photo(tmp_path / "a.png")
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    assert main(["predict", "--weights", tiny_checkpoint, "--images", str(good), str(bad),
                 "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "b.jpg" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.npz").exists()


def test_old_module_command_points_to_the_new_one(capsys):
    from model.predict import main as old_main

    assert old_main([]) == 2 and "zipmap predict" in capsys.readouterr().err
