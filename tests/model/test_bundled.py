"""The checkpoint shipped in the package: it loads (sha256 checked) and beats the trivial baseline
on two generated collections from held-out seeds."""

import pytest

from model.evaluation.evaluate import evaluate
from model.synthetic import write_collection
from model.training.loop import HELD_OUT_SEED_START
from model.weights import BUNDLED_DIR, BUNDLED_NAME, bundled_checkpoint, load_zipmap
from storage.collection import read_collection

# Metrics on which the bundled model must beat the baseline (see docs/model-card.md for all of them).
MUST_BEAT = {"depth_abs_rel": "lower", "depth_delta1": "higher", "auc_30": "higher", "rta_15": "higher",
             "chamfer": "lower"}


def test_bundled_checkpoint_is_small_and_verified():
    path = bundled_checkpoint()
    assert (BUNDLED_DIR / BUNDLED_NAME).stat().st_size < 50 * 2**20
    model = load_zipmap(path)
    assert model.cfg.img_size == 168 and not model.training


def test_bundled_model_beats_the_baseline(tmp_path):
    urls = [write_collection(str(tmp_path / kind), HELD_OUT_SEED_START + 500 + i, kind, 16, 112, 168)
            for i, kind in enumerate(("orbit", "aerial"))]
    report = evaluate(load_zipmap(bundled_checkpoint()), [read_collection(u) for u in urls])
    ours, base = report["overall"], report["baseline"]["overall"]
    for key, better in MUST_BEAT.items():
        assert (ours[key] > base[key]) if better == "higher" else (ours[key] < base[key]), (key, ours, base)


def test_tampered_checkpoint_is_refused(tmp_path, monkeypatch):
    import shutil

    import model.weights as weights
    from errors import CheckpointError

    for suffix in (".safetensors", ".json", ".sha256"):
        shutil.copy(BUNDLED_DIR / BUNDLED_NAME.replace(".safetensors", suffix), tmp_path / BUNDLED_NAME.replace(
            ".safetensors", suffix))
    with open(tmp_path / BUNDLED_NAME, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    monkeypatch.setattr(weights, "BUNDLED_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="sha256"):
        weights.bundled_checkpoint()
