"""Training on generated city blocks: AdamW, warm-up + cosine decay, checkpoint and resume.

    python -m model.training --out runs/city --steps 20000 [--device cuda] [--preset city] [--batch 8]
                             [--time-limit-s 3600] [--echo 2]

Each step renders (in background workers) ``--batch`` synthetic collections, each with a random
camera path, sharing one random number of frames (``--min-frames`` to ``--max-frames``, so the model
sees many N) and one input size, runs the network, and minimises
:func:`model.training.losses.total_loss`. ``--time-limit-s`` stops the run cleanly after that many
seconds (a GPU lease, a queue's wall-time limit): the learning-rate schedule then follows whichever
budget, steps or seconds, is further along, so a time-limited run still ends on the low learning rate.
``--echo N`` uses each rendered batch for N steps (later ones with the frames reordered), for GPUs
that train faster than the CPU workers render.
``OUT/last.pt`` holds everything needed to resume (model, optimizer, step, RNG); a run started
with an existing ``OUT`` continues where it stopped. ``OUT/log.csv`` gets one row per logged step;
``OUT/weights-<step>.safetensors`` (+ JSON config) are inference snapshots.
On CUDA the forward pass runs under bf16 autocast.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import get_config
from ..weights import save_checkpoint
from ..zipmap import ZipMap
from .losses import total_loss

PATH_KINDS = ("street", "orbit", "aerial", "handheld")
HELD_OUT_SEED_START = 1_000_000  # evaluation scenes use seeds from here on; training never does


@dataclass(frozen=True)
class TrainConfig:
    out: str = "runs/city"
    preset: str = "city"
    steps: int = 20000
    lr: float = 3e-4
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05
    warmup: int = 300
    grad_clip: float = 1.0
    min_frames: int = 2
    max_frames: int = 16
    height: int = 112
    width: int = 168
    # Optional mix of input sizes "HxW" (multiples of 14), one drawn per step: low resolutions make
    # steps cheaper, the mix keeps the network working at every size. Empty = height x width only.
    sizes: tuple[str, ...] = ()
    path_kinds: tuple[str, ...] = PATH_KINDS
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    snapshot_every: int = 1000
    device: str = "cpu"
    workers: int = 1
    overfit: bool = False  # repeat one collection every step (debugging, tests)
    init_from: str = ""  # weights (.safetensors) to start a new run from, when OUT has no last.pt
    camera_weight: float = 1.0  # weight of the camera term against depth and points (VGGT uses 5)
    ref_match: bool = False  # add the reference-matching camera input (model.heads.camera.ReferenceMatch)
    batch: int = 1  # collections per step (same frame count and size within a step)
    echo: int = 1  # steps per rendered batch: repeats get their frames in a new random order (new reference)
    # most degrees an orbit turns between consecutive frames (0 = no cap: a 2-frame orbit may span 270).
    # 18 is the largest step of a 16-frame orbit, so short samples look like parts of the evaluated paths
    orbit_max_step_deg: float = 18.0
    time_limit_s: float = 0.0  # stop after this many seconds of this invocation (0 = no limit)


def lr_at(step: int, cfg: TrainConfig, elapsed_s: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``.

    With a time limit the decay follows whichever is further along: the steps, or ``elapsed_s``
    against ``time_limit_s`` (the warm-up is always counted in steps).
    """
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    if cfg.time_limit_s > 0:
        progress = max(progress, min(1.0, elapsed_s / cfg.time_limit_s))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class SyntheticStream(torch.utils.data.IterableDataset):
    """An endless stream of rendered training batches ``[batch, S, ...]``, reproducible from (seed, step).

    A step's first collection draws its scene, path kind, frame count and size; further collections
    of the same step draw their own scene and path kind (a batch of one is just the first collection).
    """

    def __init__(self, cfg: TrainConfig, start_step: int):
        self.cfg, self.start_step = cfg, start_step

    def __iter__(self):
        from ..synthetic import generate_sample

        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        step = self.start_step + wid
        while True:
            rng = random.Random(self.cfg.seed * 1_000_003 + (0 if self.cfg.overfit else step))
            draws = [(rng.randrange(HELD_OUT_SEED_START), rng.choice(self.cfg.path_kinds))]
            frames = rng.randint(self.cfg.min_frames, self.cfg.max_frames)
            height, width = self.cfg.height, self.cfg.width
            if self.cfg.sizes:
                height, width = (int(v) for v in rng.choice(self.cfg.sizes).lower().split("x"))
            draws += [(rng.randrange(HELD_OUT_SEED_START), rng.choice(self.cfg.path_kinds))
                      for _ in range(self.cfg.batch - 1)]
            cap = self.cfg.orbit_max_step_deg or None
            samples = [generate_sample(scene_seed=scene_seed, path_kind=kind, num_frames=frames, height=height,
                                       width=width, max_orbit_step_deg=cap) for scene_seed, kind in draws]
            yield {k: torch.from_numpy(np.ascontiguousarray(np.stack([s[k] for s in samples])))
                   for k in samples[0]}
            step += nw


