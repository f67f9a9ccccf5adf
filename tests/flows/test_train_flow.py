"""The training flow runs for real under a Prefect server: train, render held-out data, evaluate."""

import json

from model.evaluation.metrics import METRIC_KEYS


def test_train_flow_end_to_end(prefect_server, tmp_path):
    from flows.train import train_bundled_model

    out = tmp_path / "run"
    config = {"out": str(out), "preset": "tiny_ref_view", "steps": 4, "min_frames": 2, "max_frames": 3,
              "height": 28, "width": 42, "workers": 0, "log_every": 2, "checkpoint_every": 2,
              "snapshot_every": 4}
    overall = train_bundled_model(config, eval_per_kind=1)
    assert set(METRIC_KEYS) <= set(overall)
    report = json.loads((out / "eval.json").read_text())
    assert len(report["collections"]) == 4 and set(report["baseline"]["overall"]) == set(overall)
    assert (out / "last.pt").exists() and (out / "weights-000004.safetensors").exists()
    assert len(list((out / "held_out").iterdir())) == 4
