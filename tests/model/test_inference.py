"""The zip pass: view preparation (sizes, intrinsics), memory-driven streaming, one model per process."""

import numpy as np
import torch

from model.config import get_config
from model.inference import get_model, input_size, offline_frame_limit, prepare_views, zip_collection
from model.zipmap import ZipMap


def test_prepare_views_adjusts_intrinsics_for_resize_and_crop():
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 255, (100, 200, 3), dtype=np.uint8)  # 1:2
    tall = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)  # 3:4
    K = np.array([[[150.0, 0, 100], [0, 150, 50], [0, 0, 1]], [[100.0, 0, 80], [0, 100, 60], [0, 0, 1]]])
    cfg = get_config("city")
    views = prepare_views((wide, tall), K, cfg)
    h, w = input_size([(100, 200), (120, 160)], cfg)
    assert views.images.shape == (2, 3, h, w) and h % 14 == 0 and w == 168
    for k, (H, W) in enumerate([(100, 200), (120, 160)]):
        s = max(h / H, w / W)  # cover, then centre-crop
        rh, rw = max(h, round(H * s)), max(w, round(W * s))
        x0, y0 = (rw - w) // 2, (rh - h) // 2
        np.testing.assert_allclose(views.intrinsics[k, 0, 0], K[k, 0, 0] * rw / W)
        np.testing.assert_allclose(views.intrinsics[k, 0, 2], K[k, 0, 2] * rw / W - x0)
        np.testing.assert_allclose(views.intrinsics[k, 1, 2], K[k, 1, 2] * rh / H - y0)
    # a centred principal point stays centred in the network's image
    np.testing.assert_allclose(views.intrinsics[:, 0, 2], w / 2)
    np.testing.assert_allclose(views.intrinsics[:, 1, 2], h / 2)


def test_streaming_when_memory_is_short():
    torch.manual_seed(0)
    model = ZipMap(get_config("tiny_ref_view")).eval()
    views = prepare_views(tuple(np.zeros((4, 28, 42, 3), np.uint8)), None, model.cfg)
    h, w = views.images.shape[-2:]
    assert offline_frame_limit(model, h, w, available=1 << 40) > 1000
    limit = offline_frame_limit(model, h, w, available=2)
    assert limit == 1
    assert zip_collection(model, views, max_offline_frames=limit).mode == "streaming (window 1)"
    assert zip_collection(model, views).mode == "offline"


def test_model_loaded_once_per_process():
    assert get_model(device="cpu") is get_model(device="cpu")
