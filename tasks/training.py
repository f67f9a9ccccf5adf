"""Tasks of the training flow: render held-out collections, train, evaluate a snapshot."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from model.training.loop import HELD_OUT_SEED_START, PATH_KINDS, TrainConfig, train


@task(name="train-model")
def train_model(config: dict) -> str:
    """Train (or resume) with a :class:`TrainConfig` given as a dict; returns the run folder."""
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    train(cfg)
    return cfg.out


@task(name="render-held-out-collections")
def render_held_out(out: str, per_kind: int = 1, frames: int = 16, height: int = 112, width: int = 168) -> list[str]:
    """Write ``per_kind`` collections per camera-path kind from seeds training never uses."""
    from model.synthetic import write_collection

    urls = []
    for k, kind in enumerate(PATH_KINDS):
        for i in range(per_kind):
            seed = HELD_OUT_SEED_START + 1000 * k + i
            url = str(Path(out) / f"{kind}-{seed}")
            if not (Path(url) / "cameras.json").exists():
                write_collection(url, seed, kind, frames, height, width)
            urls.append(url)
    return urls


@task(name="evaluate-model")
def evaluate_model(weights: str, collections: list[str], report_path: str) -> str:
    from model.evaluation.evaluate import evaluate, write_report
    from model.weights import load_zipmap
    from storage.collection import read_collection

    report = evaluate(load_zipmap(weights), (read_collection(url) for url in collections))
    report["weights"] = weights
    write_report(report, report_path)
    return report_path


def latest_snapshot(run_dir: str) -> str:
    snaps = sorted(Path(run_dir).glob("weights-*.safetensors"))
    if not snaps:
        raise FileNotFoundError(f"{run_dir}: no weights-*.safetensors snapshot yet")
    return str(snaps[-1])


def read_report(path: str) -> dict:
    return json.loads(Path(path).read_text())
