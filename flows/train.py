"""Prefect flow: train the bundled model on generated city blocks, then evaluate it on held-out seeds.

    python -m flows.train --out runs/city --steps 20000 [--device cuda]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from prefect import flow

from model.training.loop import TrainConfig
from tasks.training import evaluate_model, latest_snapshot, read_report, render_held_out, train_model


@flow(name="train-bundled-model")
def train_bundled_model(config: dict | None = None, eval_per_kind: int = 1) -> dict:
    """Train (resuming if the run folder has a checkpoint) and evaluate the newest snapshot."""
    cfg = {**dataclasses.asdict(TrainConfig()), **(config or {})}
    run_dir = train_model(cfg)
    collections = render_held_out(str(Path(run_dir) / "held_out"), eval_per_kind, height=cfg["height"],
                                  width=cfg["width"])
    report = evaluate_model(latest_snapshot(run_dir), collections, str(Path(run_dir) / "eval.json"))
    return read_report(report)["overall"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=TrainConfig.out)
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--device", default=TrainConfig.device)
    p.add_argument("--preset", default=TrainConfig.preset)
    p.add_argument("--eval-per-kind", type=int, default=1)
    args = p.parse_args(argv)
    overall = train_bundled_model({"out": args.out, "steps": args.steps, "device": args.device,
                                   "preset": args.preset}, args.eval_per_kind)
    print(overall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
