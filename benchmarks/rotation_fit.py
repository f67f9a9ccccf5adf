"""Can the network fit the camera rotations of ONE collection? A capacity check for the camera path.

    python benchmarks/rotation_fit.py [--weights W] [--kind orbit] [--frames 6] [--size 56 84]
                                      [--steps 150] [--lr 3e-4] [--every 25]

Trains a copy of the network (the bundled weights by default) on one generated collection, over and
over, with the training losses (camera term weighted 5), and prints each frame's predicted rotation
angle relative to frame 0 next to the truth every ``--every`` steps. If the angles converge, the
network can represent per-frame rotations and pass gradients to them; if a model still predicts
one pose for every frame of unseen collections, what it lacks is generalisation, not capacity.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.geometry import pose_encoding_from_cameras  # noqa: E402
from model.synthetic import generate_sample  # noqa: E402
from model.training.losses import normalize_scene, total_loss  # noqa: E402
from model.weights import bundled_checkpoint, load_zipmap  # noqa: E402


def angles_to_first(pose_enc: torch.Tensor) -> np.ndarray:
    """Rotation angle of each frame relative to frame 0, in degrees, from ``[1, S, 9]`` encodings."""
    q = pose_enc[0, :, 3:7]
    q = q / q.norm(dim=-1, keepdim=True)
    cos_half = (q * q[:1]).sum(-1).abs().clamp(max=1)
    return (2 * torch.rad2deg(torch.arccos(cos_half))).detach().numpy()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default=None, help="default: the bundled checkpoint")
    p.add_argument("--kind", default="orbit", choices=["street", "orbit", "aerial", "handheld"])
    p.add_argument("--seed", type=int, default=4242, help="scene seed of the one collection")
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--size", type=int, nargs=2, default=[56, 84], metavar=("H", "W"))
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--every", type=int, default=25)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = load_zipmap(args.weights or bundled_checkpoint())
    model.train()
    sample = generate_sample(args.seed, args.kind, args.frames, *args.size)
    batch = {k: torch.from_numpy(np.ascontiguousarray(v))[None].float() for k, v in sample.items()}
    cams, _, _ = normalize_scene(batch["cam_from_world"], batch["depth"], batch["intrinsics"])
    truth = angles_to_first(pose_encoding_from_cameras(cams, batch["intrinsics"], tuple(args.size)))
    print("truth     ", np.round(truth, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    t0 = time.perf_counter()
    for step in range(args.steps + 1):
        out = model(batch["images"], window=0)
        loss, terms = total_loss(out, batch, weights={"camera": 5.0})
        if step % args.every == 0:
            pred = angles_to_first(out["pose_enc"])
            print(f"step {step:4d} ({time.perf_counter() - t0:5.0f} s) camera {terms['camera']:.3f} "
                  f"mean |error| {np.abs(pred - truth)[1:].mean():6.1f} deg  predicted {np.round(pred, 1)}", flush=True)
        if step < args.steps:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    return 0


if __name__ == "__main__":
    sys.exit(main())
