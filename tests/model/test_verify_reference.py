"""The verifier itself: any frame count and image size, every mode, and it fails when it should.

Fixtures are made here at a tiny size from our own network filled by the reference rule; the
official-size parity against the published reference is tests/model/test_reference.py.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT

from model import get_config
from model.verify_reference import run_fixture, write_filled_checkpoint
from model.weights import load_zipmap

SEED = 7


def _make_fixture(tmp_path, case, preset, S, H, W, extra):
    ckpt = tmp_path / "w.safetensors"
    write_filled_checkpoint(get_config(preset, ns_dtype="input"), SEED, ckpt)
    model = load_zipmap(str(ckpt), get_config(preset, ns_dtype="input"), dtype=torch.float64)
    g = np.random.default_rng(0)
    data = {"case": np.array(case), "seed": np.array(SEED), "images": g.random((1, S, 3, H, W)), **extra}
    data.update({f"state.1.w{j}.vec": g.standard_normal(model.cfg.ttt_hidden_dim if j != 1 else model.cfg.ttt_head_dim)
                 for j in range(3)} if case != "state_query" else {})
    if case == "state_query":
        data["query_rays"] = g.standard_normal((1, 2, 9, H, W))
    fixture = {k: v for k, v in data.items()}

    class View(dict):
        files = property(lambda self: list(self))

    fixture.update(run_fixture(model, View(fixture)))
    path = tmp_path / f"{case}.npz"
    np.savez(path, **fixture)
    return path


def _verify(path, preset):
    return subprocess.run([sys.executable, "-m", "model.verify_reference", str(path), "--preset", preset],
                          cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("case, preset, S, H, W, extra", [
    ("main", "tiny", 3, 28, 70, {}),
    ("ref_view", "tiny_ref_view", 5, 42, 28, {}),
    ("streaming", "tiny_streaming", 5, 14, 42, {"window": np.array(2), "split.at": np.array(3)}),
    ("state_query", "tiny_state_query", 2, 28, 28, {}),
])
def test_verifier_passes_on_consistent_fixtures_and_fails_on_a_wrong_one(tmp_path, case, preset, S, H, W, extra):
    path = _make_fixture(tmp_path, case, preset, S, H, W, extra)
    proc = _verify(path, preset)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "# PASS" in proc.stdout
    data = dict(np.load(path))
    outputs = [k for k in data if k not in {"case", "seed", "images", "query_rays", "window", "split.at"}
               and not k.endswith(".vec")]
    assert len([ln for ln in proc.stdout.splitlines() if ln.endswith(" ok")]) == len(outputs)

    victim = "render.nvs_pred" if case == "state_query" else ("split.depth" if case == "streaming" else "depth")
    data[victim] = data[victim] * (1 + 1e-4)
    np.savez(path, **data)
    proc = _verify(path, preset)
    assert proc.returncode == 1
    assert any(ln.startswith(victim) and ln.endswith("FAIL") for ln in proc.stdout.splitlines())

    data[victim] = data[victim] / (1 + 1e-4)
    data["unknown_output"] = np.zeros(3)
    np.savez(path, **data)
    proc = _verify(path, preset)
    assert proc.returncode == 1 and "unknown_output" in proc.stdout and "MISSING" in proc.stdout
