"""An official-size network through the pipeline, as a user with a published checkpoint runs it.

One official-size ``main`` network (1.37 B parameters) is built once for the module with seeded
random weights (the reference fixtures' fill rule) and saved as a bare ``.pt`` state dict under its
published name and key names, with no JSON beside it. ``zipmap reconstruct --weights X.pt`` and
``zipmap batch --weights X.pt`` run it from a fresh process each (no preset given: the variant is
recognised from the tensors). The result must be a complete store that records the variant, the
input size and the checkpoint's sha256, or a clear output-validation failure; never a crash.
About 5.5 GB on disk and in memory per process, several minutes on 2 cores: marked slow.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from model.synthetic import write_collection
from model.verify_reference import fill_value
from model.weights import expected_shapes
from storage.zarr_store import read_attrs, read_status

pytestmark = pytest.mark.slow
ZIPMAP = [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())"]


@pytest.fixture(scope="module")
def official_pt(tmp_path_factory):
    """``checkpoint_aff_inv.pt``: the published key names and shapes, seeded weights, float32, bare state dict."""
    path = tmp_path_factory.mktemp("official") / "checkpoint_aff_inv.pt"
    state = {k: torch.from_numpy(fill_value(k, shape, seed=7)) for k, shape in expected_shapes("main").items()}
    torch.save(state, path)
    del state
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return path, digest.hexdigest()


@pytest.fixture(scope="module")
def tiny_collection(tmp_path_factory):
    # 2 frames of a 1:3 panorama: the network sees 168x518 (the published 518 px width, 12 x 37 patches),
    # half the tokens of a 4:3 photo, so the official-size pass stays within minutes on 2 cores
    return write_collection(str(tmp_path_factory.mktemp("src") / "street-3"), 1_000_003, "street", 2, 42, 126)


def _zipmap(args, tmp_path, **env):
    environ = {**os.environ, "HOME": str(tmp_path / "home"), **env}
    environ.pop("PREFECT_API_URL", None)  # batch starts its own temporary server, as for a user
    return subprocess.run([*ZIPMAP, *args], capture_output=True, text=True, env=environ, timeout=1800,
                          cwd=Path(__file__).resolve().parents[2])


def _check_store(url, sha256):
    attrs = read_attrs(url)
    assert attrs["model_variant"] == "main" and attrs["weights_sha256"] == sha256
    assert attrs["input_size"][1] == 518 and attrs["input_size"][0] % 14 == 0  # published preprocessing
    assert attrs["model_config"]["embed_dim"] == 1024 and attrs["model_config"]["img_size"] == 518
    assert attrs["weights"].endswith("checkpoint_aff_inv.pt")


def test_reconstruct_with_an_official_checkpoint(official_pt, tiny_collection, tmp_path):
    pt, sha256 = official_pt
    assert not Path(str(pt) + ".json").exists()
    result = _zipmap(["reconstruct", tiny_collection, str(tmp_path / "out"), "--weights", str(pt),
                      "--max-voxels", "16", "--device", "cpu"], tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    url = str(tmp_path / "out" / "street-3.zarr")
    assert read_status(url) == "complete"
    _check_store(url, sha256)
    summary = read_attrs(url)["summary"]
    assert summary["num_views"] == 2 and (summary["views"]["height"], summary["views"]["width"]) == (168, 518)
    assert "main" in result.stdout


def test_batch_with_an_official_checkpoint(official_pt, tiny_collection, tmp_path):
    pt, sha256 = official_pt
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"collection_id": ["street-3"], "source": [tiny_collection]}).to_csv(manifest, index=False)
    result = _zipmap(["batch", str(manifest), str(tmp_path / "out"), "--weights", str(pt), "--workers", "1",
                      "--max-voxels", "16", "--device", "cpu"], tmp_path)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    assert result.returncode in (0, 1), result.stderr
    runs = list((tmp_path / "out" / "_runs").iterdir())
    row = pd.read_parquet(runs[0] / "summary.parquet").iloc[0]
    url = str(tmp_path / "out" / "street-3.zarr")
    if row["status"] == "complete":
        assert read_status(url) == "complete"
        _check_store(url, sha256)
    else:  # random weights may reconstruct nothing sensible: then the output validation says so, clearly
        assert row["status"] == "failed" and "output validation failed" in row["reason"], row["reason"]
        assert read_status(url) != "complete"
    assert np.isfinite(row["t_zip_pass"]) or row["status"] == "failed"