def _echoed(batches, cfg: TrainConfig, first_step: int):
    """Each rendered batch ``cfg.echo`` times ("data echoing", for when rendering on the CPU cannot keep
    a GPU busy): first as drawn, then with its frames in a random order, seeded by (seed, step). Frame 0
    is the reference that fixes the world frame, so each order is a new target, not a plain repeat."""
    step = first_step
    for sample in batches:
        for e in range(cfg.echo):
            if e:
                g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
                order = torch.randperm(sample["images"].shape[1], generator=g)
                yield {k: v[:, order] for k, v in sample.items()}
            else:
                yield sample
            step += 1


def _save_state(path: Path, model, optimizer, step: int, cfg: TrainConfig, wall_s: float) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "wall_s": wall_s,
                "train_config": dataclasses.asdict(cfg), "model_config": model.cfg.to_dict(),
                "torch_rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a broken last.pt


def train(cfg: TrainConfig, log=print) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = ZipMap(get_config(cfg.preset, **({"camera_ref_match": True} if cfg.ref_match else {}))).to(device)
    step, wall_before = 0, 0.0
    state_path = out / "last.pt"
    if not state_path.exists() and cfg.init_from:
        from ..weights import load_state_dict_into, read_state_dict

        # before the optimizer is built: loading assigns new parameter tensors
        weights = read_state_dict(cfg.init_from)
        if cfg.ref_match:  # weights trained without the module: it starts from its own (neutral) init
            own = model.state_dict()
            weights = {**{k: v for k, v in own.items() if k.startswith("camera_ref_match.")}, **weights}
        load_state_dict_into(model, weights, cfg.init_from, device=device)
        log(f"initialised from {cfg.init_from}")
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "token" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (p.ndim < 2 or "token" in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"].cpu())
        step = int(state["step"])
        wall_before = float(state.get("wall_s", 0.0))
        log(f"resumed from {state_path} at step {step}")
    (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    log_path = out / "log.csv"
    fields = ["step", "wall_s", "lr", "loss", "camera", "depth", "points", "frames", "sec_per_step", "match"]
    new_log = not log_path.exists()
    if not new_log:  # a resumed run keeps the columns its log started with
        with open(log_path, newline="") as f:
            fields = next(csv.reader(f), None) or fields
    loader = torch.utils.data.DataLoader(SyntheticStream(cfg, step // cfg.echo), batch_size=None,
                                         num_workers=cfg.workers,
                                         prefetch_factor=2 if cfg.workers else None,
                                         persistent_workers=bool(cfg.workers))
    use_amp = device.type == "cuda"
    model.train()
    t_run = time.time()
    t_start, t_last = t_run - wall_before, t_run  # wall_s counts across resumed runs
    with open(log_path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new_log:
            writer.writeheader()
        for sample in _echoed(loader, cfg, step):
            out_of_time = cfg.time_limit_s > 0 and time.time() - t_run >= cfg.time_limit_s
            if step >= cfg.steps or out_of_time:
                if out_of_time and step < cfg.steps:  # the last steps are kept, not lost
                    if step % cfg.checkpoint_every:
                        _save_state(state_path, model, optimizer, step, cfg, time.time() - t_start)
                    if step % cfg.snapshot_every:
                        save_checkpoint(model, str(out / f"weights-{step:06d}.safetensors"))
                    log(f"time limit of {cfg.time_limit_s:g} s reached at step {step}")
                break
            batch = {k: v.to(device, non_blocking=True) for k, v in sample.items()}
            lr = lr_at(step, cfg, time.time() - t_run)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                pred = model(batch["images"].float(), window=0)
            loss, terms = total_loss(pred, {k: v.float() for k, v in batch.items()},
                                     weights={"camera": cfg.camera_weight})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.time()
                row = {"step": step, "wall_s": round(now - t_start, 1), "lr": f"{lr:.3g}",
                       "loss": f"{loss.item():.5f}", "frames": batch["images"].shape[1],
                       "sec_per_step": f"{(now - t_last) / cfg.log_every:.3f}",
                       **{k: f"{terms.get(k, float('nan')):.5f}" for k in ("camera", "depth", "points", "match")}}
                t_last = now
                writer.writerow(row)
                f.flush()
                log(" ".join(f"{k}={v}" for k, v in row.items()))
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                _save_state(state_path, model, optimizer, step, cfg, time.time() - t_start)
            if step % cfg.snapshot_every == 0 or step == cfg.steps:
                save_checkpoint(model, str(out / f"weights-{step:06d}.safetensors"))
    return state_path


def main(argv: list[str] | None = None) -> int:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m model.training", description=__doc__.split("\n")[0])
    for field in dataclasses.fields(TrainConfig):
        value = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, tuple):
            p.add_argument(flag, nargs="+", default=list(value))
        elif isinstance(value, bool):
            p.add_argument(flag, action="store_true", default=value)
        else:
            p.add_argument(flag, type=type(value), default=value)
    args = vars(p.parse_args(argv))
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    unknown = set(cfg.path_kinds) - set(PATH_KINDS)
    if unknown:
        p.error(f"unknown path kinds {sorted(unknown)}; known {PATH_KINDS}")
    for name in ("batch", "echo"):
        if getattr(cfg, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    torch.set_float32_matmul_precision("high")
    train(cfg, log=lambda msg: print(msg, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
