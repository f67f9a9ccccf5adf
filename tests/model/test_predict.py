"""Photos -> predictions: image preprocessing and the predict command."""

import numpy as np
import pytest
import torch
from PIL import Image

from errors import InputError
from model import ZipMap, get_config
from model.images import image_files, load_images, preprocess
from model.predict import main
from model.weights import save_checkpoint


def _photo(path, size=(300, 200), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_preprocess_sizes():
    assert preprocess(Image.new("RGB", (1024, 768))).shape == (3, 392, 518)
    assert preprocess(Image.new("L", (400, 900)), width=518).shape == (3, 518, 518)  # portrait: centre crop
    x = preprocess(Image.new("RGB", (64, 64), (255, 0, 0)), width=28)
    assert x.shape == (3, 28, 28) and x[0].min() == 1 and x[1].max() == 0


def test_bad_image_is_named(tmp_path):
    good = _photo(tmp_path / "a.png")
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(InputError, match="b.jpg: not a readable image"):
        load_images([good, bad])
    (tmp_path / "notes.txt").write_text("x")
    assert image_files(tmp_path) == [good, bad]


def test_predict_command(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        _photo(folder / f"{i:03d}.png", seed=i)
    torch.manual_seed(0)
    ckpt = save_checkpoint(ZipMap(get_config("tiny")), str(tmp_path / "tiny.safetensors"))
    out = tmp_path / "pred.npz"
    assert main(["--checkpoint", ckpt, "--images", str(folder), "--out", str(out)]) == 0
    pred = np.load(out)
    S, H, W = 3, 350, 518
    assert pred["images"].shape == (S, 3, H, W)
    assert pred["depth"].shape == (S, H, W) and pred["depth_conf"].shape == (S, H, W)
    assert pred["local_points"].shape == pred["world_points"].shape == (S, H, W, 3)
    assert pred["cam_from_world"].shape == (S, 3, 4) and pred["intrinsics"].shape == (S, 3, 3)
    np.testing.assert_allclose(pred["intrinsics"][:, 0, 2], W / 2)
