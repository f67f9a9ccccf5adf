"""Time a 16-frame collection through the bundled model on this machine.

    python benchmarks/bundled_speed.py [--frames 16] [--size 112 168] [--repeats 5]

Reports the median wall time of the forward pass (after one warm-up) and of the whole prediction
of a collection read from disk (read + resize + forward + cameras + world points).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.evaluation.evaluate import predict_collection  # noqa: E402
from model.synthetic import write_collection  # noqa: E402
from model.weights import bundled_checkpoint, load_zipmap  # noqa: E402
from storage.collection import read_collection  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, nargs=2, default=[112, 168])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    model = load_zipmap(bundled_checkpoint())
    with tempfile.TemporaryDirectory() as tmp:
        url = write_collection(str(Path(tmp) / "c"), 1_000_900, "orbit", args.frames, *args.size)
        x = torch.rand(1, args.frames, 3, *args.size)
        forward, whole = [], []
        with torch.no_grad():
            model(x)
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                model(x)
                forward.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                predict_collection(model, read_collection(url))
                whole.append(time.perf_counter() - t0)
    print(f"{args.frames} frames {args.size[0]}x{args.size[1]}, torch threads {torch.get_num_threads()}: "
          f"forward median {statistics.median(forward):.3f} s, read+predict median {statistics.median(whole):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
