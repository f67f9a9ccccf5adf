"""Synthetic rendering speed: the compiled loop against the numpy arrays (``model.synthetic.render``).

    python benchmarks/render_speed.py [--size 112x168] [--frames 12] [--samples 8] [--repeats 3]

Renders ``--samples`` training samples (scene seeds 0.., path kinds in turn, ``--frames`` frames
each, ``generate_sample``'s cameras) with each engine, one thread, after a warm-up that compiles
the loop; prints the best of ``--repeats`` per engine in milliseconds per image and per sample, and
whether both engines gave the same images.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.synthetic import PATH_KINDS, make_path, make_scene  # noqa: E402
from model.synthetic.render import render  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="112x168")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    jobs = []
    for seed in range(args.samples):
        scene = make_scene(seed)
        kind = PATH_KINDS[seed % len(PATH_KINDS)]
        jobs += [(scene, cam, K) for cam, K in make_path(scene, kind, args.frames, seed, h, w)]
    render(*jobs[0], h, w)  # compile or load the loop
    images, best = {}, {}
    for engine in ("numpy", "compiled"):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            images[engine] = [render(scene, cam, K, h, w, engine=engine) for scene, cam, K in jobs]
            times.append(time.perf_counter() - t0)
        best[engine] = min(times)
        print(f"{engine:9s} {1000 * best[engine] / len(jobs):7.2f} ms/image  "
              f"{1000 * best[engine] / args.samples:8.1f} ms/sample of {args.frames} frames at {h}x{w}")
    same = all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(images["numpy"], images["compiled"]))
    print(f"speed-up {best['numpy'] / best['compiled']:.2f}x; identical images: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
